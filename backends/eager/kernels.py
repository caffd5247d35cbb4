"""Autograd kernels for SWAT conv, linear and the bit-mask ReLU.

A SWAT kernel takes the dense parameter `weight` (whose gradient it returns, dense: SPEC §2) and the
operand each product uses: `weight_fwd` for Y, `weight_bwd` for dX, `input_bwd` for dW (`None`: the
dense tensor). An operand is a zero-filled tensor or one of `operands`:
`CompressedTensor`/`ThresholdedParameter` are only stored compactly, `KeptUnits`/`KeptFilters` are
also computed on compactly (only the kept filters / channels enter the product). Only the backward operands are saved,
so a dense activation replaced by `input_bwd` is not kept alive by the op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as hooks

from swat_fx import selection
from swat_fx.backends.eager.formats import Kernel
from swat_fx.backends.eager.operands import (
    UNITS,
    CompressedTensor,
    KeptFilters,
    Operand,
    ThresholdedParameter,
    flatten_operand,
    pack_bits,
    to_dense,
    unflatten_operand,
    unpack_bits,
)
from swat_fx.backends.eager.workspace import Slot, Workspace

Padding = str | Sequence[int]


def _same_padding(weight_shape: Sequence[int], dilation: Sequence[int]) -> tuple[list[int], list[int]]:
    """PyTorch's `padding="same"`: symmetric part, and the extra right padding of even kernels."""
    total = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:], strict=True)]
    left = [p // 2 for p in total]
    return left, [p - 2 * lo for p, lo in zip(total, left, strict=True)]


def resolve_padding(
    padding: Padding, weight_shape: Sequence[int], dilation: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(symmetric padding per dim, extra right padding per dim) for any `padding` a conv accepts."""
    spatial = len(weight_shape) - 2
    if padding == "same":
        return _same_padding(weight_shape, dilation)
    if padding == "valid":
        return [0] * spatial, [0] * spatial
    padding = list(padding) if isinstance(padding, Sequence) else [padding] * spatial
    return padding, [0] * spatial


def _pad_right(t: torch.Tensor, extra: Sequence[int]) -> torch.Tensor:
    if not any(extra):
        return t
    return F.pad(t, [p for e in reversed(extra) for p in (0, e)])


def autocast_operands(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under `torch.autocast`, x, weight and bias in the dtype autocast runs conv/linear in, as it treats
    the ops SWAT replaces: the casts are differentiable, so dW reaches the float32 parameter. The kernels
    cast the sparsified operands to the same dtype."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)
    x, weight = x.to(dtype), weight.to(dtype)
    return x, weight, None if bias is None else bias.to(dtype)


def _save_operands(ctx: Any, *operands: Operand) -> None:
    tensors, specs = [], []
    for operand in operands:
        parts, spec = flatten_operand(operand)
        tensors.extend(parts)
        specs.append((spec, len(parts)))
    ctx.save_for_backward(*tensors)
    ctx.operand_specs = specs


def _saved_operands(ctx: Any) -> list[Operand]:
    saved, operands, start = ctx.saved_tensors, [], 0
    for spec, count in ctx.operand_specs:
        operands.append(unflatten_operand(spec, saved[start:start + count]))
        start += count
    return operands


def _scatter_units(kept: torch.Tensor, index: torch.Tensor, dim: int, size: int,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """The full output of a product computed for the kept output units only: the others are the bias."""
    shape = list(kept.shape)
    shape[dim] = size
    if bias is None:
        out = kept.new_zeros(shape)
    else:
        view = [1] * len(shape)
        view[dim] = size
        out = bias.detach().view(view).expand(shape).clone()
    return out.index_copy_(dim, index, kept)


def _dense_where_none(x: torch.Tensor, weight: torch.Tensor, weight_fwd: Operand | None, weight_bwd: Operand | None,
                      input_bwd: Operand | None) -> tuple[Operand, Operand, Operand]:
    """The operands of a product, the dense tensor where no site sparsifies one (resolved inside the
    Function: torch.compile cannot trace `apply` given one tensor twice)."""
    return (weight if weight_fwd is None else weight_fwd, weight if weight_bwd is None else weight_bwd,
            x if input_bwd is None else input_bwd)


def _product_operand(operand: Operand, workspace: Workspace | None, slot: Slot) -> torch.Tensor:
    """The dense tensor a product reads. A W_s or X_s that the compiled CPU kernels rebuild for this
    product alone goes into the workspace's buffer for `slot` (nothing is taken from it otherwise); with
    grad mode on (a double backward) autograd may keep it, so it gets a tensor of its own."""
    rebuilt_in_place = isinstance(operand, ThresholdedParameter | CompressedTensor) and operand.writes_into_out
    if workspace is None or not rebuilt_in_place or torch.is_grad_enabled():
        return to_dense(operand)
    return operand.to_dense(out=workspace.buffer(slot, operand.shape, operand.dtype, operand.device))


def _distinct(operand: Operand | None, other: Operand | None) -> Operand | None:
    """`operand`, as a view where it is the tensor `other` too (one W_s for Y and dX): torch.compile
    cannot trace `apply` given one tensor twice."""
    if operand is other and isinstance(operand, torch.Tensor) and torch.compiler.is_compiling():
        return operand.view_as(operand)
    return operand


class _SwatConv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        weight_fwd: Operand, weight_bwd: Operand, input_bwd: Operand,
        stride: list[int], padding: list[int], extra: list[int], dilation: list[int], groups: int,
        workspace: Workspace | None,
    ) -> torch.Tensor:
        weight_fwd, weight_bwd, input_bwd = _dense_where_none(x, weight, weight_fwd, weight_bwd, input_bwd)
        ctx.workspace = workspace
        ctx.conv_args = (stride, padding, dilation, False, [0] * len(stride), groups)
        ctx.extra, ctx.input_shape, ctx.weight_shape = extra, x.shape, weight.shape
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        _save_operands(ctx, weight_bwd, input_bwd)
        x = _pad_right(x, extra)
        if isinstance(weight_fwd, UNITS):
            kept_bias = None if bias is None else bias.index_select(0, weight_fwd.index)
            kept = torch.convolution(x, weight_fwd.values.to(x.dtype), kept_bias, *ctx.conv_args)
            return _scatter_units(kept, weight_fwd.index, 1, weight.shape[0], bias)
        return torch.convolution(x, _product_operand(weight_fwd, workspace, Slot.WEIGHT).to(x.dtype), bias,
                                 *ctx.conv_args)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight_bwd, input_bwd = _saved_operands(ctx)
        padded_shape = list(ctx.input_shape[:2]) + [n + e for n, e in zip(ctx.input_shape[2:], ctx.extra, strict=True)]
        dx = dw = None
        db = grad.sum([d for d in range(grad.dim()) if d != 1]) if ctx.bias_sizes is not None else None
        if ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and not any(isinstance(o, UNITS) for o in (
                weight_bwd, input_bwd)) and not any(ctx.extra):
            # dX = conv_x(G, W_s) and dW = conv_w(X_s, G) in one call: dX reads only W, dW only X
            x = _product_operand(input_bwd, ctx.workspace, Slot.INPUT).to(grad.dtype)
            w = _product_operand(weight_bwd, ctx.workspace, Slot.WEIGHT).to(grad.dtype)
            dx, dw, _ = torch.ops.aten.convolution_backward(grad, x, w, None, *ctx.conv_args, [True, True, False])
            return dx, dw, db, None, None, None, None, None, None, None, None, None
        if ctx.needs_input_grad[0]:
            w, g = weight_bwd, grad
            if isinstance(w, UNITS):  # only the kept filters, and G's matching channels, enter dX
                w, g = w.values, grad.index_select(1, w.index)
            # dX reads only the shape of the input argument, dW only that of the weight: empty stand-ins
            dx = torch.ops.aten.convolution_backward(
                g, grad.new_empty(padded_shape), _product_operand(w, ctx.workspace, Slot.WEIGHT).to(grad.dtype),
                None, *ctx.conv_args,
                [True, False, False])[0]
            if any(ctx.extra):
                dx = dx[(..., *(slice(0, n) for n in ctx.input_shape[2:]))]
        if ctx.needs_input_grad[1]:
            x = input_bwd.values if isinstance(input_bwd, UNITS) else _product_operand(
                input_bwd, ctx.workspace, Slot.INPUT)
            x = x.to(grad.dtype)
            weight_shape = list(ctx.weight_shape)
            weight_shape[1] = x.shape[1] // ctx.conv_args[-1]
            dw = torch.ops.aten.convolution_backward(
                grad, _pad_right(x, ctx.extra), grad.new_empty(weight_shape), None, *ctx.conv_args,
                [False, True, False])[1]
            if isinstance(input_bwd, UNITS):
                dw = grad.new_zeros(ctx.weight_shape).index_copy_(1, input_bwd.index, dw)
        return dx, dw, db, None, None, None, None, None, None, None, None, None


def _eager_only(workspace: Workspace | None) -> Workspace | None:
    """No workspace under torch.compile: what a compiled graph allocates is the compiler's choice."""
    return None if torch.compiler.is_compiling() else workspace


def conv_swat(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: Sequence[int], padding: Padding, dilation: Sequence[int], groups: int,
    weight_fwd: Operand | None = None, weight_bwd: Operand | None = None, input_bwd: Operand | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Conv with separately sparsified operands for Y, dX and dW; `workspace`, where given, holds the
    operands rebuilt for one product."""
    if weight.dim() != x.dim():
        raise ValueError(
            f"SWAT conv got an input of shape {tuple(x.shape)} for a weight of shape {tuple(weight.shape)}: "
            "unbatched inputs are not supported, add a batch dimension (x.unsqueeze(0))"
        )
    if groups != 1 and any(isinstance(o, UNITS) for o in (weight_fwd, weight_bwd, input_bwd)):
        raise ValueError("the compact conv kernel needs groups=1; use kernel='masked'")
    sym, extra = resolve_padding(padding, weight.shape, dilation)
    x, weight, bias = autocast_operands(x, weight, bias)
    return _SwatConv.apply(
        x, weight, bias,
        weight_fwd, _distinct(weight_bwd, weight_fwd), input_bwd,
        list(stride), sym, extra, list(dilation), groups, _eager_only(workspace),
    )


def conv_dense(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: Sequence[int], padding: Padding, dilation: Sequence[int], groups: int, **_: Any,
) -> torch.Tensor:
    """Plain PyTorch conv: for layers whose only site is on the gradient (meProp) or the input (fw_a)."""
    conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
    return conv(x, weight, bias, stride, padding, dilation, groups)


class _SwatLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        weight_fwd: Operand, weight_bwd: Operand, input_bwd: Operand, workspace: Workspace | None,
    ) -> torch.Tensor:
        weight_fwd, weight_bwd, input_bwd = _dense_where_none(x, weight, weight_fwd, weight_bwd, input_bwd)
        ctx.workspace = workspace
        ctx.has_bias, ctx.weight_shape, ctx.input_shape = bias is not None, weight.shape, x.shape
        _save_operands(ctx, weight_bwd, input_bwd)
        if weight.dim() > 2:  # batched: a product per leading index, broadcast as matmul does
            return torch.matmul(x, _product_operand(weight_fwd, workspace, Slot.WEIGHT).to(x.dtype).mT)
        if isinstance(weight_fwd, UNITS):
            kept_bias = None if bias is None else bias.index_select(0, weight_fwd.index)
            kept = F.linear(x, weight_fwd.values.to(x.dtype), kept_bias)
            return _scatter_units(kept, weight_fwd.index, -1, weight.shape[0], bias)
        return F.linear(x, _product_operand(weight_fwd, workspace, Slot.WEIGHT).to(x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight_bwd, input_bwd = _saved_operands(ctx)
        if len(ctx.weight_shape) > 2:
            return (*_batched_linear_grads(ctx, grad, weight_bwd, input_bwd), None, None, None, None, None)
        rows = grad.reshape(-1, grad.shape[-1])
        dx = dw = None
        if ctx.needs_input_grad[0]:
            if isinstance(weight_bwd, UNITS):
                dx = grad.index_select(-1, weight_bwd.index) @ weight_bwd.values.to(grad.dtype)
            else:
                dx = grad @ _product_operand(weight_bwd, ctx.workspace, Slot.WEIGHT).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            x = input_bwd.values if isinstance(input_bwd, UNITS) else _product_operand(
                input_bwd, ctx.workspace, Slot.INPUT)
            x = x.to(grad.dtype)
            dw = rows.t() @ x.reshape(rows.shape[0], x.shape[-1])  # no -1: a site may keep 0 features
            if isinstance(input_bwd, UNITS):
                dw = grad.new_zeros(ctx.weight_shape).index_copy_(1, input_bwd.index, dw)
        db = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None


def _batched_linear_grads(ctx: Any, grad: torch.Tensor, weight_bwd: Operand,
                          input_bwd: Operand) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dX = G @ W_bwd and dW = Gᵀ @ X_bwd for a weight [..., O, I], each summed over the dims it was
    broadcast along."""
    dx = dw = None
    vector = len(ctx.input_shape) == 1  # x [I] is the row [1, I], whose output row matmul dropped
    rows = grad.unsqueeze(-2) if vector else grad
    if ctx.needs_input_grad[0]:
        dx = torch.matmul(rows, _product_operand(weight_bwd, ctx.workspace, Slot.WEIGHT).to(grad.dtype))
        dx = dx.sum_to_size((1, *ctx.input_shape) if vector else ctx.input_shape).reshape(ctx.input_shape)
    if ctx.needs_input_grad[1]:
        x = _product_operand(input_bwd, ctx.workspace, Slot.INPUT).to(grad.dtype)
        dw = torch.matmul(rows.mT, x.unsqueeze(0) if vector else x).sum_to_size(ctx.weight_shape)
    return dx, dw


def linear_swat(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
    weight_fwd: Operand | None = None, weight_bwd: Operand | None = None, input_bwd: Operand | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Linear (any leading dims) with separately sparsified operands for Y, dX and dW; a weight
    [..., O, I] with leading dims is batched: Y = X @ Wᵀ broadcast as `torch.matmul` does, no bias."""
    if weight.dim() > 2 and bias is not None:
        raise ValueError(f"a batched SWAT linear (weight of shape {tuple(weight.shape)}) takes no bias")
    x, weight, bias = autocast_operands(x, weight, bias)
    return _SwatLinear.apply(
        x, weight, bias,
        weight_fwd, _distinct(weight_bwd, weight_fwd), input_bwd, _eager_only(workspace),
    )


def linear_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
    """Plain PyTorch linear (batched for a weight with leading dims, which takes no bias)."""
    if weight.dim() > 2 and bias is not None:
        raise ValueError(f"a batched linear (weight of shape {tuple(weight.shape)}) takes no bias")
    return torch.matmul(x, weight.mT) if weight.dim() > 2 else F.linear(x, weight, bias)


class _BitmaskReLU(torch.autograd.Function):
    """ReLU that saves 1 bit an entry for its backward instead of its output (lossless)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        ctx.shape = y.shape
        compiled = selection.compiled_for(y)
        if compiled is None:
            ctx.save_for_backward(pack_bits(y > 0))
            return y
        bits = np.empty((y.numel() + 7) // 8, dtype=np.uint8)
        compiled.pack_positive(y.detach().view(-1).numpy(), bits)
        ctx.save_for_backward(torch.from_numpy(bits))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (bits,) = ctx.saved_tensors
        grad = grad.contiguous()
        compiled = selection.compiled_for(grad)
        if compiled is None or grad.requires_grad:  # a double backward differentiates the torch ops
            positive = unpack_bits(bits, ctx.shape).to(grad.device)
            return torch.where(positive, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        out = torch.empty_like(grad)
        compiled.select_by_bits(selection.bit_patterns(grad), bits.numpy(), selection.bit_patterns(out))
        return out


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU holding 1 bit an entry for its backward (torch.compile traces the plain one: what its
    graphs hold is the compiler's choice)."""
    return torch.relu(x) if torch.compiler.is_compiling() else _BitmaskReLU.apply(x)


class _IndexMaxPool2d(torch.autograd.Function):
    """Max-pool whose backward holds the argmax indices (int32 where they fit) and no activation."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *pool_args: Any) -> torch.Tensor:
        y, indices = F.max_pool2d(x, *pool_args, return_indices=True)
        ctx.pool_args, ctx.input_shape = pool_args, x.shape
        ctx.save_for_backward(indices.int() if x[0].numel() < 2**31 else indices)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (indices,) = ctx.saved_tensors
        kernel_size, stride, padding, dilation, ceil_mode = ctx.pool_args
        dx = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, grad.new_empty(ctx.input_shape), _pair(kernel_size), _pair(stride or kernel_size),
            _pair(padding), _pair(dilation), ceil_mode, indices.long())
        return (dx, *([None] * len(ctx.pool_args)))


def _pair(value: int | Sequence[int]) -> list[int]:
    return list(value) if isinstance(value, Sequence) else [value, value]


def max_pool2d(x: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
               ceil_mode: bool) -> torch.Tensor:
    """Max-pool holding its indices alone for the backward (the plain one under torch.compile)."""
    if torch.compiler.is_compiling():
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _IndexMaxPool2d.apply(x, kernel_size, stride, padding, dilation, ceil_mode)


PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _hooked(bn: nn.Module) -> bool:
    """Whether calling `bn` would run a hook (its own or a global one, forward or backward), the
    condition under which `nn.Module.__call__` leaves its fast path."""
    return bool(bn._forward_hooks or bn._forward_pre_hooks or bn._backward_hooks or bn._backward_pre_hooks
                or hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
                or hooks._global_backward_pre_hooks)


def _normalizes_kept_channels(y: torch.Tensor, bn: nn.Module, kept: Any) -> bool:
    """Whether `batch_norm` may skip the dropped channels: a plain BatchNorm normalising with batch
    statistics (training mode) on CPU, called eagerly with no hook to run, on a conv output whose
    dropped channels are the compact kernel's exact zeros, in the BatchNorm's dtype, with more than one
    value a channel (else the module raises its own error)."""
    return (isinstance(kept, KeptFilters) and type(bn) in PLAIN_BATCH_NORMS and bn.training
            and y.device.type == "cpu" and not torch.compiler.is_compiling() and not _hooked(bn)
            and not torch.is_autocast_enabled(y.device.type)
            and (bn.weight is None or bn.weight.dtype == y.dtype) and y.dim() >= 2 and y.numel() > y.shape[1])


def _momentum(bn: nn.Module) -> float:
    """`nn.BatchNorm`'s exponential average factor, counting the batch as its forward does."""
    if not bn.track_running_stats or bn.num_batches_tracked is None:
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def batch_norm(y: torch.Tensor, bn: nn.Module, kept: Operand | None = None) -> torch.Tensor:
    """`bn(y)` for the output `y` of a compact conv whose forward kept the filters `kept`: in training
    mode the statistics and the normalisation run on the kept channels only. A dropped channel is all
    zeros, so its batch mean and variance are 0 and its output is one value a channel; those come
    from the same torch kernel run on a [2, C] tensor of zeros, and the running statistics of every
    channel are updated by torch's own kernel, so outputs, statistics and gradients are bit-identical
    to `bn(y)` on CPU. Anything else (eval mode, hooks, CUDA, torch.compile, autocast) calls `bn(y)`."""
    if not _normalizes_kept_channels(y, bn, kept):
        return bn(y)
    bn._check_input_dim(y)  # the module's own check: a BatchNorm2d takes 4-D inputs only
    factor = _momentum(bn)
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    return _KeptChannelBatchNorm.apply(y, bn.weight, bn.bias, kept.index, *running, factor, bn.eps)


def _select(t: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.index_select(0, index)


class _KeptChannelBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                index: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                factor: float, eps: float) -> torch.Tensor:
        kept_mean, kept_var = _select(running_mean, index), _select(running_var, index)
        zeros = y.new_zeros([2, y.shape[1]] + [1] * (y.dim() - 2))
        # every channel as a zero channel: its output value, mean and invstd, and its running update
        zero_out, mean, invstd = torch.native_batch_norm(zeros, weight, bias, running_mean, running_var, True,
                                                         factor, eps)
        kept_out, kept_batch_mean, kept_invstd = torch.native_batch_norm(
            y.index_select(1, index), _select(weight, index), _select(bias, index), kept_mean, kept_var, True,
            factor, eps)
        if running_mean is not None:
            running_mean.index_copy_(0, index, kept_mean)
            running_var.index_copy_(0, index, kept_var)
        mean, invstd = mean.index_copy(0, index, kept_batch_mean), invstd.index_copy(0, index, kept_invstd)
        ctx.save_for_backward(y, weight, mean, invstd)
        ctx.eps = eps
        return torch.empty_like(y).copy_(zero_out[:1].expand(y.shape)).index_copy_(1, index, kept_out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, weight, mean, invstd = ctx.saved_tensors
        # the call autograd makes for `bn(y)`: every channel, with the statistics the forward used
        dy, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            grad, y, weight, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3]))
        return dy, dweight, dbias, None, None, None, None, None


def _swat_kernel(kernel: Kernel) -> bool:
    """True for the SWAT kernels, False for the plain one; an error for anything a lowering cannot emit."""
    if kernel is Kernel.DENSE:
        return False
    if kernel in (Kernel.MASKED, Kernel.COMPRESSED, Kernel.COMPACT):
        return True
    raise ValueError(f"the eager kernel of a lowered op must be dense, masked, compressed or compact, got {kernel!r}")


def conv(*args: Any, kernel: Kernel, **kwargs: Any) -> torch.Tensor:
    """`kernel` says how the operands are stored; the SWAT ones all run the same autograd kernel."""
    return (conv_swat if _swat_kernel(kernel) else conv_dense)(*args, **kwargs)


def linear(*args: Any, kernel: Kernel, **kwargs: Any) -> torch.Tensor:
    return (linear_swat if _swat_kernel(kernel) else linear_dense)(*args, **kwargs)
