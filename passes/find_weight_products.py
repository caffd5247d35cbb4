"""Pass: find the weight products SWAT may sparsify (SPEC §2) and record each in `node.meta`.

Recognised at the module, torch and ATen level (both tracers): `nn.Conv1d/2d/3d`, `nn.Linear`,
`F.conv1d/2d/3d`, `F.linear`, `x @ W`, `x @ W.T`, `matmul`/`mm` with a parameter `W` as right
operand, `addmm(b, x, W)` (GPT-2's `Conv1D`, W stored [in, out]) and an `einsum` that is a linear layer.
The graph itself is unchanged; each such node gets a `WeightProduct` (a layer called at several sites:
`name@1`, `name@2`...). Every other product with a parameter operand gets a `DenseProduct` saying why
SWAT leaves it dense, so nothing stays dense in silence.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from swat_fx.contract import DENSE_META, OP_META, ConvArgs, DenseProduct, DenseReason, WeightProduct
from swat_fx.passes.conditions import NOT_TRANSFORMED, PRODUCTS_RECORDED
from swat_fx.passes.pass_base import SwatPass

aten = torch.ops.aten

_CONV_FUNCTIONS = {
    F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding,
}
_LINEAR_FUNCTIONS = {F.linear, aten.linear.default}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.mm, aten.mm.default, aten.matmul.default, torch.bmm,
                     aten.bmm.default}
_ADDMM_FUNCTIONS = {torch.addmm, aten.addmm.default}
_EINSUM_FUNCTIONS = {torch.einsum, aten.einsum.default}
_OTHER_PRODUCTS = {
    torch.baddbmm, aten.baddbmm.default, torch.addbmm, aten.addbmm.default,
    torch.mv, aten.mv.default, torch.addmv, aten.addmv.default, torch.tensordot, aten.tensordot.default,
    F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, aten.conv_transpose1d.default,
    aten.conv_transpose2d.input, aten.conv_transpose3d.input, aten.convolution.default,
    aten._convolution.default, F.bilinear, aten.bilinear.default, aten.lstm.input, aten.gru.input,
    aten.rnn_tanh.input, aten.rnn_relu.input,
}
"""Products of an activation with a parameter that SWAT recognises but does not sparsify (reported)."""
_PRODUCTS = (_CONV_FUNCTIONS | _LINEAR_FUNCTIONS | _MATMUL_FUNCTIONS | _ADDMM_FUNCTIONS | _EINSUM_FUNCTIONS
             | _OTHER_PRODUCTS)
_PRODUCT_METHODS = {"matmul", "mm", "bmm", "addmm", "baddbmm", "mv", "einsum"}
_TRANSPOSES = {aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default, aten.mT.default,
               aten.mH.default, aten.adjoint.default, aten.swapaxes.default, aten.movedim.int, torch.t,
               torch.transpose}
_VIEWS = {
    aten.view.default, aten.reshape.default, aten.slice.Tensor, aten.select.int, aten.split.Tensor,
    aten.split_with_sizes.default, aten.chunk.default, aten.unflatten.int, aten.flatten.using_ints,
    aten.contiguous.default, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
    aten.to.dtype, aten._to_copy.default, aten.alias.default, aten.detach.default, operator.getitem,
    torch.chunk, torch.split, torch.reshape, torch.flatten, torch.narrow,
}
"""Ops through which a product may still read a parameter (for reporting the products SWAT cannot take)."""
_VIEW_METHODS = {"view", "reshape", "chunk", "split", "contiguous", "flatten", "unflatten", "narrow", "to",
                 "transpose", "permute", "t", "unsqueeze", "squeeze", "expand", "float", "half", "type_as"}
_NEVER_SPARSIFIED = (nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                     nn.LocalResponseNorm, nn.RMSNorm)
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


def is_transpose(node: fx.Node, ndim: int = 2) -> bool:
    """Whether `node` swaps the last two dims of a rank-`ndim` tensor: `t.T` (2-D), `t.mT`, `t.t()`,
    `t.transpose(-2, -1)`, `t.permute(...)`, or the ATen ops they become."""
    last_two = {ndim - 2, ndim - 1}
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "mT" or (node.args[1] == "T" and ndim == 2)
    if node.op == "call_method" or node.target in _TRANSPOSES:
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        name = name.split(".")[0]
        dims = node.args[1:]
        if name in ("mT", "mH", "adjoint") or (name in ("t", "numpy_T") and ndim == 2):
            return True
        if name in ("transpose", "swapaxes", "movedim"):
            return len(dims) == 2 and all(isinstance(d, int) for d in dims) and {d % ndim for d in dims} == last_two
        if name == "permute":
            order = dims[0] if len(dims) == 1 else dims
            swapped = [*range(ndim - 2), ndim - 1, ndim - 2]
            return all(isinstance(d, int) for d in order) and [d % ndim for d in order] == swapped
    return False


_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, torch.split, torch.chunk}
_SLICES = {aten.slice.Tensor, aten.narrow.default, torch.narrow}


class WeightSource(NamedTuple):
    """What a graph value is as a weight: the parameter `name` itself, or a static slice (dim, start,
    stop) of it, and the shape of the value."""

    name: str
    slice: tuple[int, int, int] | None
    shape: tuple[int, ...]


def _split_bounds(size: int, node: fx.Node) -> list[tuple[int, int]] | None:
    """The (start, stop) of each piece of a `split`/`chunk` of a dim of `size` entries."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks", node.kwargs.get("split_size"))
    if name.split(".")[0] == "chunk":
        if not isinstance(arg, int) or arg < 1:
            return None
        step = -(-size // arg)
        sizes = [min(step, size - start) for start in range(0, size, step)]
    elif isinstance(arg, int):
        sizes = [min(arg, size - start) for start in range(0, size, arg)]
    elif isinstance(arg, (list, tuple)) and all(isinstance(n, int) for n in arg):
        sizes = list(arg)
    else:
        return None
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(start, start + n) for start, n in zip(starts, sizes, strict=True)]


