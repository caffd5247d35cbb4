"""Pass: find the weight products SWAT may sparsify (SPEC §2) and record each in `node.meta`.

Recognised: `nn.Conv1d/2d/3d`, `nn.Linear`, `F.conv1d/2d/3d`, `F.linear`, and `x @ W`, `x @ W.T`,
`x @ W.t()`, `torch.matmul` with a parameter `W` as right operand. The graph itself is unchanged; each
such node gets a `WeightProduct` (a layer called at several sites: `name@1`, `name@2`...).
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from swat_fx.contract import OP_META, ConvArgs, WeightProduct
from swat_fx.passes.conditions import NOT_TRANSFORMED, PRODUCTS_RECORDED
from swat_fx.passes.pass_base import SwatPass

_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_LINEAR_FUNCTIONS = {F.linear, torch._C._nn.linear}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.mm}
_CONV_ARG_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


class Operands(NamedTuple):
    """The graph values a weight product reads: nodes, or parameter names of a module call."""

    input: fx.Node
    weight: fx.Node | str
    bias: fx.Node | str | None


Found = tuple[WeightProduct, Operands]


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


def _from_module(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    module = gm.get_submodule(node.target)
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None
    weight = f"{node.target}.weight"
    bias = f"{node.target}.bias" if module.bias is not None else None
    shape = tuple(module.weight.shape)
    operands = Operands(node.args[0], weight, bias)
    if isinstance(module, nn.Linear):
        return WeightProduct(node.target, "linear", weight, shape, has_bias=bias is not None, bias=bias), operands
    zeros = module.padding_mode == "zeros"
    conv = ConvArgs(tuple(module.stride), module.padding if zeros else (0,) * len(module.stride),
                    tuple(module.dilation), module.groups)
    # nn.Conv pads with F.pad first for other padding modes: the conv's input is the padded one
    pad_mode = None if zeros else (module.padding_mode, tuple(module._reversed_padding_repeated_twice))
    record = WeightProduct(node.target, f"conv{len(shape) - 2}d", weight, shape, has_bias=bias is not None,
                           bias=bias, pad_mode=pad_mode, conv=conv)
    return record, operands


def _from_function(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    if node.target in _CONV_FUNCTIONS or node.target in _LINEAR_FUNCTIONS:
        names = _CONV_ARG_NAMES if node.target in _CONV_FUNCTIONS else _CONV_ARG_NAMES[:3]
        args = {**_CONV_DEFAULTS, **dict(zip(names, node.args, strict=False)), **node.kwargs}
        param = _param_name(gm, args["weight"])
        if param is None:
            return None
        shape = tuple(gm.get_parameter(param).shape)
        operands = Operands(args["input"], args["weight"], args["bias"])
        bias = {"has_bias": args["bias"] is not None, "bias": _param_name(gm, args["bias"])}
        if node.target in _LINEAR_FUNCTIONS:
            return WeightProduct(param, "linear", param, shape, **bias), operands
        n = len(shape) - 2
        conv = ConvArgs(*(_ntuple(args[key], n) for key in ("stride", "padding", "dilation")), args["groups"])
        return WeightProduct(param, f"conv{n}d", param, shape, conv=conv, **bias), operands
    if node.target in _MATMUL_FUNCTIONS and len(node.args) == 2:
        return _from_matmul(gm, *node.args)
    return None


def _from_matmul(gm: fx.GraphModule, x: Any, right: Any) -> Found | None:
    """`x @ W.T` is linear(x, W); `x @ W` with a 2-D parameter is linear(x, W.t())."""
    source = _transposed_param(gm, right)
    if source is not None:
        shape = tuple(gm.get_parameter(source.target).shape)
        return WeightProduct(source.target, "linear", source.target, shape), Operands(x, source, None)
    param = _param_name(gm, right)
    if param is not None and gm.get_parameter(param).dim() == 2:
        rows, cols = gm.get_parameter(param).shape
        record = WeightProduct(param, "linear", param, (cols, rows), transpose_weight=True)
        return record, Operands(x, right, None)
    return None


def describe(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    """The `WeightProduct` of `node` and the operands it reads, or None if SWAT does not apply to it."""
    if node.op == "call_module":
        return _from_module(gm, node)
    if node.op == "call_function":
        return _from_function(gm, node)
    if node.op == "call_method" and node.target == "matmul" and len(node.args) == 2:
        return _from_matmul(gm, *node.args)
    return None


def operands_of(gm: fx.GraphModule, node: fx.Node) -> Operands:
    """The operands of a node that `FindWeightProducts` recorded."""
    found = describe(gm, node)
    if found is None:
        raise ValueError(f"node {node.name!r} ({node.format_node()}) is no weight product")
    return found[1]


class FindWeightProducts(SwatPass):
    """Record a `WeightProduct` on each weight-product node; names of repeated call sites get `@k`."""

    requires = (NOT_TRANSFORMED,)
    ensures = (PRODUCTS_RECORDED,)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        seen: dict[str, int] = {}
        for node in gm.graph.nodes:
            found = describe(gm, node)
            if found is None:
                continue
            record = found[0]
            count = seen.get(record.name, 0)
            seen[record.name] = count + 1
            node.meta[OP_META] = record.replace(name=f"{record.name}@{count}") if count else record
        return gm
