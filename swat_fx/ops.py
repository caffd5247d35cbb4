"""The ops a SWAT graph is made of: `conv` and `linear` with separately sparsified operands.

Passes insert calls to these functions; backends recognise them. Executed eagerly they dispatch to
the eager backend's kernel named by `kernel` (chosen by the `choose_kernels` pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from swat_fx.backends import eager


def conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: Sequence[int],
    padding: str | Sequence[int],
    dilation: Sequence[int],
    groups: int,
    weight_fwd: torch.Tensor | None = None,
    weight_bwd: torch.Tensor | None = None,
    input_bwd: torch.Tensor | None = None,
    kernel: str = "masked",
) -> torch.Tensor:
    """N-d convolution: Y = conv(input, weight_fwd), dX = conv_x(G, weight_bwd), dW = conv_w(input_bwd, G).

    The gradient is returned for the dense `weight`; `None` operands mean the dense tensor.
    """
    return eager.conv(
        input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
        weight_fwd=weight_fwd, weight_bwd=weight_bwd, input_bwd=input_bwd, kernel=kernel,
    )


def linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    weight_fwd: torch.Tensor | None = None,
    weight_bwd: torch.Tensor | None = None,
    input_bwd: torch.Tensor | None = None,
    kernel: str = "masked",
) -> torch.Tensor:
    """Linear on [..., F]: Y = input @ weight_fwd.T + b, dX = G @ weight_bwd, dW = G^T @ input_bwd."""
    return eager.linear(
        input, weight, bias, weight_fwd=weight_fwd, weight_bwd=weight_bwd, input_bwd=input_bwd, kernel=kernel
    )


def relu(input: torch.Tensor) -> torch.Tensor:
    """ReLU that keeps 1 bit an entry for its backward instead of its output, so an activation that
    feeds only SWAT ops (which save it compressed) is freed after the forward."""
    return eager.relu(input)


def max_pool2d(
    input: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None,
    padding: int | Sequence[int], dilation: int | Sequence[int], ceil_mode: bool,
) -> torch.Tensor:
    """Max-pool that keeps only its indices (int32) for the backward, not its input."""
    return eager.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)


SWAT_OPS = (conv, linear)