def _positional(node: fx.Node, first: int, defaults: tuple[Any, ...]) -> tuple[Any, ...]:
    """`node.args[first:]`, completed by `defaults`."""
    given = tuple(node.args[first:first + len(defaults)])
    return given + defaults[len(given):]


def _dim_arg(node: fx.Node, position: int) -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get("dim", 0)


def _sliced_dim(gm: fx.GraphModule, value: Any, dim: Any) -> tuple[str, int, int, int] | None:
    """(parameter, dim, size, offset) of dim `dim` of `value`, a parameter or a static slice of one (a
    slice of a slice along the same dim adds up; along another dim it is no contiguous slice)."""
    source = weight_source(gm, value)
    if source is None or not isinstance(dim, int) or not -len(source.shape) <= dim < len(source.shape):
        return None
    dim %= len(source.shape)
    if source.slice is None:
        return source.name, dim, source.shape[dim], 0
    sliced, offset, _ = source.slice
    return (source.name, dim, source.shape[dim], offset) if sliced == dim else None


def _narrowed(found: tuple[str, int, int, int] | None, bounds: slice) -> tuple[str, tuple[int, int, int]] | None:
    """The slice `bounds` (step 1) of the dim `found` describes, in the parameter's coordinates."""
    if found is None or bounds.step not in (None, 1):
        return None
    param, dim, size, offset = found
    start, stop, _ = bounds.indices(size)
    return (param, (dim, offset + start, offset + stop)) if start < stop else None


