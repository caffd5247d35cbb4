"""The ops of a SWAT graph: `conv` and `linear` with separately sparsified operands (SPEC §2).

The neutral passes insert calls to these functions and every backend recognises them: they state
*what* each product computes, not how its operands are stored. Executed as they are (the neutral
graph run in PyTorch) they take zero-filled operands and run the eager backend's masked kernel;
the eager lowering replaces them by its own kernels and storage formats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
) -> torch.Tensor:
    """N-d convolution: Y = conv(input, weight_fwd), dX = conv_x(G, weight_bwd), dW = conv_w(input_bwd, G).

    The gradient is returned for the dense `weight`; `None` operands mean the dense tensor.
    """
    from swat_fx.backends.eager.kernels import conv_swat  # the graph's meaning, run; passes never load it

    return conv_swat(
        input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
        weight_fwd=weight_fwd, weight_bwd=weight_bwd, input_bwd=input_bwd,
    )


def linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    weight_fwd: torch.Tensor | None = None,
    weight_bwd: torch.Tensor | None = None,
    input_bwd: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear on [..., F]: Y = input @ weight_fwd.T + b, dX = G @ weight_bwd, dW = G^T @ input_bwd."""
    from swat_fx.backends.eager.kernels import linear_swat

    return linear_swat(input, weight, bias, weight_fwd=weight_fwd, weight_bwd=weight_bwd, input_bwd=input_bwd)


SWAT_OPS = (conv, linear)
SPARSE_OPERANDS = ("weight_fwd", "weight_bwd", "input_bwd")
"""The keywords of a SWAT op that take a sparsified operand (None: the dense tensor)."""
