"""ONNX graph passes that put SWAT's sparsification sites (SPEC §2) into exported models.

`locate` finds each sparsified op in the forward part of a model (the exported dense forward, or the
eval or training model ORT generated from it): the Conv / Gemm / MatMul node that reads its weight
(directly or through Transposes, Splits and Slices; the `call_index`-th such node for a weight used at
several call sites or sliced), its input X, its output Y (after a separate bias Add) and their types
and shapes.

`sparsify_forward` rewires the forward node to read W_s (site `fw_w`); it applies to inference, eval
and training models alike. `sparsify_backward` rewrites the gradient graph that ORT's artifact
generator built for the *dense* model. ORT names every gradient node `<forward node>_Grad/<Op>_<i>`
and the gradient of a tensor T `T_grad`, so an op's gradient nodes are found by name:

    ConvGrad(G, X, W)                 -> dX, dW, db     (one node: dX reads only W, dW only X)
    Gemm / MatMul / FusedMatMul(G, W) -> dX             (linear: W or its Transpose)
    Gemm(X, G) (after Reshapes)       -> dW
    ReduceSum(G)                      -> db

In those nodes the weight operand becomes W_s (`bw_w`), X becomes X_s (`bw_a`) and `Y_grad` becomes
G_s (`bw_g`, which also reaches db). The parameter's gradient output is untouched, so dW stays the
gradient of the dense W; forward and backward share one W_s subgraph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from swat_fx.backends.ort.builder import NodeBuilder
from swat_fx.backends.ort.errors import UnsupportedOpError
from swat_fx.backends.ort.graph import GraphView, TensorInfo, attribute, replace_inputs, sort_topologically
from swat_fx.backends.ort.plan import SparseOp
from swat_fx.backends.ort.topk_nodes import sparsify

_CORE_OPS = ("Conv", "Gemm", "MatMul")
_WEIGHT_VIEWS = ("Transpose", "Identity", "Split", "Slice")
SWAT_PREFIX = "/swat"


@dataclass(frozen=True)
class OpNodes:
    """Where a `SparseOp` lives in a model: its forward nodes (the core Conv/Gemm/MatMul first) and
    tensors. `transposed`: the core reads the weight as [..., in, out], so the [..., out, in] weight
    that the mask groups is `operand` with its last two dims swapped; `w_info` describes that weight.
    `x_transposed`: a `Gemm(transA=1)` reads X as `x` = Xᵀ (ORT fuses the Transpose after `W @ x`);
    `x_info` describes X."""

    op: SparseOp
    nodes: tuple[str, ...]
    operand: str
    transposed: bool
    x: str
    y: str
    x_info: TensorInfo
    x_transposed: bool
    y_info: TensorInfo
    w_info: TensorInfo

    @property
    def core(self) -> str:
        return self.nodes[0]


def is_gradient_node(node: onnx.NodeProto) -> bool:
    """Whether ORT's gradient builder made `node` (it names them `<forward node>_Grad/<Op>_<i>`)."""
    return "_Grad/" in node.name


Region = tuple[int, int, int] | None
"""The slice (dim, start, stop) of a weight a tensor holds; None for the whole weight."""
_UNKNOWN = (-1, -1, -1)
"""The region of a tensor sliced in a way `_pieces` cannot read (after a Transpose, dynamic bounds)."""


def _pieces(view: GraphView, node: onnx.NodeProto, region: Region, size: list[int]) -> list[Region]:
    """The region of each output of a Split or Slice of a tensor holding `region` of a weight of shape
    `size`, in the weight's coordinates."""
    axis = attribute(node, "axis", 0)
    if node.op_type == "Split":
        sizes = view.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if sizes is None:
            sizes = attribute(node, "split", None)
        bounds = None if sizes is None else [(int(sum(sizes[:i])), int(sum(sizes[:i + 1]))) for i in range(len(sizes))]
    else:
        starts, ends, axes, steps = (view.constant(name) if name else None
                                     for name in [*node.input[1:5], "", "", ""][:4])
        simple = (starts is not None and ends is not None and len(starts) == 1
                  and (steps is None or steps[0] == 1))
        axis = int(axes[0]) if axes is not None and simple else axis
        length = size[axis] if region is None or region == _UNKNOWN else region[2] - region[1]  # of the input
        bounds = [slice(int(starts[0]), int(min(ends[0], 2**62))).indices(length)[:2]] if simple else None
    if bounds is None or region == _UNKNOWN or (region is not None and region[0] != axis % len(size)):
        return [_UNKNOWN] * len(node.output)
    offset = 0 if region is None else region[1]
    return [(axis % len(size), offset + start, offset + stop) for start, stop in bounds]


