"""Sanity tests of the independent SWAT reference in ``tests/reference.py``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from reference import (
    ALGORITHM_SITES,
    GRANULARITIES,
    keep_count,
    ref_layer,
    ref_mask,
)
from torch import Tensor

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")

CONV_FN = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}


def _rand(*shape: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _autograd(
    kind: str, x: Tensor, w: Tensor, b: Tensor | None, g: Tensor, **kw: object
) -> dict[str, Tensor | None]:
    """Dense y / dx / dw / db by plain torch autograd."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    bb = None if b is None else b.detach().clone().requires_grad_(True)
    y = F.linear(x, w, bb) if kind == "linear" else CONV_FN[kind](x, w, bb, **kw)
    y.backward(g)
    return {"y": y.detach(), "dx": x.grad, "dw": w.grad, "db": None if bb is None else bb.grad}


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == {"y", "dx", "dw", "db"}
    for key in ("y", "dx", "dw", "db"):
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert got[key].shape == want[key].shape, key
            torch.testing.assert_close(got[key], want[key], msg=key)


# (kind, x shape, w shape, conv kwargs)
CONV_CASES = [
    ("conv1d", (2, 4, 11), (6, 4, 3), {}),
    ("conv1d", (2, 4, 11), (6, 2, 3), dict(stride=2, padding=1, dilation=2, groups=2)),
    ("conv1d", (2, 4, 10), (6, 4, 4), dict(padding="same")),
    ("conv1d", (2, 4, 10), (6, 4, 3), dict(padding="same", dilation=3)),
    ("conv1d", (2, 4, 10), (6, 4, 3), dict(padding="valid")),
    ("conv2d", (2, 3, 8, 7), (5, 3, 3, 3), dict(padding=1)),
    ("conv2d", (2, 4, 9, 8), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), groups=2)),
    ("conv2d", (2, 4, 9, 8), (4, 1, 3, 3), dict(dilation=(2, 1), groups=4)),
    ("conv2d", (2, 3, 7, 6), (5, 3, 2, 4), dict(padding="same")),
    ("conv2d", (2, 3, 7, 6), (5, 3, 3, 5), dict(padding="same")),
    ("conv2d", (2, 3, 9, 8), (5, 3, 2, 3), dict(padding="same", dilation=(1, 2))),
    ("conv2d", (2, 3, 5, 5), (4, 3, 1, 1), {}),
    ("conv3d", (2, 2, 5, 6, 4), (3, 2, 3, 2, 3), dict(padding=(1, 0, 1), stride=(1, 2, 1))),
    ("conv3d", (1, 4, 5, 6, 5), (4, 2, 2, 3, 2), dict(padding="same", groups=2)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[3]}")
@pytest.mark.parametrize("sites", [frozenset(), "dense"])
def test_dense_conv_matches_autograd(case: tuple, bias: bool, sites: object) -> None:
    kind, xs, ws, kw = case
    x, w = _rand(*xs, seed=1), _rand(*ws, seed=2)
    b = _rand(ws[0], seed=3) if bias else None
    y = CONV_FN[kind](x, w, b, **kw)
    g = _rand(*y.shape, seed=4)
    got = ref_layer(kind, x, w, b, g, sites, 0.3, "nchw", **kw)
    _assert_same(got, _autograd(kind, x, w, b, g, **kw))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xs", [(5, 7), (2, 3, 7), (2, 2, 3, 7)])
def test_dense_linear_matches_autograd(xs: tuple, bias: bool) -> None:
    x, w = _rand(*xs, seed=1), _rand(6, 7, seed=2)
    b = _rand(6, seed=3) if bias else None
    g = _rand(*xs[:-1], 6, seed=4)
    got = ref_layer("linear", x, w, b, g, set(), 0.5, "chw")
    _assert_same(got, _autograd("linear", x, w, b, g))


def test_keep_count() -> None:
    assert keep_count(1 - 0.7, 10) == 3  # 3.0000000000000004 must not become 4
    assert keep_count(0.7, 10) == 7
    assert keep_count(0.1, 30) == 3
    assert keep_count(0.25, 9) == 3  # ceil(2.25)
    assert keep_count(0.01, 10) == 1  # at least one
    assert keep_count(1.0, 17) == 17
    assert keep_count(0.5, 1) == 1


def test_algorithm_sites() -> None:
    assert ALGORITHM_SITES["swat"] == {"fw_w", "bw_w", "bw_a"}
    assert ALGORITHM_SITES["saw"] == {"bw_w", "bw_a"}
    assert ALGORITHM_SITES["meprop"] == {"bw_g"}
    assert ALGORITHM_SITES["dense"] == set()


