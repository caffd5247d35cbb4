"""FLOP counting conventions of the IR, one constant or function per op (README, "Counting conventions").

A FLOP is one add, multiply, compare or exp on one tensor element; a multiply-accumulate (MAC) is
2 FLOPs, so that the count matches what `torch.utils.flop_counter` and hardware peak rates use.
Work on per-channel or per-row scalars (BN's statistics after the reduction, 1/N) is O(C), not counted.
"""

from __future__ import annotations

import math

MAC_FLOPS = 2
NORM_FWD = 5
"""Training-mode normalisation, per input element: Σx (1) and Σx² (2), then y = x·a + b (2)."""
NORM_BWD_INPUT = 4
"""dx = g·k1 + x·k2 + k3 with per-channel k (built from dγ, dβ): two multiply-adds per element."""
NORM_BWD_WEIGHT = 5
"""x̂ = x·r + c (2), Σ g·x̂ (2), Σ g (1) per element: dγ and dβ."""
ELEMENTWISE = 1
"""ReLU, other activations, dropout, any op without a rule: one FLOP per element, forward and backward."""
LOSS_FWD = 4
"""Softmax cross-entropy per logit: x − max, exp, Σ, ÷Σ."""
LOSS_BWD = 2
"""(p − onehot) · 1/N per logit."""
UPDATE = 6
"""SGD with momentum and weight decay per parameter: g + λw, v = μv + g, w − ηv (a multiply-add each)."""
TOPK_SELECT = 2 + 2 * math.log(2)
"""Comparisons per score of an exact Top-K threshold by selection (quickselect's expected worst case,
at the median; Knuth): paid at refresh steps only, so 1/period of it per step."""


def gemm_macs(output_numel: int, weight_shape: tuple[int, ...], linear: bool) -> int:
    """Conv [O, C/g, k...] or linear [..., O, F] weight (leading dims: a batched product): each output
    entry is a dot product of length C/g·Πk (or F). Stride, padding and dilation enter only through the
    output shape; MACs against padding zeros are counted, as everyone does."""
    return output_numel * (weight_shape[-1] if linear else math.prod(weight_shape[1:]))


def add_flops(output_numel: int, operands: int) -> int:
    """n operands need n − 1 adds per output element (x + 1 with a scalar: one)."""
    return max(1, operands - 1) * output_numel


def max_pool_flops(output_numel: int, window: float) -> float:
    """window − 1 comparisons per output; the backward routes each gradient to its argmax (1 add)."""
    return output_numel * (window - 1)


def avg_pool_flops(output_numel: int, window: float) -> float:
    """window − 1 adds and one multiply by 1/window per output; the backward spreads g/window back
    over the window (window FLOPs per output)."""
    return output_numel * window


def topk_flops(numel: int, scores: int, structured: bool, period: int) -> float:
    """|v| per element (plus its sum into a unit score when structured), a compare with the threshold
    per score every step, and the exact selection per score once every `period` steps."""
    per_element = 2 if structured else 1
    return numel * per_element + scores * (1 + TOPK_SELECT / period)
