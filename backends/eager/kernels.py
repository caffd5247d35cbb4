"""Autograd kernels for SWAT conv and linear ops.

Each kernel takes the dense parameter `weight` (whose gradient it returns, dense: SPEC §2) and the
operands each product should use: `weight_fwd` for Y, `weight_bwd` for dX, `input_bwd` for dW. `None`
means "the dense tensor". Only the operands the backward needs are saved, so a dense activation that
has been replaced by `input_bwd` is not kept alive by this op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Padding = str | Sequence[int]


def _same_padding(weight: torch.Tensor, dilation: Sequence[int]) -> tuple[list[int], list[int]]:
    """PyTorch's `padding="same"`: symmetric part, and the extra right padding of even kernels."""
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
    left = [p // 2 for p in total]
    return left, [p - 2 * lo for p, lo in zip(total, left, strict=True)]


def resolve_padding(padding: Padding, weight: torch.Tensor, dilation: Sequence[int]) -> tuple[list[int], list[int]]:
    """(symmetric padding per dim, extra right padding per dim) for any `padding` a conv accepts."""
    spatial = weight.dim() - 2
    if padding == "same":
        return _same_padding(weight, dilation)
    if padding == "valid":
        return [0] * spatial, [0] * spatial
    padding = list(padding) if isinstance(padding, Sequence) else [padding] * spatial
    return padding, [0] * spatial


def _pad_right(t: torch.Tensor, extra: Sequence[int]) -> torch.Tensor:
    if not any(extra):
        return t
    return F.pad(t, [p for e in reversed(extra) for p in (0, e)])


class _MaskedConv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        weight_fwd: torch.Tensor, weight_bwd: torch.Tensor, input_bwd: torch.Tensor,
        stride: list[int], padding: list[int], extra: list[int], dilation: list[int], groups: int,
    ) -> torch.Tensor:
        ctx.conv_args = (stride, padding, dilation, False, [0] * len(stride), groups)
        ctx.extra, ctx.input_shape = extra, x.shape
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.save_for_backward(input_bwd, weight_bwd)
        return torch.convolution(_pad_right(x, extra), weight_fwd, bias, *ctx.conv_args)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input_bwd, weight_bwd = ctx.saved_tensors
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None]
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad, _pad_right(input_bwd, ctx.extra), weight_bwd, ctx.bias_sizes, *ctx.conv_args, needs
        )
        if dx is not None and any(ctx.extra):
            dx = dx[(..., *(slice(0, n) for n in ctx.input_shape[2:]))]
        return dx, dw, db, None, None, None, None, None, None, None, None


def conv_masked(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: Sequence[int], padding: Padding, dilation: Sequence[int], groups: int,
    weight_fwd: torch.Tensor | None = None, weight_bwd: torch.Tensor | None = None,
    input_bwd: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conv with separately sparsified operands for Y, dX and dW, on dense (zero-filled) tensors."""
    if weight.dim() != x.dim():
        raise ValueError(
            f"SWAT conv got an input of shape {tuple(x.shape)} for a weight of shape {tuple(weight.shape)}: "
            "unbatched inputs are not supported, add a batch dimension (x.unsqueeze(0))"
        )
    sym, extra = resolve_padding(padding, weight, dilation)
    return _MaskedConv.apply(
        x, weight, bias,
        weight if weight_fwd is None else weight_fwd,
        weight if weight_bwd is None else weight_bwd,
        x if input_bwd is None else input_bwd,
        list(stride), sym, extra, list(dilation), groups,
    )


def conv_dense(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: Sequence[int], padding: Padding, dilation: Sequence[int], groups: int, **_: Any,
) -> torch.Tensor:
    """Plain PyTorch conv: for layers whose only site is on the gradient (meProp) or the input (fw_a)."""
    conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
    return conv(x, weight, bias, stride, padding, dilation, groups)


class _MaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        weight_fwd: torch.Tensor, weight_bwd: torch.Tensor, input_bwd: torch.Tensor,
    ) -> torch.Tensor:
        ctx.has_bias = bias is not None
        ctx.save_for_backward(input_bwd, weight_bwd)
        return F.linear(x, weight_fwd, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input_bwd, weight_bwd = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        dx = grad @ weight_bwd if ctx.needs_input_grad[0] else None
        dw = rows.t() @ input_bwd.reshape(-1, input_bwd.shape[-1]) if ctx.needs_input_grad[1] else None
        db = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def linear_masked(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
    weight_fwd: torch.Tensor | None = None, weight_bwd: torch.Tensor | None = None,
    input_bwd: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear (any leading dims) with separately sparsified operands for Y, dX and dW."""
    return _MaskedLinear.apply(
        x, weight, bias,
        weight if weight_fwd is None else weight_fwd,
        weight if weight_bwd is None else weight_bwd,
        x if input_bwd is None else input_bwd,
    )


def linear_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
    """Plain PyTorch linear."""
    return F.linear(x, weight, bias)


CONV_KERNELS: dict[str, Callable[..., torch.Tensor]] = {"masked": conv_masked, "dense": conv_dense}
LINEAR_KERNELS: dict[str, Callable[..., torch.Tensor]] = {"masked": linear_masked, "dense": linear_dense}


def conv(*args: Any, kernel: str = "masked", **kwargs: Any) -> torch.Tensor:
    return CONV_KERNELS[kernel](*args, **kwargs)


def linear(*args: Any, kernel: str = "masked", **kwargs: Any) -> torch.Tensor:
    return LINEAR_KERNELS[kernel](*args, **kwargs)
