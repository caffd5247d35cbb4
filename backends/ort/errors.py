"""Errors of the ORT backend, and how they name the layer that caused them.

ONNX export and ORT's gradient builder report an op (`aten::kthvalue`, `Round for node /Round_1`),
not where it comes from in the user's model; `fx_nodes_calling` finds the FX node(s) that call it and
the module each one belongs to (FX records the module stack of every traced call).
"""

from __future__ import annotations

import re

import onnx
import torch.fx as fx


class UnsupportedOpError(ValueError):
    """The model uses an op that ONNX export or ORT's gradient builder cannot handle."""


class ArtifactError(ValueError):
    """An ONNX model or ORT training artifact is missing, corrupt, or does not match the others."""


def _callee(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return None


# ONNX op types whose PyTorch callees have other names (compared after `_normalise`)
_ALIASES = {"averagepool": ("avgpool1d", "avgpool2d", "avgpool3d")}


def _normalise(name: str) -> str:
    return name.split("::")[-1].replace("_", "").lower()


def _describe_fx_node(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    owner = node.target if node.op == "call_module" else next(reversed(stack), None)
    return f"FX node {node.name!r} (layer {owner!r})" if owner else f"FX node {node.name!r} (in the model's forward)"


def matching_fx_nodes(gm: fx.GraphModule, op: str) -> list[fx.Node]:
    """FX nodes whose callee is named like `op` (`aten::kthvalue`, `Round`, `CumSum`: case-insensitive)."""
    keys = {_normalise(op), *_ALIASES.get(_normalise(op), ())}
    return [node for node in gm.graph.nodes if (callee := _callee(gm, node)) and _normalise(callee) in keys]


def fx_nodes_calling(gm: fx.GraphModule, op: str, occurrence: int | None = None, total: int | None = None) -> str:
    """A readable list of the FX nodes that call `op`; the `occurrence`-th of `total` when they pair up."""
    nodes = matching_fx_nodes(gm, op)
    if occurrence is not None and len(nodes) == total:
        nodes = nodes[occurrence:occurrence + 1]
    if not nodes:
        return "an op inside a leaf module or a library function (no FX node calls it directly)"
    return ", ".join(_describe_fx_node(node) for node in nodes)


_EXPORT_OPERATOR = re.compile(r"operator '([\w:.]+)'|ONNX export of operator ([\w:.]+)")
_GRADIENT_BUILDER = re.compile(r"gradient builder has not been registered: (\S+) for node (\S+)")


def unsupported_export(gm: fx.GraphModule, message: str) -> UnsupportedOpError | None:
    """The error to raise for a failed ONNX export that names an operator, else None."""
    match = _EXPORT_OPERATOR.search(message)
    if match is None:
        return None
    op = next(group for group in match.groups() if group)
    reason = message.strip().splitlines()[0].split(" Please feel free")[0].split(" [Caused by")[0]
    return UnsupportedOpError(
        f"ONNX export does not support the operator {op!r}, called by {fx_nodes_calling(gm, op)} "
        f"({reason.rstrip('. ')}). Replace it by an exportable op, or keep it out of the exported model"
    )


def unsupported_gradient(gm: fx.GraphModule, forward: onnx.ModelProto, message: str) -> UnsupportedOpError | None:
    """The error to raise when ORT's gradient builder lacks an op (`forward`: the exported model), else None."""
    match = _GRADIENT_BUILDER.search(message)
    if match is None:
        return None
    op_type, node = match.groups()
    same_type = [n.name for n in forward.graph.node if n.op_type == op_type]
    index = same_type.index(node) if node in same_type else None
    return UnsupportedOpError(
        f"ORT's gradient builder does not support the ONNX op {op_type!r} (node {node!r}), from "
        f"{fx_nodes_calling(gm, op_type, index, len(same_type))}; replace it by a differentiable op"
    )