def _static_slice(gm: fx.GraphModule, node: fx.Node) -> tuple[str, tuple[int, int, int]] | None:
    """(parameter, (dim, start, stop)) when `node` is a slice of a parameter with static bounds: a piece
    of a `split`/`chunk`, `narrow`, `w[a:b]` or ATen `slice` (step 1)."""
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        source, index = node.args
        is_split = (source.op == "call_function" and source.target in _SPLITS) or (
            source.op == "call_method" and source.target in ("split", "chunk"))
        if is_split and isinstance(index, int):
            found = _sliced_dim(gm, source.args[0], _dim_arg(source, 2))
            bounds = None if found is None else _split_bounds(found[2], source)
            if bounds is None or not -len(bounds) <= index < len(bounds):
                return None
            return _narrowed(found, slice(*bounds[index]))
        index = index if isinstance(index, tuple) else (index,)
        narrowed = [d for d, part in enumerate(index) if part != slice(None)]
        static = all(isinstance(part, slice) and all(isinstance(v, int) or v is None
                                                     for v in (part.start, part.stop, part.step)) for part in index)
        if len(narrowed) > 1 or not static:
            return None
        return _narrowed(_sliced_dim(gm, source, narrowed[0] if narrowed else 0), index[narrowed[0]] if narrowed
                         else slice(None))
    if node.target in _SLICES or (node.op == "call_method" and node.target == "narrow"):
        found = _sliced_dim(gm, node.args[0], _dim_arg(node, 1))
        if found is None:
            return None
        if node.target == aten.slice.Tensor:
            start, stop, step = _positional(node, 2, (None, None, 1))
            if not all(isinstance(v, int) or v is None for v in (start, stop)):
                return None
            return _narrowed(found, slice(start, stop, step))
        start, length = _positional(node, 2, (None, None))
        if not isinstance(start, int) or not isinstance(length, int):
            return None
        start %= found[2]
        return _narrowed(found, slice(start, start + length))
    return None


def weight_source(gm: fx.GraphModule, node: Any) -> WeightSource | None:
    """The parameter (or static slice of one) a graph value is, or None for anything else."""
    if not isinstance(node, fx.Node):
        return None
    param = _param_name(gm, node)
    if param is not None:
        return WeightSource(param, None, tuple(gm.get_parameter(param).shape))
    if node.op not in ("call_function", "call_method"):
        return None
    found = _static_slice(gm, node)
    if found is None:
        return None
    param, (dim, start, stop) = found
    shape = list(gm.get_parameter(param).shape)
    if (start, stop) == (0, shape[dim]):  # `w[:]` is `w`
        return WeightSource(param, None, tuple(shape))
    shape[dim] = stop - start
    return WeightSource(param, (dim, start, stop), tuple(shape))


def transposed_weight(gm: fx.GraphModule, node: Any) -> tuple[fx.Node, WeightSource] | None:
    """The node of W and what it is, if `node` swaps the last two dims of a (sliced) parameter W."""
    if not isinstance(node, fx.Node) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = weight_source(gm, node.args[0])
    if source is None or len(source.shape) < 2 or not is_transpose(node, len(source.shape)):
        return None
    return node.args[0], source