# (tensor shape, role, layer)
MASK_CASES = [
    ((6, 4, 3, 3), "weight", "conv"),
    ((6, 2, 5), "weight", "conv"),
    ((4, 3, 2, 3, 2), "weight", "conv"),
    ((6, 4, 1, 1), "weight", "conv"),
    ((5, 9), "weight", "linear"),
    ((3, 4, 5, 6), "input", "conv"),
    ((3, 4, 7), "input", "conv"),
    ((2, 3, 3, 4, 2), "input", "conv"),
    ((6, 9), "input", "linear"),
    ((3, 4, 9), "input", "linear"),
    ((3, 4, 5, 6), "grad", "conv"),
    ((3, 4, 9), "grad", "linear"),
]
MASK_IDS = [f"{r}-{lay}-{'x'.join(map(str, s))}" for s, r, lay in MASK_CASES]


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("case", MASK_CASES, ids=MASK_IDS)
def test_density_one_keeps_all(case: tuple, granularity: str) -> None:
    shape, role, layer = case
    t = _rand(*shape)
    m = ref_mask(t, 1.0, granularity, role, layer)
    assert m.dtype == torch.bool and m.shape == t.shape and bool(m.all())


def _expected_groups(shape: tuple, granularity: str, role: str, layer: str) -> list[tuple]:
    """Index tuples of the unstructured groups, enumerated independently."""
    if role == "grad":
        return [(n,) for n in range(shape[0])]
    if granularity == "nchw" or (role, layer, granularity) == ("weight", "linear", "kernel"):
        return [()]
    if granularity == "chw":
        return [(n,) for n in range(shape[0])]
    # hw
    if role == "weight" and layer == "linear":
        return [(o,) for o in range(shape[0])]
    if layer == "conv":
        return list(itertools.product(range(shape[0]), range(shape[1])))
    return list(itertools.product(*[range(s) for s in shape[:-1]]))  # linear input rows


def _units(shape: tuple, granularity: str, role: str, layer: str) -> list[tuple]:
    """Index tuples of the structured units, enumerated independently."""
    full = slice(None)
    if role == "weight" and layer == "linear" and granularity == "kernel":
        return list(itertools.product(*[range(s) for s in shape]))
    if role == "weight":
        if granularity == "kernel":
            return list(itertools.product(range(shape[0]), range(shape[1])))
        return [(o,) for o in range(shape[0])]
    if layer == "conv":
        return [(full, c) for c in range(shape[1])]
    return [(Ellipsis, f) for f in range(shape[-1])]


