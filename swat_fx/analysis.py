"""Why Top-K is safe in high dimension (Fig. 9): the *sparsification angle* between a tensor and its Top-K.

Keeping the largest-magnitude k entries of a vector `v` gives `v_s` whose kept and dropped parts are
orthogonal, so the angle is `atan2(|dropped|, |kept|)`. For a 1000-dimensional random vector a small
Top-K fraction already keeps the angle far below the ~90° between two independent random vectors:
the direction, and hence the update, is nearly preserved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from swat_fx.masks import MaskLayout, keep_count, topk_mask


def angle_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle in degrees between two tensors seen as flat vectors (NaN if either is zero).

    Kahan's formula `2·atan2(|â − b̂|, |â + b̂|)` in float64: exact for parallel and orthogonal vectors
    and accurate near 0°, where `acos` of a dot product loses half its digits.
    """
    a = a.detach().flatten().double()
    b = b.detach().flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    a, b = a / na, b / nb
    return math.degrees(2.0 * math.atan2(float((a - b).norm()), float((a + b).norm())))


def sparsification_angle(t: torch.Tensor, density: float) -> float:
    """The angle (degrees) between `t` and its Top-K over the whole tensor, keeping `density` of it.

    Uses SWAT's own mask (k = ceil(density·n), ties at the threshold kept), so it is the angle a layer
    actually incurs at that density with granularity "nchw".
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    keep = topk_mask(t, density, MaskLayout((), tuple(range(t.dim())), ()))
    return angle_between(t, torch.where(keep, t, torch.zeros((), dtype=t.dtype)))


def topk_angles(x: np.ndarray) -> np.ndarray:
    """For each row of `x` [trials, dim], the sparsification angle (degrees) of keeping the top k
    entries, for every k = 1..dim: column k-1. Exactly 0 at k = dim."""
    squares = np.sort(np.square(x, dtype=np.float64), axis=1)[:, ::-1]
    kept = np.cumsum(squares, axis=1)
    dropped = np.cumsum(squares[:, ::-1], axis=1)[:, ::-1]  # sum of the entries after position k
    dropped = np.concatenate([dropped[:, 1:], np.zeros((len(x), 1))], axis=1)
    return np.degrees(np.arctan2(np.sqrt(dropped), np.sqrt(kept)))


@dataclass(frozen=True)
class AngleStudy:
    """The Fig. 9 study for random `dim`-dimensional vectors over `trials` trials.

    - `percents`, `mean_angle`, `std_angle`: angle vs Top-K percentage (Fig. 9d);
    - `distributions`: the trials' angles at a few Top-K percentages, and `random_angles` between two
      independent random vectors (Fig. 9a);
    - `deltas`, `needed_mean`, `needed_std`: the Top-K percentage needed to stay within δ degrees,
      mean and standard deviation over trials (Fig. 9b, 9c).
    """

    dim: int
    trials: int
    percents: np.ndarray
    mean_angle: np.ndarray
    std_angle: np.ndarray
    distributions: dict[float, np.ndarray]
    random_angles: np.ndarray
    deltas: np.ndarray
    needed_mean: np.ndarray
    needed_std: np.ndarray


def angle_study(
    dim: int = 1000,
    trials: int = 10_000,
    percents: Sequence[float] = (5, 10, 30, 50),
    deltas: Sequence[float] = (5, 10, 15, 20, 25, 30, 40),
    seed: int = 0,
    chunk: int = 1000,
) -> AngleStudy:
    """Sparsify `trials` standard-normal vectors of size `dim` at every Top-K percentage (in chunks, so
    memory stays at `chunk × dim`) and summarise as in Fig. 9a–d."""
    if dim < 2 or trials < 2:
        raise ValueError(f"angle_study needs dim >= 2 and trials >= 2, got {dim} and {trials}")
    for p in percents:
        if not 0 < p <= 100:
            raise ValueError(f"Top-K percentages must lie in (0, 100], got {p}")
    rng = np.random.default_rng(seed)
    grid = np.arange(1, 101, dtype=np.float64)                      # 1 %, 2 %, ..., 100 %
    columns = np.array([keep_count(p / 100.0, dim) - 1 for p in grid])
    picked = {float(p): keep_count(p / 100.0, dim) - 1 for p in percents}
    deltas_arr = np.asarray(deltas, dtype=np.float64)
    sums, squares = np.zeros(len(grid)), np.zeros(len(grid))
    chosen: dict[float, list[np.ndarray]] = {p: [] for p in picked}
    needed: list[np.ndarray] = []
    random_angles: list[np.ndarray] = []
    for start in range(0, trials, chunk):
        x = rng.standard_normal((min(chunk, trials - start), dim))
        angles = topk_angles(x)
        sums += angles[:, columns].sum(0)
        squares += np.square(angles[:, columns]).sum(0)
        for p, column in picked.items():
            chosen[p].append(angles[:, column])
        first_within = (angles[:, :, None] <= deltas_arr).argmax(axis=1)  # angles fall as k grows
        needed.append(100.0 * (first_within + 1) / dim)
        random_angles.append(_pairwise_angles(x, rng.standard_normal(x.shape)))
    mean = sums / trials
    needed_all = np.concatenate(needed)
    return AngleStudy(
        dim=dim, trials=trials, percents=grid, mean_angle=mean,
        std_angle=np.sqrt(np.maximum(squares / trials - mean**2, 0.0)),
        distributions={p: np.concatenate(a) for p, a in chosen.items()},
        random_angles=np.concatenate(random_angles), deltas=deltas_arr,
        needed_mean=needed_all.mean(0), needed_std=needed_all.std(0),
    )


def _pairwise_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise angles (degrees) between two independent random vectors: the "random" baseline."""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