def _ntuple(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return value
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _layer_name(source: WeightSource) -> str:
    """A product found as a function call is named after its parameter, or after the module owning the
    parameter when it is that module's `weight` (so an `nn.Linear` has its own name under both tracers);
    a slice adds its bounds (`attn.in_proj_weight.rows_16_32`)."""
    name = source.name.removesuffix(".weight")
    if source.slice is None:
        return name
    dim, start, stop = source.slice
    axis = ("rows", "cols")[dim] if len(source.shape) == 2 else f"dim{dim}"
    return f"{name}.{axis}_{start}_{stop}"


def _product(kind: str, source: WeightSource, transposed: bool = False, **fields: Any) -> WeightProduct:
    """The record of a product reading `source` (stored [in, out] when `transposed`)."""
    shape = (*source.shape[:-2], source.shape[-1], source.shape[-2]) if transposed else source.shape
    return WeightProduct(_layer_name(source), kind, source.name, shape, transpose_weight=transposed,
                         weight_slice=source.slice, **fields)


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


def _from_parameters(gm: fx.GraphModule, value: Any) -> bool:
    """Whether a graph value is a parameter, or computed from parameters (and constants) alone: then it
    is no activation (`A @ B` of a low-rank factorised weight is no layer)."""
    if not isinstance(value, fx.Node):
        return True
    return not any(node.op in ("placeholder", "call_module") for node in _ancestors(value))


def _from_function(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    if node.target in _CONV_FUNCTIONS or node.target in _LINEAR_FUNCTIONS:
        names = _CONV_ARG_NAMES if node.target in _CONV_FUNCTIONS else _CONV_ARG_NAMES[:3]
        args = {**_CONV_DEFAULTS, **dict(zip(names, node.args, strict=False)), **node.kwargs}
        source = weight_source(gm, args["weight"])
        if source is None or _from_parameters(gm, args["input"]):
            return None
        operands = Operands(args["input"], args["weight"], args["bias"])
        bias = {"has_bias": args["bias"] is not None, "bias": _param_name(gm, args["bias"])}
        if node.target in _LINEAR_FUNCTIONS:
            return _product("linear", source, **bias), operands
        n = len(source.shape) - 2
        conv = ConvArgs(*(_ntuple(args[key], n) for key in ("stride", "padding", "dilation")), args["groups"])
        return _product(f"conv{n}d", source, conv=conv, **bias), operands
    if node.target in _MATMUL_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
        return _from_matmul(gm, node, *node.args)
    if node.target in _ADDMM_FUNCTIONS:
        return _from_addmm(gm, node)
    if node.target in _EINSUM_FUNCTIONS:
        return _from_einsum(gm, node)
    return None


def _from_matmul(gm: fx.GraphModule, node: fx.Node, x: Any, right: Any, bias: Any = None) -> Found | None:
    """`x @ W.T` is linear(x, W); `x @ W` with a parameter W stored [in, out] is linear(x, W.t()); a
    weight with leading dims (`bmm`, a 3-D `matmul`) is a batched linear of weight [..., out, in]; a
    weight on the left, `W @ x`, is a linear on x with its last two dims swapped (`weight_left`)."""
    if _from_parameters(gm, x):
        return _weight_on_the_left(gm, x, right) if bias is None else None
    has_bias = {"has_bias": bias is not None, "bias": _param_name(gm, bias)}
    if bias is not None and _rank(gm, bias) != 1:
        return None
    transposed = transposed_weight(gm, right)
    if transposed is not None:
        return _product("linear", transposed[1], **has_bias), Operands(x, transposed[0], bias)
    source = weight_source(gm, right)
    if source is not None and len(source.shape) >= 2:
        return _product("linear", source, transposed=True, **has_bias), Operands(x, right, bias)
    return None


def _weight_on_the_left(gm: fx.GraphModule, left: Any, x: Any) -> Found | None:
    """`W @ x` (W [..., out, in], or `W.T @ x` with W stored [in, out]) for an activation x."""
    if _from_parameters(gm, x):
        return None
    transposed = transposed_weight(gm, left)
    weight, source = transposed if transposed is not None else (left, weight_source(gm, left))
    if source is None or len(source.shape) < 2:
        return None
    rank = _rank(gm, x)  # unknown under symbolic tracing: W @ v and W @ X differ (reported, not guessed)
    if rank is None:
        return None
    return _product("linear", source, transposed=transposed is not None, weight_left=rank > 1), \
        Operands(x, weight, None)


def _from_addmm(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    """`addmm(b, x, W)` (GPT-2's `Conv1D`, W stored [in, out]) with a 1-D bias and unit scales."""
    names = ("input", "mat1", "mat2", "beta", "alpha")
    args = {"beta": 1, "alpha": 1, **dict(zip(names, node.args, strict=False)), **node.kwargs}
    if args["beta"] != 1 or args["alpha"] != 1:
        return None
    return _from_matmul(gm, node, args["mat1"], args["mat2"], bias=args["input"])


def _rank(gm: fx.GraphModule, value: Any) -> int | None:
    """The number of dims of a graph value, where the graph knows it (a parameter, or export's metadata)."""
    source = weight_source(gm, value)
    if source is not None:
        return len(source.shape)
    example = value.meta.get("val") if isinstance(value, fx.Node) else None
    return example.dim() if isinstance(example, torch.Tensor) else None


def _from_einsum(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    """An einsum that is a linear layer: `"bsi,oi->bso"` (any letters, no `...`; or with the weight
    stored `io`), the activation's last dim contracted with a 2-D parameter; or a batched one,
    `"bni,boi->bno"`, whose weight's leading subscripts lead the activation and the output too."""
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if len(operands) != 2 or not isinstance(equation, str) or "->" not in equation:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    subscripts = inputs.split(",")
    if len(subscripts) != 2:
        return None
    for x_index in (0, 1):
        x, w = operands[x_index], operands[1 - x_index]
        x_sub, w_sub = subscripts[x_index], subscripts[1 - x_index]
        flipped = transposed_weight(gm, w)  # the einsum reads W with its last two dims swapped
        w, source = flipped if flipped is not None else (w, weight_source(gm, w))
        if (source is None or len(w_sub) != len(source.shape) or len(w_sub) < 2 or not x_sub
                or len(set(x_sub)) != len(x_sub) or len(set(w_sub)) != len(w_sub) or _from_parameters(gm, x)):
            continue
        batch, pair = w_sub[:-2], w_sub[-2:]
        if batch and (len(x_sub) != len(w_sub) or not x_sub.startswith(batch)):
            continue  # a batched weight multiplies [*batch, n, in] activations, as bmm does
        contracted = x_sub[-1]
        if contracted not in pair or contracted in output:  # kept, not summed: no linear layer
            continue
        kept = pair.replace(contracted, "")
        if kept in x_sub or output != x_sub[:-1] + kept:
            continue
        transposed = (pair[0] == contracted) != (flipped is not None)  # W itself is stored [..., in, out]
        return _product("linear", source, transposed=transposed), Operands(x, w, None)
    return None


def describe(gm: fx.GraphModule, node: fx.Node) -> Found | None:
    """The `WeightProduct` of `node` and the operands it reads, or None if SWAT does not apply to it."""
    if node.op == "call_module":
        return _from_module(gm, node)
    if node.op == "call_function":
        return _from_function(gm, node)
    if node.op == "call_method" and node.target in ("matmul", "mm", "bmm") and len(node.args) == 2:
        return _from_matmul(gm, node, *node.args)
    return None


def operands_of(gm: fx.GraphModule, node: fx.Node) -> Operands:
    """The operands of a node that `FindWeightProducts` recorded."""
    found = describe(gm, node)
    if found is None:
        raise ValueError(f"node {node.name!r} ({node.format_node()}) is no weight product")
    return found[1]


def _read_params(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    """The >= 2-D parameters `node` reads, directly or through views and transposes, in argument order."""
    found: list[str] = []
    queue = list(node.all_input_nodes)
    seen: set[fx.Node] = set()
    while queue:
        value = queue.pop(0)
        if value in seen:
            continue
        seen.add(value)
        param = _param_name(gm, value)
        if param is not None:
            if gm.get_parameter(param).dim() >= 2 and param not in found:
                found.append(param)
        elif (value.op == "call_function" and (value.target in _VIEWS or value.target in _TRANSPOSES)) or (
                value.op == "call_method" and value.target in _VIEW_METHODS):
            queue.extend(value.all_input_nodes)
    return found


def _ancestors(node: fx.Node) -> list[fx.Node]:
    """`node` and every node it is computed from."""
    found: dict[fx.Node, None] = {}
    queue = [node]
    while queue:
        value = queue.pop(0)
        if value not in found:
            found[value] = None
            queue.extend(value.all_input_nodes)
    return list(found)


def _module_weights(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The >= 2-D parameters of a module SWAT cannot enter, except those of embeddings and norms."""
    skipped = {id(p) for m in module.modules() if isinstance(m, _NEVER_SPARSIFIED) for p in m.parameters()}
    return [(name, tuple(p.shape)) for name, p in module.named_parameters()
            if p.dim() >= 2 and id(p) not in skipped]


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def unsparsifiable(gm: fx.GraphModule, node: fx.Node) -> DenseProduct | None:
    """A `DenseProduct` for a node that multiplies an activation with a parameter SWAT cannot sparsify:
    an unsupported product, a leaf module holding conv/linear-like weights, or an opaque function."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        weights = _module_weights(module)
        if not weights or isinstance(module, _NEVER_SPARSIFIED):
            return None
        kind = type(module).__name__
        if type(module).__module__.startswith("torch.nn"):
            detail = (f"symbolic tracing keeps torch.nn.{kind} whole when it has masks, extra key/value "
                      "biases, dropout or other key/value sizes; pass "
                      "example_inputs to trace it with torch.export" if kind == "MultiheadAttention"
                      else f"SWAT does not sparsify {kind}")
            reason = DenseReason.UNSUPPORTED_OP if kind != "MultiheadAttention" else DenseReason.LEAF_MODULE
        else:
            reason, detail = DenseReason.LEAF_MODULE, "remove it from leaf_modules, or pass example_inputs"
        return DenseProduct(node.target, kind, weights[0][1], reason,
                            f"{detail} ({len(weights)} weight(s): {', '.join(n for n, _ in weights[:3])})")
    if node.op not in ("call_function", "call_method") or node.target in _VIEWS or node.target in _TRANSPOSES:
        return None
    params = _read_params(gm, node)
    is_product = node.target in _PRODUCTS if node.op == "call_function" else node.target in _PRODUCT_METHODS
    if is_product and all(_from_parameters(gm, source) for source in node.all_input_nodes):
        return None  # parameters with parameters (a low-rank weight A @ B): no activation in it
    if not params and is_product:
        computed = [source for source in node.all_input_nodes if _from_parameters(gm, source)
                    and any(_param_name(gm, n) for n in _ancestors(source))]
        if computed and len(computed) < len(node.all_input_nodes):
            param = next(_param_name(gm, n) for n in _ancestors(computed[0]) if _param_name(gm, n))
            return DenseProduct(param, _target_name(node.target), tuple(gm.get_parameter(param).shape),
                                DenseReason.UNSUPPORTED_OP, "its weight is computed from parameters (weight "
                                "norm, a low-rank product...); SWAT sparsifies products of a parameter itself")
    if not params:
        return None
    shape = tuple(gm.get_parameter(params[0]).shape)
    op = _target_name(node.target)
    left = node.args[0] if node.target in _MATMUL_FUNCTIONS or node.target in ("matmul", "mm", "bmm") else None
    if is_product and isinstance(left, fx.Node) and _from_parameters(gm, left) and _rank(gm, node.args[1]) is None:
        return DenseProduct(params[0], op, shape, DenseReason.UNSUPPORTED_OP,
                            "a weight left of `@` needs the rank of the activation right of it (`W @ v` and "
                            "`W @ X` differ), which symbolic tracing does not know: pass example_inputs")
    if is_product:
        return DenseProduct(params[0], op, shape, DenseReason.UNSUPPORTED_OP,
                            "SWAT sparsifies conv/linear/matmul/einsum products of a parameter, batched or "
                            "not, or of a contiguous slice of one; not a weight picked by an index or a "
                            "strided slice, a transposed conv, a bias-added batched product (baddbmm)...")
    module = getattr(node.target, "__module__", None) or ""
    if node.op == "call_function" and not module.startswith(("torch", "_operator", "builtins", "math", "swat_fx")):
        return DenseProduct(params[0], op, shape, DenseReason.OPAQUE_FUNCTION,
                            f"{module}.{op} is called as a whole (torch.fx.wrap); pass example_inputs to trace "
                            "it with torch.export")
    return None


class FindWeightProducts(SwatPass):
    """Record a `WeightProduct` on each weight-product node (names of repeated call sites get `@k`), and
    a `DenseProduct` on each product with a parameter that SWAT cannot sparsify."""

    requires = (NOT_TRANSFORMED,)
    ensures = (PRODUCTS_RECORDED,)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        seen: dict[str, int] = {}
        for node in gm.graph.nodes:
            found = describe(gm, node)
            if found is None:
                dense = unsparsifiable(gm, node)
                if dense is not None:
                    node.meta[DENSE_META] = dense
                continue
            record = found[0]
            count = seen.get(record.name, 0)
            seen[record.name] = count + 1
            node.meta[OP_META] = record.replace(name=f"{record.name}@{count}") if count else record
        return gm
