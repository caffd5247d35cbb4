"""Forward ONNX export of a SWAT graph: its dense forward, in standard ONNX ops.

The (neutral) SWAT graph cannot be exported as it is: its `TopK` sites use `torch.kthvalue`, which has no ONNX
lowering, and ORT's gradient builder must not differentiate through a mask anyway (SPEC §2: dW is
the gradient of the dense W). So a copy of the graph is exported with every `swat_fx.ops` call turned
back into its plain PyTorch op and every `TopK` site removed; parameters keep their qualified names,
which become the ONNX initializer names. The ONNX passes then insert the Top-K nodes, in the forward
and in ORT's gradient graph.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from typing import Any

import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import numpy_helper

from swat_fx import ops
from swat_fx.backends.ort.errors import UnsupportedOpError, unsupported_export
from swat_fx.contract import WeightProduct, record_of, site_nodes

OPSET = 17  # ORT 1.19 trains it; ReduceSum/Slice/TopK take their axes and k as inputs from 13 on
_CONV = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}


def io_names(prefix: str, count: int) -> list[str]:
    """`input` for one tensor, `input_0`, `input_1`, ... for several (same for outputs)."""
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def output_count(gm: fx.GraphModule) -> int:
    """How many tensors the graph returns (a tuple or list output counts its items)."""
    (result,) = [node.args[0] for node in gm.graph.nodes if node.op == "output"]
    return len(result) if isinstance(result, (tuple, list)) else 1


def _static_weight(graph: fx.Graph, op: WeightProduct) -> fx.Node:
    """The weight of a product that reads a slice of its parameter, sliced with constant bounds: the
    ONNX passes find which slice an op reads from them (`chunk` exports with bounds computed at run
    time)."""
    dim, start, stop = op.weight_slice
    weight = graph.call_function(torch.ops.aten.slice.Tensor, (graph.get_attr(op.weight), dim, start, stop))
    if op.transpose_weight:
        weight = graph.call_method("transpose", (weight, -2, -1))
    return weight


def _plain_call(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """The plain PyTorch op of a `swat_fx.ops` call (its sparsified operands are dropped)."""
    x, weight, bias = node.args
    if record_of(node).weight_slice is not None:
        weight = _static_weight(graph, record_of(node))
    if node.target is ops.linear and len(record_of(node).weight_shape) > 2:  # batched: x @ Wᵀ, no bias
        return graph.call_function(torch.matmul, (x, graph.call_method("transpose", (weight, -2, -1))))
    if node.target is ops.linear:
        return graph.call_function(F.linear, (x, weight, bias))
    conv = _CONV[record_of(node).kind]
    kw = node.kwargs
    return graph.call_function(conv, (x, weight, bias, kw["stride"], kw["padding"], kw["dilation"], kw["groups"]))


def dense_forward(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the neutral SWAT graph `gm` that computes the dense forward with standard ops only."""
    dense = copy.deepcopy(gm)
    graph = dense.graph
    for node in site_nodes(dense):
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in ops.SWAT_OPS:
            with graph.inserting_before(node):
                plain = _plain_call(graph, node)
            plain.meta = node.meta
            node.replace_all_uses_with(plain)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    dense.delete_all_unused_submodules()
    dense.recompile()
    return dense


def export_forward(
    gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], *, training: bool, dynamic_batch: bool = True
) -> onnx.ModelProto:
    """The dense forward of `gm` as ONNX (opset `OPSET`), in training mode (batch-statistics BatchNorm,
    for ORT's gradient builder) or eval mode. `gm` itself is not touched: a copy is traced."""
    module = dense_forward(gm).train(training)
    inputs, outputs = io_names("input", len(example_inputs)), io_names("output", output_count(module))
    axes = {name: {0: "batch"} for name, t in zip(inputs, example_inputs, strict=True) if t.dim() > 0}
    axes.update({name: {0: "batch"} for name in outputs})
    buffer = io.BytesIO()
    options: dict[str, Any] = {
        "training": torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL,
        "dynamic_axes": axes if dynamic_batch else None,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example_inputs), buffer, dynamo=False, opset_version=OPSET,
                              do_constant_folding=False, input_names=inputs, output_names=outputs, **options)
    except torch.onnx.errors.OnnxExporterError as error:
        unsupported = unsupported_export(gm, str(error))
        if unsupported is None:
            raise
        raise unsupported from error
    model = explicit_conv_padding(_with_values_of(onnx.load_from_string(buffer.getvalue()), gm))
    return _layer_norm_statistics(model) if training else model


def _layer_norm_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give each `LayerNormalization` its optional Mean and InvStdDev outputs: ORT's gradient builder
    reads them (and fails on a node without them, as torch.onnx exports it for transformers)."""
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.output[0]}_mean", f"{node.output[0]}_inv_std_dev"])
    return model


def _with_values_of(model: onnx.ModelProto, gm: fx.GraphModule) -> onnx.ModelProto:
    """Initializers set to `gm`'s parameters and buffers: tracing in training mode ran a BatchNorm
    forward on the copy, whose updated running statistics the exporter would otherwise capture."""
    state = gm.state_dict()
    for init in model.graph.initializer:
        if init.name in state:
            init.CopyFrom(numpy_helper.from_array(state[init.name].detach().cpu().numpy(), init.name))
    return model


def _explicit_pads(node: onnx.NodeProto, attrs: dict[str, Any], mode: str) -> list[int]:
    """ONNX `pads` (all begins, then all ends) equal to `auto_pad=mode` for a stride-1 Conv."""
    kernel = attrs["kernel_shape"]
    ones = [1] * len(kernel)
    if mode == "VALID":
        return [0] * 2 * len(kernel)
    if attrs.get("strides", ones) != ones:
        raise UnsupportedOpError(f"ONNX node {node.name!r}: auto_pad={mode} with a stride > 1")
    total = [d * (k - 1) for d, k in zip(attrs.get("dilations", ones), kernel, strict=True)]
    small = [t // 2 for t in total]
    large = [t - lo for t, lo in zip(total, small, strict=True)]
    return small + large if mode == "SAME_UPPER" else large + small


def explicit_conv_padding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace `auto_pad` (how torch exports `padding="same"` and "valid") by explicit `pads`: ORT's
    ConvGrad ignores `auto_pad` and computes wrong gradients. The odd extra pad of `same` goes at the end."""
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET").decode()
        if node.op_type != "Conv" or mode == "NOTSET":
            continue
        pads = _explicit_pads(node, attrs, mode)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("pads", pads)])
    return model
