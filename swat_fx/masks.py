"""Top-K masks (SPEC §3): which entries of a weight, activation or gradient a SWAT layer keeps.

A mask is described by a `MaskLayout`: which dims are summed into the score of a structured unit
(a kernel, a filter, a channel), which dims of the score tensor form one Top-K group, and which dims
index the batch (averaged when a threshold is stored between refreshes, because the next batch holds
other samples). Thresholds keep their reduced dims (`keepdim`), so a mask is one broadcast compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from swat_fx import selection


@dataclass(frozen=True)
class MaskLayout:
    """How a tensor of a given rank is grouped for Top-K."""

    score_dims: tuple[int, ...]
    group_dims: tuple[int, ...]
    batch_dims: tuple[int, ...]


def keep_count(density: float, n: int) -> int:
    """k = ceil(d·n), at least 1 and at most n; rounded first so that 0.3·10 is 3, not 4."""
    return min(n, max(1, math.ceil(round(density * n, 6))))


def _dims(start: int, stop: int) -> tuple[int, ...]:
    return tuple(range(start, stop))


def mask_layout(role: str, layer: str, granularity: str, ndim: int) -> MaskLayout:
    """The grouping of SPEC §3 for a tensor of rank `ndim` playing `role` in a `layer` op."""
    everything = _dims(0, ndim)
    if role == "grad":  # meProp: always per sample
        return MaskLayout((), _dims(1, ndim), (0,))
    if role == "weight" and layer == "linear":  # [..., O, I]: each row (b, o) is one output's filter
        if granularity in ("nchw", "kernel"):
            return MaskLayout((), everything, ())
        if granularity in ("chw", "hw"):
            return MaskLayout((), (ndim - 1,), ())
        return MaskLayout((ndim - 1,), everything, ())  # filter
    if role == "weight":
        rows = _dims(1, ndim)
        if granularity == "nchw":
            return MaskLayout((), everything, ())
        if granularity == "chw":
            return MaskLayout((), rows, ())
        if granularity == "hw":
            return MaskLayout((), _dims(2, ndim), ())
        if granularity == "kernel":
            return MaskLayout(_dims(2, ndim), everything, ())
        return MaskLayout(rows, everything, ())  # filter
    # role == "input": conv activations are [N, C, ...], linear ones [..., F]
    if granularity == "nchw":
        return MaskLayout((), everything, ())
    if granularity == "chw":
        return MaskLayout((), _dims(1, ndim), (0,))
    if layer == "linear":
        if granularity == "hw":
            return MaskLayout((), (ndim - 1,), _dims(0, ndim - 1))
        return MaskLayout(_dims(0, ndim - 1), everything, ())
    if granularity == "hw":
        return MaskLayout((), _dims(2, ndim), (0,))
    return MaskLayout((0, *_dims(2, ndim)), everything, ())


def scores(t: torch.Tensor, layout: MaskLayout) -> torch.Tensor:
    """Magnitudes, or L1 scores of structured units (a unit holding a NaN scores NaN)."""
    if layout.score_dims:  # one fused pass, no |t| temporary
        return torch.linalg.vector_norm(t.detach(), 1, dim=layout.score_dims, keepdim=True)
    return t.detach().abs()


def keep_mask(s: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """`s >= tau`, written so that a NaN score compares as kept: NaN is never silently dropped."""
    return ~(s < tau)


def kth_largest_magnitude(groups: torch.Tensor, k: int, needed: torch.Tensor | None = None,
                          bracket: selection.Bracket | None = None) -> torch.Tensor:
    """The k-th largest |v| of each row of [G, n] (NaN ranks as +inf), by selection, never a sort: a
    radix select at memory speed for large CPU rows (`selection`), `torch.kthvalue` otherwise.
    `needed` (under torch.compile, a bool tensor): whether the result is used; where it is not, a
    compiled CPU step may return anything without selecting. `bracket`: the caller's last thresholds,
    a hint that the radix select may use and updates (`selection.Bracket`)."""
    n = groups.shape[1]
    if n >= selection.MIN_SIZE and torch.compiler.is_compiling() and groups.device.type == "cpu":
        fits = bracket is not None and bracket.fits(groups.shape[0])  # resized in eager steps only
        return selection.kth_largest_magnitude_op(groups.detach(), k, needed, *(
            (bracket.previous, bracket.widths) if fits else ()))
    if n >= selection.MIN_SIZE and selection.available(groups):
        return selection.kth_largest_magnitude(groups, k, bracket)
    magnitudes = torch.nan_to_num(groups.detach().abs(), nan=math.inf, posinf=math.inf)
    return magnitudes.kthvalue(n - k + 1, dim=1).values


def group_thresholds(values: torch.Tensor, group_dims: tuple[int, ...], density: float,
                     needed: torch.Tensor | None = None, bracket: selection.Bracket | None = None) -> torch.Tensor:
    """The k-th largest magnitude of each group of `values` (a tensor, or its structured scores), with
    group dims kept as 1 (NaN ranks as +inf); `needed` and `bracket` as `kth_largest_magnitude` takes them."""
    kept = [d for d in range(values.dim()) if d not in group_dims]
    groups = values.permute(*kept, *group_dims).reshape(math.prod([values.shape[d] for d in kept]), -1)
    tau = kth_largest_magnitude(groups, keep_count(density, groups.shape[1]), needed, bracket)
    return tau.reshape([1 if d in group_dims else values.shape[d] for d in range(values.dim())])


def topk_mask(t: torch.Tensor, density: float, layout: MaskLayout) -> torch.Tensor:
    """The exact Top-K mask of `t` (bool, broadcastable to `t`): |v| >= the group's k-th largest."""
    s = scores(t, layout)
    return keep_mask(s, group_thresholds(s if layout.score_dims else t, layout.group_dims, density))


def apply_mask(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`t` with the entries outside `keep` set to zero (`where`, so an inf outside stays no NaN)."""
    return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))


def apply_threshold(t: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """`t` with |v| < tau set to zero, for a threshold tensor broadcastable to `t`, without reading it on
    the host: a NaN compares as not kept but survives the product (NaN · 0 is NaN), an inf is kept.
    Outside autograd, a one-element threshold on a CPU tensor takes one fused pass."""
    if tau.numel() == 1 and not (torch.is_grad_enabled() and t.requires_grad) and selection.compiled_for(t):
        return selection.threshold_and_count(t, tau)[0]
    return t * (t.abs() >= tau)
