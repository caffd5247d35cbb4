"""Pass: find the ops SWAT may sparsify (SPEC §2) and describe each one in `node.meta["swat"]`.

Pre: a traced `GraphModule`. Post: every conv/linear node whose weight is a parameter carries a
`SparsifiableOp`; the graph itself is unchanged. Recognised: `nn.Conv1d/2d/3d`, `nn.Linear`,
`F.conv1d/2d/3d`, `F.linear`, and `x @ W`, `x @ W.T`, `x @ W.t()`, `torch.matmul` with a parameter `W`
as right operand.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

META_KEY = "swat"
_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_LINEAR_FUNCTIONS = {F.linear, torch._C._nn.linear}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.mm}
_CONV_ARG_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


@dataclass
class SparsifiableOp:
    """One call site of a conv or linear whose weight is a parameter.

    `weight` and `bias` are either graph nodes (functional calls) or parameter names (module calls);
    `conv` holds stride/padding/dilation/groups (tuples, or a padding string) for convolutions.
    """

    name: str
    kind: str
    input: fx.Node
    weight: fx.Node | str
    weight_param: str
    weight_shape: tuple[int, ...]
    bias: fx.Node | str | None = None
    transpose_weight: bool = False
    pad_mode: tuple[str, tuple[int, ...]] | None = None
    conv: dict[str, Any] = field(default_factory=dict)
    sparsity: float = 0.0

    @property
    def layer(self) -> str:
        """"conv" or "linear": the layer family whose mask layout applies."""
        return "linear" if self.kind == "linear" else "conv"


def _param_name(gm: fx.GraphModule, node: Any) -> str | None:
    """The qualified name of the parameter `node` reads, or None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    try:
        gm.get_parameter(node.target)
    except AttributeError:
        return None
    return node.target


def is_transpose(node: fx.Node) -> bool:
    """`t.T`, `t.mT`, `t.t()` or `t.transpose(0, 1)`."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("T", "mT")
    if node.op == "call_method":
        return node.target == "t" or (node.target == "transpose" and set(node.args[1:]) in ({0, 1}, {0, -1}))
    return False


def _transposed_param(gm: fx.GraphModule, node: Any) -> fx.Node | None:
    """The `get_attr` node of W if `node` is the transpose of a 2-D parameter W."""
    if not isinstance(node, fx.Node) or not is_transpose(node):
        return None
    source = node.args[0]
    name = _param_name(gm, source)
    return source if name is not None and gm.get_parameter(name).dim() == 2 else None


def _ntuple(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return value
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _from_module(gm: fx.GraphModule, node: fx.Node) -> SparsifiableOp | None:
    module = gm.get_submodule(node.target)
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None
    weight = f"{node.target}.weight"
    bias = f"{node.target}.bias" if module.bias is not None else None
    shape = tuple(module.weight.shape)
    if isinstance(module, nn.Linear):
        return SparsifiableOp(node.target, "linear", node.args[0], weight, weight, shape, bias)
    conv = {
        "stride": module.stride,
        "padding": module.padding if module.padding_mode == "zeros" else (0,) * len(module.stride),
        "dilation": module.dilation,
        "groups": module.groups,
    }
    pad_mode = None
    if module.padding_mode != "zeros":  # nn.Conv pads with F.pad first: the conv's input is the padded one
        pad_mode = (module.padding_mode, tuple(module._reversed_padding_repeated_twice))
    kind = f"conv{len(shape) - 2}d"
    return SparsifiableOp(node.target, kind, node.args[0], weight, weight, shape, bias, pad_mode=pad_mode, conv=conv)


def _from_function(gm: fx.GraphModule, node: fx.Node) -> SparsifiableOp | None:
    if node.target in _CONV_FUNCTIONS or node.target in _LINEAR_FUNCTIONS:
        names = _CONV_ARG_NAMES if node.target in _CONV_FUNCTIONS else _CONV_ARG_NAMES[:3]
        args = {**_CONV_DEFAULTS, **dict(zip(names, node.args, strict=False)), **node.kwargs}
        param = _param_name(gm, args["weight"])
        if param is None:
            return None
        shape = tuple(gm.get_parameter(param).shape)
        if node.target in _LINEAR_FUNCTIONS:
            return SparsifiableOp(param, "linear", args["input"], args["weight"], param, shape, args["bias"])
        n = len(shape) - 2
        conv = {key: _ntuple(args[key], n) for key in ("stride", "padding", "dilation")}
        conv["groups"] = args["groups"]
        return SparsifiableOp(param, f"conv{n}d", args["input"], args["weight"], param, shape, args["bias"], conv=conv)
    if node.target in _MATMUL_FUNCTIONS and len(node.args) == 2:
        return _from_matmul(gm, *node.args)
    return None


def _from_matmul(gm: fx.GraphModule, x: Any, right: Any) -> SparsifiableOp | None:
    """`x @ W.T` is linear(x, W); `x @ W` with a 2-D parameter is linear(x, W.t())."""
    source = _transposed_param(gm, right)
    if source is not None:
        shape = tuple(gm.get_parameter(source.target).shape)
        return SparsifiableOp(source.target, "linear", x, source, source.target, shape)
    param = _param_name(gm, right)
    if param is not None and gm.get_parameter(param).dim() == 2:
        rows, cols = gm.get_parameter(param).shape
        return SparsifiableOp(param, "linear", x, right, param, (cols, rows), transpose_weight=True)
    return None


def describe(gm: fx.GraphModule, node: fx.Node) -> SparsifiableOp | None:
    """The `SparsifiableOp` of `node`, or None if SWAT does not apply to it."""
    if node.op == "call_module":
        return _from_module(gm, node)
    if node.op == "call_function":
        return _from_function(gm, node)
    if node.op == "call_method" and node.target == "matmul" and len(node.args) == 2:
        return _from_matmul(gm, *node.args)
    return None


def find_sparsifiable_ops(gm: fx.GraphModule) -> fx.GraphModule:
    """Annotate each sparsifiable node; a layer called at several sites gets names `name@1`, `name@2`..."""
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        op = describe(gm, node)
        if op is None:
            continue
        count = seen.get(op.name, 0)
        seen[op.name] = count + 1
        if count:
            op.name = f"{op.name}@{count}"
        node.meta[META_KEY] = op
    return gm


def sparsifiable_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes annotated by `find_sparsifiable_ops`, in topological order."""
    return [node for node in gm.graph.nodes if isinstance(node.meta.get(META_KEY), SparsifiableOp)]