def _cores(view: GraphView, weight: str, shape: list[int]) -> list[tuple[onnx.NodeProto, str, Region]]:
    """(core node, weight operand it reads, the region of the weight in it) for every forward
    conv/linear node reading `weight` (of `shape`), in graph order."""
    found, frontier = [], [(weight, None, False)]
    while frontier:
        tensor, region, permuted = frontier.pop()
        for user in view.users(tensor):
            if is_gradient_node(user):
                continue
            if user.op_type in _WEIGHT_VIEWS and list(user.input).index(tensor) == 0:
                if user.op_type in ("Split", "Slice"):  # after a Transpose, its axis is no axis of the weight
                    pieces = [_UNKNOWN] * len(user.output) if permuted else _pieces(view, user, region, shape)
                    frontier.extend((output, piece, permuted)
                                    for output, piece in zip(user.output, pieces, strict=True))
                else:
                    frontier.append((user.output[0], region, permuted or user.op_type == "Transpose"))
            elif user.op_type in _CORE_OPS and list(user.input).index(tensor) == 1:
                found.append((user, tensor, region))
    order = {name: i for i, name in enumerate(view.nodes)}
    return sorted(found, key=lambda item: order[item[0].name])


def _output(view: GraphView, op: SparseOp, core: onnx.NodeProto) -> tuple[str, ...]:
    """The op's forward nodes: the core, and the Add of the bias when a MatMul carries none."""
    if core.op_type != "MatMul" or not op.has_bias:
        return (core.name,)
    users = view.users(core.output[0])
    if len(users) != 1 or users[0].op_type != "Add":
        raise UnsupportedOpError(f"layer {op.name!r}: expected the bias Add after ONNX node {core.name!r}")
    return core.name, users[0].name


def _info(infos: dict[str, TensorInfo], tensor: str, op: SparseOp) -> TensorInfo:
    if tensor not in infos:
        raise UnsupportedOpError(f"layer {op.name!r}: ONNX shape inference found no shape for tensor {tensor!r}")
    return infos[tensor]


def _logical_weight(operand: TensorInfo | None, parameter: TensorInfo, transposed: bool, op: SparseOp) -> TensorInfo:
    """The [..., out, in] weight the mask groups (the op's `weight_shape`), checked against the operand
    the core reads where shape inference knows it: a slice read by another node is an error, not a
    mask over the wrong weight."""
    if operand is not None:
        shape = list(operand.shape)
        if transposed:
            shape[-2:] = shape[:-3:-1]
        matches = len(shape) == len(op.weight_shape) and all(
            size is None or size == expected for size, expected in zip(shape, op.weight_shape, strict=True))
        if not matches:
            raise UnsupportedOpError(
                f"layer {op.name!r}: the ONNX node it was matched to reads a weight of shape {tuple(shape)}, "
                f"the layer's is {tuple(op.weight_shape)}; the ORT backend cannot place its Top-K")
    return TensorInfo(parameter.dtype, tuple(op.weight_shape))


def locate(model: onnx.ModelProto, ops: Sequence[SparseOp], infos: dict[str, TensorInfo]) -> list[OpNodes]:
    """Find every sparsified op in the forward part of `model` (an exported forward, or the eval or
    training model ORT generated from it, whose optimisations may have merged or renamed nodes).
    `infos` are the tensor types and shapes of the exported forward (`graph.tensor_infos`)."""
    view = GraphView(model.graph)
    located = []
    for op in ops:
        parameter = _info(infos, op.weight, op)
        cores = [core for core in _cores(view, op.weight, list(parameter.shape)) if core[2] == op.weight_slice]
        if len(cores) != op.call_count:
            kinds = ", ".join(node.op_type for node, _, _ in cores) or "none"
            raise UnsupportedOpError(
                f"layer {op.name!r}: expected {op.call_count} Conv/Gemm/MatMul node(s) reading {op.weight!r} in "
                f"the ONNX graph, found {len(cores)} ({kinds}); the ORT backend cannot place its Top-K"
            )
        core, operand, _ = cores[op.call_index]
        x_transposed = core.op_type == "Gemm" and bool(attribute(core, "transA", 0))
        x_info = _info(infos, core.input[0], op)
        if x_transposed:
            x_info = TensorInfo(x_info.dtype, tuple(reversed(x_info.shape)))
        transposed = core.op_type == "MatMul" or (core.op_type == "Gemm" and not attribute(core, "transB", 0))
        nodes = _output(view, op, core)
        y = view.node(nodes[-1]).output[0]
        located.append(OpNodes(
            op=op, nodes=nodes, operand=operand, transposed=transposed, x=core.input[0], y=y,
            x_info=x_info, x_transposed=x_transposed, y_info=_info(infos, y, op),
            w_info=_logical_weight(infos.get(operand), parameter, transposed, op),
        ))
    return located


