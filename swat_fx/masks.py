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
    if role == "weight":
        rows = _dims(1, ndim)
        if granularity == "nchw":
            return MaskLayout((), everything, ())
        if granularity == "chw" or (granularity == "hw" and layer == "linear"):
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


_SAMPLE = 16384  # entries per group sampled to bracket the threshold
_SAMPLE_SIGMAS = 5.0  # bracket half-width, in standard deviations of the sampled rank


def _kth_largest_by_bracketing(groups: torch.Tensor, k: int) -> torch.Tensor | None:
    """Exact k-th largest of each row of a large [G, n] tensor, in a few linear passes.

    A strided sample brackets the threshold between two sample order statistics; counting the
    entries above the bracket tells which rank to select among the few entries inside it. Returns
    None when a bracket misses (the caller then selects over the whole row), so the result is
    always exact.
    """
    rows, n = groups.shape
    sample = groups[:, :: n // _SAMPLE][:, :_SAMPLE].sort(dim=1, descending=True).values
    m = sample.shape[1]
    margin = _SAMPLE_SIGMAS * math.sqrt(m * (k / n) * (1 - k / n)) + 2
    upper = sample[:, max(0, int(m * k / n - margin)), None]
    lower = sample[:, min(m - 1, math.ceil(m * k / n + margin)), None]
    above = torch.count_nonzero(groups > upper, dim=1)
    in_band = (groups >= lower) & (groups <= upper)
    band_sizes = torch.count_nonzero(in_band, dim=1)
    rank = k - above  # rank of the threshold among the band entries, largest first
    if not bool(((rank >= 1) & (rank <= band_sizes)).all()):
        return None
    result = torch.empty(rows, dtype=groups.dtype, device=groups.device)
    for row in range(rows):
        if bool(lower[row] == upper[row]):  # ties: the band is a single value
            result[row] = lower[row, 0]
            continue
        band = groups[row][in_band[row]]
        result[row] = band.kthvalue(int(band_sizes[row]) - int(rank[row]) + 1).values
    return result


def kth_largest(groups: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row of [G, n], by selection (never a full sort)."""
    n = groups.shape[1]
    if n >= 8 * _SAMPLE and groups.shape[0] <= 256:
        result = _kth_largest_by_bracketing(groups, k)
        if result is not None:
            return result
    return groups.kthvalue(n - k + 1, dim=1).values


def group_thresholds(s: torch.Tensor, group_dims: tuple[int, ...], density: float) -> torch.Tensor:
    """The k-th largest score of each group, with group dims kept as 1 (NaN ranks as +inf)."""
    kept = [d for d in range(s.dim()) if d not in group_dims]
    groups = s.permute(*kept, *group_dims).reshape(math.prod(s.shape[d] for d in kept), -1)
    groups = torch.nan_to_num(groups, nan=math.inf)
    tau = kth_largest(groups, keep_count(density, groups.shape[1]))
    return tau.reshape([1 if d in group_dims else s.shape[d] for d in range(s.dim())])


def topk_mask(t: torch.Tensor, density: float, layout: MaskLayout) -> torch.Tensor:
    """The exact Top-K mask of `t` (bool, broadcastable to `t`): |v| >= the group's k-th largest."""
    s = scores(t, layout)
    return keep_mask(s, group_thresholds(s, layout.group_dims, density))


def apply_mask(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`t` with the entries outside `keep` set to zero (`where`, so an inf outside stays no NaN)."""
    return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))


def apply_threshold(t: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """`t` with |v| < tau set to zero, for one scalar threshold: a single fused pass (hardshrink keeps
    |v| > λ, and λ is the float just below tau, so |v| >= tau is kept; NaN passes through)."""
    below = torch.nextafter(tau.reshape(()), torch.tensor(-math.inf, dtype=tau.dtype, device=tau.device))
    return torch.nn.functional.hardshrink(t, float(below))
