"""BatchNorm running statistics in ORT training artifacts.

A training-mode BatchNormalization computes the updated running mean and variance, but ORT's training
graph drops them and keeps the running statistics as constants, so an eval model would normalise with
the statistics of the untrained model forever. Here they become state the device can carry forward:

- the running statistics are frozen parameters (in the checkpoint, not trained by the optimizer);
- their updated values are extra outputs of the training model, named `<buffer>.updated`;
- the device writes them back after each step: `state.parameters[buffer].data = updated`.

ORT updates the running variance with the biased batch variance v (as the ONNX spec reads), PyTorch
with the unbiased one, so a few nodes in the training model add (1 - m)·v/(n - 1) (m: momentum, n:
values per channel), with v = 1/inv_std² - eps from the saved statistics of ORT's training
BatchNormalization (the running variance itself may already be overwritten in place by then).
"""

from __future__ import annotations

import numpy as np
import onnx

from swat_fx.backends.ort.builder import NodeBuilder
from swat_fx.backends.ort.graph import attribute, sort_topologically

UPDATED_SUFFIX = ".updated"


def _is_training_mode(node: onnx.NodeProto) -> bool:
    return any(a.name == "training_mode" and a.i for a in node.attribute)


def expose_running_stats(forward: onnx.ModelProto) -> dict[str, str]:
    """Name the updated running statistics of every training-mode BatchNormalization `<buffer>.updated`;
    return {updated output: running-statistic buffer}. The buffers must be initializers."""
    initializers = {init.name for init in forward.graph.initializer}
    updates: dict[str, str] = {}
    for node in forward.graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 3:
            continue
        statistics = node.input[3:5]
        if set(statistics) <= initializers and statistics[0] + UPDATED_SUFFIX not in updates:
            for index, buffer in enumerate(statistics, start=1):
                node.output[index] = buffer + UPDATED_SUFFIX
                updates[buffer + UPDATED_SUFFIX] = buffer
    return updates


def _const_like(b: NodeBuilder, value: float, like: str) -> str:
    return b.one("CastLike", b.const(value, np.float32), like)


def _variance_correction(b: NodeBuilder, node: onnx.NodeProto, like: str) -> str:
    """(1 - m)·v/(n - 1) for a BatchNormInternal node, v from its saved inverse standard deviation."""
    x, inv_std = node.input[0], node.output[4]
    momentum, eps = attribute(node, "momentum", 0.9), attribute(node, "epsilon", 1e-5)
    variance = b.one("Sub", b.one("Reciprocal", b.one("Mul", inv_std, inv_std)), _const_like(b, eps, like))
    count = b.one("Div", b.one("Size", x), b.one("Gather", b.one("Shape", x), b.const(1), axis=0))
    denominator = b.one("Sub", b.one("CastLike", count, like), _const_like(b, 1.0, like))
    return b.one("Mul", variance, b.one("Div", _const_like(b, 1.0 - momentum, like), denominator))


def unbias_running_variance(model: onnx.ModelProto, updates: dict[str, str]) -> onnx.ModelProto:
    """In an ORT training model, make each `<running_var>.updated` PyTorch's (unbiased) update."""
    graph = model.graph
    for node in list(graph.node):
        if node.op_type != "BatchNormInternal" or node.output[2] not in updates:
            continue
        updated = node.output[2]
        b = NodeBuilder(f"/running_stats/{updates[updated]}")
        biased = node.output[2] = f"{b.prefix}/biased"
        b.op("Add", [biased, _variance_correction(b, node, biased)], [updated])
        b.emit(graph)
    sort_topologically(graph)
    return model


def fix_eval_batchnorm(model: onnx.ModelProto, updates: dict[str, str]) -> onnx.ModelProto:
    """ORT's eval model sets training_mode=0 but keeps the three BatchNormalization outputs (and the
    training model's extra outputs), which ONNX forbids and ORT refuses to load: drop them."""
    graph = model.graph
    outputs = [out for out in graph.output if out.name not in updates]
    del graph.output[:]
    graph.output.extend(outputs)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for node in graph.node:
        if node.op_type == "BatchNormalization" and not _is_training_mode(node) and not used & set(node.output[1:]):
            del node.output[1:]
    return model
