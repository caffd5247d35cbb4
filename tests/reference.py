"""Independent, plain reference of Sparse Weight Activation Training (SWAT).

Written from the specification only (nothing from ``swat_fx`` is used), for
clarity rather than speed. Everything is computed explicitly: no autograd.

Per layer with weight W, input X and upstream gradient G, density d = 1 - s::

    W_s = W * mask(W)   X_s = X * mask(X)   G_s = G * mask_grad(G)
    G'  = G_s if bw_g else G
    Y   = op(X_s if fw_a else X, W_s if fw_w else W) + b
    dX  = op_x(G', W_s if bw_w else W)      (then * mask(X) if fw_a)
    dW  = op_w(X_s if (bw_a or fw_a) else X, G')
    db  = sum of G' over every dim but the channel / feature dim

``mask`` keeps, per group, the entries whose magnitude is at least the k-th
largest magnitude of the group, k = ``keep_count(d, n)``; NaN counts as +inf.
Structured granularities ("kernel", "filter") rank whole units by L1 norm.

Padding ``"same"`` (stride 1 only) is fully supported, including the
asymmetric case of even kernels: the extra pad goes on the right, as in
PyTorch. Asymmetric cases pad X explicitly with ``F.pad`` and crop dX back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SITES: frozenset[str] = frozenset({"fw_w", "fw_a", "bw_w", "bw_a", "bw_g"})

ALGORITHM_SITES: dict[str, frozenset[str]] = {
    "swat": frozenset({"fw_w", "bw_w", "bw_a"}),
    "saw": frozenset({"bw_w", "bw_a"}),
    "meprop": frozenset({"bw_g"}),
    "dense": frozenset(),
}

GRANULARITIES: tuple[str, ...] = ("nchw", "chw", "hw", "kernel", "filter")
STRUCTURED: frozenset[str] = frozenset({"kernel", "filter"})
ROLES: tuple[str, ...] = ("weight", "input", "grad")
LAYERS: tuple[str, ...] = ("conv", "linear")


# --------------------------------------------------------------------------
# Top-K masks
# --------------------------------------------------------------------------


def keep_count(density: float, n: int) -> int:
    """Number kept out of ``n``: ceil(density * n), clamped to [1, n].

    The product is rounded to 6 decimals first so that float error
    (e.g. (1 - 0.7) * 10 = 3.0000000000000004) does not bump the ceiling.
    """
    if n <= 0:
        return 0
    k = math.ceil(round(density * n, 6))
    return min(n, max(1, k))


def _magnitude(t: Tensor) -> Tensor:
    """|t| in float64, with NaN mapped to +inf (NaN is always kept)."""
    mag = t.detach().to(torch.float64).abs()
    return torch.where(torch.isnan(mag), torch.full_like(mag, math.inf), mag)


def _topk_rows(scores: Tensor, density: float) -> Tensor:
    """Top-K mask of each row of a 2-D score tensor [groups, n].

    NaN scores count as +inf. The threshold of a row is its k-th largest
    score; every entry with score >= threshold is kept (ties may keep more).
    """
    scores = _magnitude(scores)  # scores are >= 0 already; this maps NaN
    n = scores.shape[1]
    k = keep_count(density, n)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    ordered, _ = torch.sort(scores, dim=1, descending=True)
    threshold = ordered[:, k - 1 : k]  # k-th largest, shape [groups, 1]
    return scores >= threshold


def _unstructured(t: Tensor, num_groups: int, density: float) -> Tensor:
    """Mask ranking |t| within ``num_groups`` contiguous groups of equal size."""
    mag = _magnitude(t).reshape(num_groups, -1)
    return _topk_rows(mag, density).reshape(t.shape)


def _structured(t: Tensor, unit_dims: int, density: float) -> Tensor:
    """Mask of whole units: the leading ``unit_dims`` dims index the units.

    Score of a unit = L1 norm of its entries (NaN propagates -> kept).
    """
    unit_shape = t.shape[:unit_dims]
    scores = _magnitude(t).reshape(math.prod(unit_shape), -1).sum(dim=1)
    keep = _topk_rows(scores.reshape(1, -1), density).reshape(unit_shape)
    view = tuple(unit_shape) + (1,) * (t.dim() - unit_dims)
    return keep.reshape(view).expand(t.shape).clone()


def _structured_on_dim(t: Tensor, dim: int, density: float) -> Tensor:
    """Mask of whole slices along ``dim`` (channels / features), by L1 norm."""
    moved = t.movedim(dim, 0)
    return _structured(moved, 1, density).movedim(0, dim).contiguous()


def ref_mask(t: Tensor, density: float, granularity: str, role: str, layer: str) -> Tensor:
    """Boolean Top-K mask of ``t``'s shape.

    role: "weight", "input" or "grad"; layer: "conv" or "linear".
    Groups (unstructured) / units (structured) follow the SWAT spec:

    * weight, conv [O, I/g, k...]: nchw whole, chw each W[o], hw each W[o, i];
      kernel = (o, i) kernels, filter = W[o], both by L1.
    * weight, linear [O, I]: nchw whole, chw and hw each row; kernel = single
      elements (= unstructured over the whole tensor); filter = rows by L1.
      A batched linear weight [B, O, I] (bmm) is B weights stacked: the same
      rules on its B*O rows.
    * input, conv [N, C, ...]: nchw whole, chw each X[n], hw each X[n, c];
      kernel / filter = channels by L1 over all other dims.
    * input, linear [..., F]: nchw whole, chw each X[n] (dim 0), hw each
      vector along the last dim; kernel / filter = features by L1.
    * grad: always each G[n] (dim 0) unstructured, whatever the granularity.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density >= 1.0 or t.numel() == 0:
        return torch.ones(t.shape, dtype=torch.bool, device=t.device)

    if role == "grad":
        return _unstructured(t, t.shape[0], density)

    if role == "weight" and layer == "conv":
        if t.dim() < 3:
            raise ValueError("conv weight must be [O, I/g, k...]")
        out_c, in_c = t.shape[0], t.shape[1]
        if granularity == "nchw":
            return _unstructured(t, 1, density)
        if granularity == "chw":
            return _unstructured(t, out_c, density)
        if granularity == "hw":
            return _unstructured(t, out_c * in_c, density)
        if granularity == "kernel":
            return _structured(t, 2, density)
        return _structured(t, 1, density)  # filter

    if role == "weight" and t.dim() == 3:  # batched linear [B, O, I]: its B*O rows
        rows = t.reshape(-1, t.shape[-1])
        return ref_mask(rows, density, granularity, role, layer).reshape(t.shape)

    if role == "weight":  # linear [O, I]
        if t.dim() != 2:
            raise ValueError("linear weight must be [O, I] (or [B, O, I] batched)")
        if granularity == "nchw" or granularity == "kernel":
            return _unstructured(t, 1, density)
        if granularity in ("chw", "hw"):
            return _unstructured(t, t.shape[0], density)
        return _structured(t, 1, density)  # filter: rows

    if layer == "conv":  # input [N, C, spatial...]
        if t.dim() < 3:
            raise ValueError("conv input must be [N, C, spatial...]")
        if granularity == "nchw":
            return _unstructured(t, 1, density)
        if granularity == "chw":
            return _unstructured(t, t.shape[0], density)
        if granularity == "hw":
            return _unstructured(t, t.shape[0] * t.shape[1], density)
        return _structured_on_dim(t, 1, density)  # kernel / filter: channels

    # input, linear [..., F]
    if t.dim() < 2:
        raise ValueError("linear input must have at least 2 dims")
    if granularity == "nchw":
        return _unstructured(t, 1, density)
    if granularity == "chw":
        return _unstructured(t, t.shape[0], density)
    if granularity == "hw":
        return _unstructured(t, t.numel() // t.shape[-1], density)
    return _structured_on_dim(t, t.dim() - 1, density)  # features


# --------------------------------------------------------------------------
# Layer
# --------------------------------------------------------------------------

_CONV_FWD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_INPUT = {
    1: torch.nn.grad.conv1d_input,
    2: torch.nn.grad.conv2d_input,
    3: torch.nn.grad.conv3d_input,
}
_CONV_WEIGHT = {
    1: torch.nn.grad.conv1d_weight,
    2: torch.nn.grad.conv2d_weight,
    3: torch.nn.grad.conv3d_weight,
}
_KIND_DIMS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


def _tuple(v: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """Expand an int (or 1-tuple) to ``dims`` ints."""
    if isinstance(v, int):
        return (v,) * dims
    v = tuple(int(i) for i in v)
    if len(v) == 1:
        return v * dims
    if len(v) != dims:
        raise ValueError(f"expected {dims} values, got {v}")
    return v


def _pad_pairs(
    padding: str | int | Sequence[int],
    kernel: Sequence[int],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> list[tuple[int, int]]:
    """(left, right) padding per spatial dim; "same" puts the extra on the right."""
    dims = len(kernel)
    if padding == "valid":
        return [(0, 0)] * dims
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError('padding="same" needs stride 1')
        pairs = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            left = total // 2
            pairs.append((left, total - left))
        return pairs
    if isinstance(padding, str):
        raise ValueError(f"unknown padding {padding!r}")
    return [(p, p) for p in _tuple(padding, dims)]


def _resolve_sites(sites: Iterable[str] | str) -> frozenset[str]:
    """A set of site names, or an algorithm name from ``ALGORITHM_SITES``."""
    if isinstance(sites, str):
        return ALGORITHM_SITES[sites]
    out = frozenset(sites)
    unknown = out - SITES
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)}")
    return out


def ref_layer(
    kind: str,
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    g: Tensor,
    sites: Iterable[str] | str,
    density: float,
    granularity: str,
    compute_dtype: torch.dtype | None = None,
    **conv_kwargs: object,
) -> dict[str, Tensor | None]:
    """Forward output and gradients of one SWAT layer, computed explicitly.

    ``compute_dtype`` (mixed precision): the masks are taken on the tensors as given, then every
    product reads its operands rounded to this dtype, accumulates in float32 (as bfloat16/float16
    kernels do) and rounds its result to it; dW / db are returned in W's dtype.

    kind: "conv1d", "conv2d", "conv3d", "linear" or "bmm" (x [B, N, I], w [B, O, I]:
    B linear products, y[b] = x[b] w[b]^T, no bias). ``g`` is dL/dY (Y's
    shape). ``sites`` is a subset of {"fw_w", "fw_a", "bw_w", "bw_a",
    "bw_g"} or an algorithm name. conv_kwargs: stride, padding (int, tuple,
    "same" or "valid"), dilation, groups. Returns {"y", "dx", "dw", "db"};
    "db" is None when ``b`` is None. dW is the gradient of the dense W.
    """
    on = _resolve_sites(sites)
    layer = "linear" if kind in ("linear", "bmm") else "conv"
    if layer == "conv" and kind not in _KIND_DIMS:
        raise ValueError(f"unknown kind {kind!r}")

    with torch.no_grad():
        x_mask = ref_mask(x, density, granularity, "input", layer)
        x_s = x * x_mask
        w_s = w * ref_mask(w, density, granularity, "weight", layer)
        g_used = g * ref_mask(g, density, granularity, "grad", layer) if "bw_g" in on else g

        x_fwd = x_s if "fw_a" in on else x
        w_fwd = w_s if "fw_w" in on else w
        w_bwd = w_s if "bw_w" in on else w
        x_bwd = x_s if ("bw_a" in on or "fw_a" in on) else x
        param_dtype = w.dtype
        if compute_dtype is not None:
            def rounded(t: Tensor) -> Tensor:
                return t.to(compute_dtype).float()

            x_fwd, w_fwd, w_bwd, x_bwd, g_used = (rounded(t) for t in (x_fwd, w_fwd, w_bwd, x_bwd, g_used))
            b = None if b is None else rounded(b)

        if layer == "linear":
            if conv_kwargs:
                raise ValueError(f"linear takes no conv kwargs: {sorted(conv_kwargs)}")
            y, dx, dw, db = (_linear if kind == "linear" else _bmm)(x_fwd, w_fwd, w_bwd, x_bwd, g_used, b)
        else:
            y, dx, dw, db = _conv(_KIND_DIMS[kind], x_fwd, w_fwd, w_bwd, x_bwd, g_used, b, **conv_kwargs)

        if "fw_a" in on:
            dx = dx * x_mask
        if compute_dtype is not None:
            y, dx, dw = y.to(compute_dtype), dx.to(compute_dtype), dw.to(compute_dtype)
            db = None if db is None else db.to(compute_dtype)
        dw = dw.to(param_dtype)
        db = None if db is None else db.to(param_dtype)
    return {"y": y, "dx": dx, "dw": dw, "db": db}


def _linear(
    x_fwd: Tensor, w_fwd: Tensor, w_bwd: Tensor, x_bwd: Tensor, g: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Y = X W^T + b, dX = G W, dW = G^T X (flattened leading dims), db = sum G."""
    out_f, in_f = w_fwd.shape
    y = x_fwd @ w_fwd.T
    if b is not None:
        y = y + b
    dx = g @ w_bwd
    g2 = g.reshape(-1, out_f)
    dw = g2.T @ x_bwd.reshape(-1, in_f)
    db = g2.sum(dim=0) if b is not None else None
    return y, dx, dw, db


def _bmm(
    x_fwd: Tensor, w_fwd: Tensor, w_bwd: Tensor, x_bwd: Tensor, g: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, None]:
    """One linear product per batch index b: Y[b] = X[b] W[b]^T, dX[b] = G[b] W[b], dW[b] = G[b]^T X[b]."""
    if b is not None:
        raise ValueError("bmm takes no bias")
    if x_fwd.dim() != 3 or w_fwd.dim() != 3 or x_fwd.shape[0] != w_fwd.shape[0]:
        raise ValueError(f"bmm needs x [B, N, I] and w [B, O, I], got {tuple(x_fwd.shape)}, {tuple(w_fwd.shape)}")
    y = torch.stack([x_fwd[i] @ w_fwd[i].T for i in range(x_fwd.shape[0])])
    dx = torch.stack([g[i] @ w_bwd[i] for i in range(g.shape[0])])
    dw = torch.stack([g[i].T @ x_bwd[i] for i in range(g.shape[0])])
    return y, dx, dw, None


def _conv(
    dims: int,
    x_fwd: Tensor,
    w_fwd: Tensor,
    w_bwd: Tensor,
    x_bwd: Tensor,
    g: Tensor,
    b: Tensor | None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Convolution forward plus dX / dW / db via ``torch.nn.grad``."""
    stride_t = _tuple(stride, dims)
    dilation_t = _tuple(dilation, dims)
    pairs = _pad_pairs(padding, w_fwd.shape[2:], stride_t, dilation_t)

    if all(left == right for left, right in pairs):
        pad_int = tuple(left for left, _ in pairs)
        explicit = None
    else:
        # F.pad lists the last dim first: (left_last, right_last, left_prev, ...).
        explicit = [p for pair in reversed(pairs) for p in pair]
        pad_int = (0,) * dims
        x_fwd = F.pad(x_fwd, explicit)
        x_bwd = F.pad(x_bwd, explicit)

    y = _CONV_FWD[dims](x_fwd, w_fwd, b, stride_t, pad_int, dilation_t, groups)
    dx = _CONV_INPUT[dims](x_fwd.shape, w_bwd, g, stride_t, pad_int, dilation_t, groups)
    dw = _CONV_WEIGHT[dims](x_bwd, w_fwd.shape, g, stride_t, pad_int, dilation_t, groups)

    if explicit is not None:  # crop the padded border off dX
        dx = dx[tuple(_crop_slices(pairs, dx.shape))]

    db = g.sum(dim=[d for d in range(g.dim()) if d != 1]) if b is not None else None
    return y, dx, dw, db


def _crop_slices(pairs: list[tuple[int, int]], padded_shape: torch.Size) -> list[slice]:
    """Slices that undo an explicit (left, right) pad on the spatial dims."""
    index = [slice(None), slice(None)]
    for (left, right), size in zip(pairs, padded_shape[2:], strict=True):
        index.append(slice(left, size - right))
    return index
