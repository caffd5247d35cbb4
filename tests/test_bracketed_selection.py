"""The one-pass bracketed selection (`selection.Bracket`): the threshold stays the exact k-th largest
magnitude whatever the bracket holds (SPEC §3), checked against a full sort and the independent
reference masks; the one pass runs where the last threshold is close, the radix passes elsewhere."""

from __future__ import annotations

import pickle
from unittest import mock

import numpy as np
import pytest
import torch
from reference import keep_count, ref_mask

from swat_fx import selection
from swat_fx.topk import TopK

pytestmark = pytest.mark.skipif(selection.kernels() is None, reason="needs numba")


def _sorted_kth(t: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest |v| of each row by a full sort in float64, NaN as +inf."""
    magnitudes = torch.where(t.isnan(), torch.full_like(t, float("inf")), t.abs()).double()
    return magnitudes.sort(dim=1, descending=True).values[:, k - 1].to(t.dtype)


def _data(kind: str, rows: int, n: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    t = torch.randn(rows, n, generator=generator, dtype=torch.float64)
    if kind == "relu":
        t = t.relu()
    elif kind == "few_values":  # long runs of ties at every threshold
        t = torch.randint(-4, 5, t.shape, generator=generator).double()
    elif kind == "non_finite":
        t[:, :300] = float("nan")
        t[:, 300:400] = float("-inf")
        t[:, 400:450] = float("inf")
    return t.to(dtype)


class _RadixCalls:
    """Counts the rows the radix passes select (the rows the bracket did not hold)."""

    def __init__(self) -> None:
        self.rows = 0
        self._radix = selection._radix_select

    def __call__(self, compiled: object, bits: np.ndarray, *args: object) -> np.ndarray:
        self.rows += bits.shape[0]
        return self._radix(compiled, bits, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.001, 0.2, 0.5, 0.7, 0.999])
@pytest.mark.parametrize("kind", ["normal", "relu", "few_values", "non_finite"])
def test_bracketed_selection_is_exact_over_steps(kind: str, density: float, dtype: torch.dtype) -> None:
    """Steps of slowly drifting data (the bracket holds), a jump (it misses: radix), data equal to the
    last (a hit on the threshold itself), a scale to zero and back: every threshold equals a sort's.
    Ties of a few values fill any bracket, and a zero or infinite threshold (a ReLU's at a density above
    its non-zero share, the NaNs' and infs' at the smallest density) has none: radix every step."""
    generator = torch.Generator().manual_seed(5)
    rows, n = 3, 70_000
    k = keep_count(density, n)
    t = _data(kind, rows, n, dtype, generator)
    noise = _data("normal", rows, n, dtype, generator)
    bracket = selection.Bracket()
    radix = _RadixCalls()
    steps = [t, t + 1e-3 * noise, t + 2e-3 * noise, t + 2e-3 * noise, 3 * t, 3 * t + 1e-3 * noise, 0 * t, t]
    with mock.patch.object(selection, "_radix_select", radix):
        for step, values in enumerate(steps):
            got = selection.kth_largest_magnitude(values, k, bracket)
            assert torch.equal(got, _sorted_kth(values, k)), f"step {step}"
    if kind == "normal" or (kind == "non_finite" and density > 0.01) or (kind == "relu" and density < 0.5):
        assert radix.rows < rows * len(steps)  # the one pass ran for some rows


def test_a_bracket_that_holds_skips_the_radix_passes() -> None:
    """Slowly drifting float32 data, as between training steps: after the first selection each one is
    exact without the radix passes."""
    generator = torch.Generator().manual_seed(1)
    t = torch.randn(2, 100_000, generator=generator)
    k = keep_count(0.3, t.shape[1])
    bracket = selection.Bracket()
    radix = _RadixCalls()
    with mock.patch.object(selection, "_radix_select", radix):
        for step in range(6):
            values = t + 1e-4 * step * torch.randn(t.shape, generator=generator)
            assert torch.equal(selection.kth_largest_magnitude(values, k, bracket), _sorted_kth(values, k))
    assert radix.rows == 2  # the first selection only


def test_rows_held_and_missed_in_one_call() -> None:
    """One row drifts (held), one jumps (missed), one has a zero threshold (no bracket): all exact."""
    generator = torch.Generator().manual_seed(2)
    t = torch.randn(3, 80_000, generator=generator)
    t[2] = t[2].relu()
    k = keep_count(0.7, t.shape[1])  # above row 2's non-zero share: its threshold is zero
    bracket = selection.Bracket()
    selection.kth_largest_magnitude(t, k, bracket)
    moved = t.clone()
    moved[0] += 1e-4 * torch.randn(t.shape[1], generator=generator)
    moved[1] *= 1.7
    radix = _RadixCalls()
    with mock.patch.object(selection, "_radix_select", radix):
        got = selection.kth_largest_magnitude(moved, k, bracket)
    assert torch.equal(got, _sorted_kth(moved, k))
    assert got[2] == 0
    assert radix.rows == 2


def test_a_bracket_of_another_group_count_or_dtype() -> None:
    """Another group count resizes the bracket; another dtype makes its patterns a poor hint: exact."""
    generator = torch.Generator().manual_seed(3)
    bracket = selection.Bracket()
    for rows, dtype in [(2, torch.float32), (3, torch.float32), (3, torch.float64), (3, torch.bfloat16),
                        (3, torch.float64)]:
        t = torch.randn(rows, 70_000, generator=generator).to(dtype)
        k = keep_count(0.4, t.shape[1])
        assert torch.equal(selection.kth_largest_magnitude(t, k, bracket), _sorted_kth(t, k))


def test_a_full_bracket_falls_back_to_the_radix_passes() -> None:
    """More entries inside the bracket than its candidate buffer holds (all equal up to one ulp)."""
    t = torch.full((1, 70_000), 0.5)
    t[0, ::2] = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))
    k = keep_count(0.6, t.shape[1])
    bracket = selection.Bracket()
    radix = _RadixCalls()
    with mock.patch.object(selection, "_radix_select", radix):
        for _ in range(3):
            assert torch.equal(selection.kth_largest_magnitude(t, k, bracket), _sorted_kth(t, k))
    assert radix.rows == 3  # the first selection, then each full bracket


def test_a_bracket_that_fills_in_the_tail_falls_back_to_the_radix_passes() -> None:
    """The candidate buffer (1,027 entries for 16,447) fills only in the entries after the last whole
    block of 64: the tail's own check sends the row to the radix passes, exactly."""
    generator = torch.Generator().manual_seed(7)
    n = 16_447  # 256 blocks of 64 and a tail of 63
    t = 0.01 * torch.rand(1, n, generator=generator)
    t[0, :1020] = 0.5 + 1e-4 * torch.rand(1020, generator=generator)  # 16 blocks, below the block check
    t[0, -63:] = 0.5 + 1e-4 * torch.rand(63, generator=generator)
    k = 1000
    bracket = selection.Bracket()
    radix = _RadixCalls()
    with mock.patch.object(selection, "_radix_select", radix):
        for _ in range(2):
            assert torch.equal(selection.kth_largest_magnitude(t, k, bracket), _sorted_kth(t, k))
    assert radix.rows == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinities_and_nans_inside_the_bracket(dtype: torch.dtype) -> None:
    """A last threshold at the largest finite value puts +inf and NaN patterns (any payload) inside the
    bracket: the one-pass threshold is then +inf, as NaN ranks, and equals a sort's."""
    integer, nans = {torch.float32: (torch.int32, [0x7F800001, 0x7FC00000, 0x7FFFFFFF]),
                     torch.float64: (torch.int64, [0x7FF0000000000001, 0x7FF8000000000000])}[dtype]
    generator = torch.Generator().manual_seed(8)
    t = torch.randn(1, 70_000, generator=generator, dtype=dtype)
    t[0, :600] = torch.finfo(dtype).max
    k = 500
    bracket = selection.Bracket()
    assert selection.kth_largest_magnitude(t, k, bracket) == torch.finfo(dtype).max
    moved = t.clone()
    moved[0, 600:800] = float("inf")
    moved[0, 800:1200] = torch.tensor(nans, dtype=integer).repeat(400)[:400].view(dtype)
    radix = _RadixCalls()
    with mock.patch.object(selection, "_radix_select", radix):
        got = selection.kth_largest_magnitude(moved, k, bracket)
    assert torch.equal(got, _sorted_kth(moved, k)) and got.isinf().all()
    assert radix.rows == 0


@pytest.mark.parametrize(("granularity", "role", "layer", "shape"), [
    ("nchw", "input", "conv", (2, 8, 96, 96)),
    ("chw", "input", "conv", (3, 8, 96, 96)),
    ("nchw", "weight", "conv", (128, 64, 3, 3)),
    ("nchw", "weight", "linear", (512, 256)),
    ("nchw", "input", "linear", (64, 2048)),
    ("chw", "input", "linear", (3, 40, 2048)),
])
def test_training_site_masks_equal_the_reference_over_steps(granularity: str, role: str, layer: str,
                                                            shape: tuple) -> None:
    """A site at period 1 selects with its bracket every step: each mask equals the independent
    reference's, through drift, a jump and a reset."""
    generator = torch.Generator().manual_seed(4)
    site = TopK(0.7, granularity, role, layer).train()
    t = torch.randn(shape, generator=generator)
    for step in range(7):
        if step == 4:
            t = t * 2.5
        elif step == 5:
            site.reset()
        else:
            t = t + 0.01 * torch.randn(shape, generator=generator)
        out = site(t)
        expected = t * ref_mask(t, 0.3, granularity, role, layer)
        assert torch.equal(out, expected), f"step {step}"


def test_the_bracket_is_not_state() -> None:
    """A hint, not state: `state_dict()` has no entry for it and `reset()` empties it in place."""
    site = TopK(0.7, "nchw", "input", "conv").train()
    site(torch.randn(2, 8, 96, 96))
    assert set(site.state_dict()) == {"step", "threshold", "density"}
    previous = site._bracket.previous
    assert (previous >= 0).all()
    site.reset()
    assert site._bracket.previous is previous and (previous == -1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entries_on_the_bracket_edges(dtype: torch.dtype) -> None:
    """Magnitudes exactly at the bracket's ends and one pattern beyond them (both signs): each counted
    once, as above or inside, so the one-pass threshold still equals a sort's."""
    integer = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    generator = torch.Generator().manual_seed(6)
    t = torch.randn(1, 70_000, generator=generator, dtype=dtype)
    k = keep_count(0.3, t.shape[1])
    bracket = selection.Bracket()
    for _ in range(2):  # the second selection, from the first's threshold, sets a width
        selection.kth_largest_magnitude(t, k, bracket)
    centre, width = int(bracket.previous[0]), int(bracket.widths[0])
    assert centre > 0 and width > 0
    edges = torch.tensor([centre - width, centre + width, centre - width - 1, centre + width + 1], dtype=integer)
    planted = t.clone()
    signed = edges.view(dtype).repeat(100) * torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=dtype).repeat(50)
    planted[0, :400] = signed
    planted[0, -40:] = signed[:40]  # in the tail after the last whole block of the pass, too
    radix = _RadixCalls()
    with mock.patch.object(selection, "_radix_select", radix):
        assert torch.equal(selection.kth_largest_magnitude(planted, k, bracket), _sorted_kth(planted, k))
    assert radix.rows == 0


def test_a_site_pickled_without_a_bracket_gets_one() -> None:
    """A whole-module pickle of a site from a release without brackets loads and trains."""
    site = TopK(0.7, "nchw", "input", "conv").train()
    site(torch.randn(2, 8, 96, 96))
    state = site.__getstate__()
    del state["_bracket"]
    older = TopK.__new__(TopK)
    older.__setstate__(state)
    t = torch.randn(2, 8, 96, 96)
    assert torch.equal(older(t), t * ref_mask(t, 0.3, "nchw", "input", "conv"))
    restored = pickle.loads(pickle.dumps(older))
    assert restored._bracket.fits(1)


@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_tiny_groups_with_a_bracket(n: int) -> None:
    """Groups far below the candidate buffer's size, with ties and zeros: exact over drifting steps."""
    generator = torch.Generator().manual_seed(9)
    t = torch.randn(3, n, generator=generator)
    t[1] = 0.0
    t[2, : n // 2] = 1.5
    bracket = selection.Bracket()
    for k in sorted({1, max(1, n // 2), n}):
        for step in range(4):
            values = t * (1 + 1e-4 * step)
            assert torch.equal(selection.kth_largest_magnitude(values, k, bracket), _sorted_kth(values, k))