def _structured_case(granularity: str, role: str) -> bool:
    return role != "grad" and granularity in ("kernel", "filter")


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.77])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("case", MASK_CASES, ids=MASK_IDS)
def test_keeps_exactly_k(case: tuple, granularity: str, density: float) -> None:
    shape, role, layer = case
    t = _rand(*shape, seed=7)
    m = ref_mask(t, density, granularity, role, layer)
    assert m.dtype == torch.bool and m.shape == t.shape

    if not _structured_case(granularity, role) or (role, layer, granularity) == (
        "weight",
        "linear",
        "kernel",
    ):
        groups = _expected_groups(shape, granularity, role, layer)
        covered = 0
        for idx in groups:
            vals, kept = t[idx].flatten(), m[idx].flatten()
            covered += vals.numel()
            assert int(kept.sum()) == keep_count(density, vals.numel()), idx
            if not bool(kept.all()):
                assert vals[kept].abs().min() > vals[~kept].abs().max()
        assert covered == t.numel()
        return

    units = _units(shape, granularity, role, layer)
    scores = torch.stack([t[u].abs().sum() for u in units])
    kept = torch.tensor([bool(m[u].flatten()[0]) for u in units])
    for u in units:  # every unit is all kept or all dropped
        assert bool(m[u].all()) or not bool(m[u].any()), u
    assert int(kept.sum()) == keep_count(density, len(units))
    if not bool(kept.all()):
        assert scores[kept].min() > scores[~kept].max()


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("case", MASK_CASES, ids=MASK_IDS)
def test_nan_is_kept(case: tuple, granularity: str) -> None:
    shape, role, layer = case
    t = _rand(*shape, seed=3)
    where = tuple(s // 2 for s in shape)
    t[where] = math.nan
    t[(0,) * len(shape)] = 1e6  # a huge value elsewhere must not beat NaN
    m = ref_mask(t, 0.05, granularity, role, layer)
    assert bool(m[where])


def test_ties_keep_all_equal_to_threshold() -> None:
    t = torch.tensor([[3.0, -2.0, 2.0, 1.0]])
    m = ref_mask(t, 0.5, "nchw", "weight", "linear")  # k = 2, threshold 2
    assert m.tolist() == [[True, True, True, False]]


def test_structured_examples() -> None:
    w = torch.zeros(3, 2, 2, 2)
    w[1] = 1.0  # filter 1 largest
    w[2, 0] = 3.0  # kernel (2, 0) largest
    # L1 of filters: 0, 8, 12; density 0.3 -> k = 1.
    m = ref_mask(w, 0.3, "filter", "weight", "conv")
    assert m[:, 0, 0, 0].tolist() == [False, False, True]
    m = ref_mask(w, 1 / 6, "kernel", "weight", "conv")
    assert m[:, :, 0, 0].tolist() == [[False, False], [False, False], [True, False]]

    x = torch.zeros(4, 3, 5)
    x[:, 1] = -1.0
    m = ref_mask(x, 0.3, "filter", "input", "conv")
    assert m[0, :, 0].tolist() == [False, True, False] and bool(m[:, 1].all())


def _masked(t: Tensor, d: float, gran: str, role: str, layer: str) -> Tensor:
    return t * ref_mask(t, d, gran, role, layer)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("case", CONV_CASES[:4] + CONV_CASES[8:10], ids=lambda c: c[0])
def test_sites_against_autograd(case: tuple, granularity: str) -> None:
    """Site semantics cross-checked by autograd on explicitly masked tensors."""
    kind, xs, ws, kw = case
    d = 0.4
    x, w, b = _rand(*xs, seed=1), _rand(*ws, seed=2), _rand(ws[0], seed=3)
    g = _rand(*CONV_FN[kind](x, w, b, **kw).shape, seed=4)
    x_s = _masked(x, d, granularity, "input", "conv")
    w_s = _masked(w, d, granularity, "weight", "conv")
    g_s = _masked(g, d, granularity, "grad", "conv")

    def run(sites: object) -> dict:
        return ref_layer(kind, x, w, b, g, sites, d, granularity, **kw)

    # fw_a: exactly autograd through X * mask (mask constant).
    want = _autograd(kind, x_s, w, b, g, **kw)
    want["dx"] = want["dx"] * (x_s != 0)
    _assert_same(run({"fw_a"}), want)

    # swat: y, dx as autograd with W_s; dW as autograd of op(X_s, W_s).
    got = run("swat")
    want = _autograd(kind, x, w_s, b, g, **kw)
    torch.testing.assert_close(got["y"], want["y"])
    torch.testing.assert_close(got["dx"], want["dx"])
    torch.testing.assert_close(got["db"], want["db"])
    torch.testing.assert_close(got["dw"], _autograd(kind, x_s, w_s, b, g, **kw)["dw"])

    # fw_w only: forward uses W_s, backward uses dense W and X.
    got = run({"fw_w"})
    dense = _autograd(kind, x, w, b, g, **kw)
    torch.testing.assert_close(got["y"], want["y"])
    torch.testing.assert_close(got["dx"], dense["dx"])
    torch.testing.assert_close(got["dw"], dense["dw"])

    # meprop: dense forward, all gradients from G_s.
    got = run("meprop")
    want = _autograd(kind, x, w, b, g_s, **kw)
    _assert_same(got, want)

    # density 1: every algorithm is dense.
    for algo in ALGORITHM_SITES:
        all_sites = {"fw_w", "fw_a", "bw_w", "bw_a", "bw_g"}
        for sites in (algo, all_sites):
            _assert_same(ref_layer(kind, x, w, b, g, sites, 1.0, granularity, **kw), dense)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_linear_sites(granularity: str) -> None:
    d = 0.3
    x, w, b = _rand(2, 5, 8, seed=1), _rand(6, 8, seed=2), _rand(6, seed=3)
    g = _rand(2, 5, 6, seed=4)
    x_s = _masked(x, d, granularity, "input", "linear")
    w_s = _masked(w, d, granularity, "weight", "linear")
    got = ref_layer("linear", x, w, b, g, {"bw_w", "bw_a"}, d, granularity)
    dense = _autograd("linear", x, w, b, g)
    torch.testing.assert_close(got["y"], dense["y"])
    torch.testing.assert_close(got["dx"], _autograd("linear", x, w_s, b, g)["dx"])
    torch.testing.assert_close(got["dw"], _autograd("linear", x_s, w, b, g)["dw"])
    torch.testing.assert_close(got["db"], dense["db"])
