"""ONNX subgraphs computing `T_s = T ⊙ mask(T)` with exactly the grouping of `swat_fx.masks` (SPEC §3).

The grouping comes from `mask_layout`, the same function the eager backend uses, so both backends
agree on what a group is. For every supported layout the Top-K groups are trailing dims, so one
`Flatten(axis=first group dim)` turns the (scored) tensor into `[groups, n]`; ONNX `TopK` then gives
the k largest per row, the last of which is the threshold τ:

    s    = |T|  (summed over the unit dims for structured masks), NaN -> +inf so it is always kept
    τ    = TopK(Flatten(s), k)[..., -1]          k = ceil(d·n), at least 1
    T_s  = Where(s >= τ, T, 0)                   (ties at τ kept; `Where`, so no inf·0 = NaN)

`k` is a constant when the group size is static, else computed from the runtime shape (a dynamic
batch inside an `nchw` group) with the same rounding as `keep_count`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from onnx import TensorProto

from swat_fx.backends.ort.builder import NodeBuilder
from swat_fx.backends.ort.graph import TensorInfo
from swat_fx.masks import keep_count, mask_layout

SUPPORTED_GRANULARITIES: tuple[str, ...] = ("nchw", "chw", "hw", "filter")
_INT64_MAX = np.iinfo(np.int64).max


def check_granularity(granularity: str) -> None:
    """Raise if the ORT backend cannot build the masks of `granularity`."""
    if granularity not in SUPPORTED_GRANULARITIES:
        raise ValueError(
            f"granularity {granularity!r} is not supported by the ONNX / ORT backend; "
            f"supported granularities: {', '.join(map(repr, SUPPORTED_GRANULARITIES))}"
        )


def _scores(b: NodeBuilder, tensor: str, score_dims: tuple[int, ...], dtype: np.dtype) -> str:
    """|T| (L1 over `score_dims` for structured units), with NaN as +inf as in `masks.scores`."""
    magnitude = b.one("Abs", tensor)
    if score_dims:
        magnitude = b.one("ReduceSum", magnitude, b.const(score_dims), keepdims=1)
    return b.one("Where", b.one("IsNaN", magnitude), b.const(np.inf, dtype), magnitude)


def _runtime_keep_count(b: NodeBuilder, groups: str, density: float) -> str:
    """k = clamp(ceil(round(d·n, 6)), 1, n) for the row length n of `groups`, as `keep_count` does."""
    n = b.one("Shape", groups, start=1, end=2)
    exact = b.one("Mul", b.one("Cast", n, to=TensorProto.DOUBLE), b.const([density], np.float64))
    scale = b.const([1e6], np.float64)
    rounded = b.one("Div", b.one("Round", b.one("Mul", exact, scale)), scale)
    k = b.one("Cast", b.one("Ceil", rounded), to=TensorProto.INT64)
    return b.one("Max", b.one("Min", k, n), b.const([1]))


def _keep_count(b: NodeBuilder, groups: str, group_shape: Sequence[int | None], density: float) -> str:
    if all(d is not None for d in group_shape):
        return b.const([keep_count(density, math.prod(group_shape))])
    return _runtime_keep_count(b, groups, density)


def sparsify(
    b: NodeBuilder, tensor: str, info: TensorInfo, role: str, layer: str, granularity: str, density: float
) -> str:
    """Add the nodes computing the Top-K-sparsified `tensor`; return the name of the result.

    `info` gives the tensor's dtype and shape (None for dynamic dims), `role` is "weight", "input" or
    "grad", `layer` "conv" or "linear", and the weight of a linear layer must be given as [out, in].
    """
    shape = info.shape
    check_granularity(granularity)
    rank = len(shape)
    layout = mask_layout(role, layer, granularity, rank)
    start = layout.group_dims[0]
    if layout.group_dims != tuple(range(start, rank)):
        raise NotImplementedError(f"Top-K groups over non-trailing dims {layout.group_dims} have no ONNX lowering")
    scores = _scores(b, tensor, layout.score_dims, info.dtype)
    score_shape = [1 if d in layout.score_dims else n for d, n in enumerate(shape)]
    groups = b.one("Flatten", scores, axis=start)
    k = _keep_count(b, groups, score_shape[start:], density)
    values, _ = b.op("TopK", [groups, k], 2, axis=1, largest=1, sorted=1)
    tau = b.one("Slice", values, b.const([-1]), b.const([_INT64_MAX]), b.const([1]))
    broadcast = b.one("Concat", b.one("Shape", scores, start=0, end=start), b.const([1] * (rank - start)), axis=0)
    keep = b.one("GreaterOrEqual", scores, b.one("Reshape", tau, broadcast))
    return b.one("Where", keep, tensor, b.const(0, info.dtype))