def _sparsify(b: NodeBuilder, site: OpNodes, tensor: str, info: TensorInfo, role: str) -> str:
    op = site.op
    return sparsify(b, tensor, info, role, op.layer, op.granularity, op.density)


def _sparse_weight(b: NodeBuilder, site: OpNodes) -> str:
    """W_s in the layout the core node reads (Top-K grouped on the [..., out, in] weight)."""
    if not site.transposed:
        return _sparsify(b, site, site.operand, site.w_info, "weight")
    rank = len(site.w_info.shape)
    swap = [*range(rank - 2), rank - 1, rank - 2]
    logical = b.one("Transpose", site.operand, perm=swap)
    return b.one("Transpose", _sparsify(b, site, logical, site.w_info, "weight"), perm=swap)


def _insert(graph: onnx.GraphProto, site: OpNodes, what: str, build: Callable[[NodeBuilder], str]) -> str:
    """Append the nodes `build` adds, named `/swat/<layer>/<what>/...`; return the tensor it computes."""
    b = NodeBuilder(f"{SWAT_PREFIX}/{site.op.name}/{what}")
    result = build(b)
    b.emit(graph)
    return result


def _sparse_input(b: NodeBuilder, site: OpNodes) -> str:
    """X_s in the layout the core node reads (Top-K grouped on X itself)."""
    if not site.x_transposed:
        return _sparsify(b, site, site.x, site.x_info, "input")
    logical = b.one("Transpose", site.x, perm=[1, 0])
    return b.one("Transpose", _sparsify(b, site, logical, site.x_info, "input"), perm=[1, 0])


def _weight_site(graph: onnx.GraphProto, site: OpNodes) -> str:
    return _insert(graph, site, "w_s", lambda b: _sparse_weight(b, site))


def sparsify_forward(model: onnx.ModelProto, sites: Sequence[OpNodes]) -> onnx.ModelProto:
    """Site `fw_w`: every sparsified op's forward node reads W_s (inference and eval models)."""
    view = GraphView(model.graph)
    for site in sites:
        if "fw_w" in site.op.sites:
            view.node(site.core).input[1] = _weight_site(model.graph, site)
    sort_topologically(model.graph)
    return model


def gradient_nodes(graph: onnx.GraphProto, forward_nodes: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes ORT's gradient builder generated for `forward_nodes` (named `<node>_Grad/...`)."""
    prefixes = tuple(f"{name}_Grad/" for name in forward_nodes)
    return [node for node in graph.node if node.name.startswith(prefixes)]


def _rewire(grads: list[onnx.NodeProto], old: str, new: str, site: OpNodes, what: str) -> None:
    if not replace_inputs(grads, old, new):
        raise UnsupportedOpError(
            f"layer {site.op.name!r}: no gradient node of ONNX node(s) {', '.join(site.nodes)} reads {old!r}, "
            f"so the {what} cannot be sparsified; ORT's gradient graph has an unexpected form"
        )


def sparsify_backward(model: onnx.ModelProto, sites: Sequence[OpNodes]) -> onnx.ModelProto:
    """All sites of every sparsified op in an ORT training model (forward part and gradient graph)."""
    graph, view = model.graph, GraphView(model.graph)
    for site in sites:
        on = site.op.sites
        grads = gradient_nodes(graph, site.nodes)
        if not grads:
            raise UnsupportedOpError(f"layer {site.op.name!r}: ORT generated no gradient for ONNX node {site.core!r}")
        if on & {"fw_w", "bw_w"}:
            w_s = _weight_site(graph, site)
            if "fw_w" in on:
                view.node(site.core).input[1] = w_s
            if "bw_w" in on:
                replace_inputs(grads, site.operand, w_s)  # no node reads W when dX is not needed
        if "bw_a" in on:
            x_s = _insert(graph, site, "x_s", lambda b, s=site: _sparse_input(b, s))
            _rewire(grads, site.x, x_s, site, "activation X")
        if "bw_g" in on:
            g = f"{site.y}_grad"
            g_s = _insert(graph, site, "g_s", lambda b, s=site, g=g: _sparsify(b, s, g, s.y_info, "grad"))
            _rewire(grads, g, g_s, site, "output gradient G")
    sort_topologically(graph)
    return model
