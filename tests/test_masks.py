"""Top-K masks: exact k per group, identity at s=0, NaN kept (SPEC §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from reference import GRANULARITIES, keep_count, ref_mask

import swat_fx
from swat_fx.masks import keep_count as library_keep_count
from swat_fx.topk import TopK

TENSORS = {  # (role, layer): shapes
    ("weight", "conv"): [(8, 3, 3, 3), (6, 4, 5), (4, 2, 3, 3, 2), (16, 8, 1, 1)],
    ("weight", "linear"): [(10, 24)],
    ("input", "conv"): [(4, 6, 5, 5), (3, 4, 9), (2, 3, 4, 4, 3)],
    ("input", "linear"): [(6, 24), (3, 5, 16)],
    ("grad", "conv"): [(4, 6, 5, 5)],
    ("grad", "linear"): [(3, 5, 16)],
}
CASES = [(role, layer, shape) for (role, layer), shapes in TENSORS.items() for shape in shapes]


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize(("role", "layer", "shape"), CASES, ids=lambda v: str(v))
def test_mask_equals_reference_on_tie_free_data(role: str, layer: str, shape: tuple, granularity: str,
                                                density: float) -> None:
    """The reference keeps exactly k = ceil(d·n) per group (tested in test_reference.py)."""
    torch.manual_seed(len(shape) * 31 + int(density * 100))
    t = torch.randn(shape)
    site = TopK(1 - density, granularity, role, layer).eval()
    expected = ref_mask(t, density, granularity, role, layer)
    assert torch.equal(site.mask(t).expand(t.shape), expected)
    site.train()
    assert torch.equal(site.mask(t, refresh=True).expand(t.shape), expected)


def test_keep_count_is_ceil_without_float_error() -> None:
    for n in (1, 7, 10, 64, 1000, 12345):
        for sparsity in (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.99):
            d = 1 - sparsity
            assert library_keep_count(d, n) == keep_count(d, n)
    assert library_keep_count(1 - 0.7, 10) == 3
    assert library_keep_count(0.001, 10) == 1


def test_whole_tensor_keeps_exactly_k() -> None:
    t = torch.randn(1000)
    for density in (0.01, 0.3, 0.77):
        site = TopK(1 - density, "nchw", "input", "linear").eval()
        assert int(site.mask(t.view(10, 100)).sum()) == math.ceil(round(density * 1000, 6))


def test_sparsity_zero_is_the_identity_and_runs_no_topk() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 5))
    transformed = swat_fx.transform(model, 0.0, sparsify_first=True)
    assert "topk" not in transformed.code
    assert not any(isinstance(m, TopK) for m in transformed.modules())
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(transformed(x), model(x))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_nan_in_weight_reaches_the_output(granularity: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    with torch.no_grad():
        model[0].weight[3, 5] = float("nan")
    transformed = swat_fx.transform(model, 0.9, granularity=granularity, sparsify_first=True)
    x = torch.randn(4, 16)
    y = transformed(x)
    assert torch.equal(torch.isnan(y), torch.isnan(model(x)))
    assert torch.isnan(y[:, 3]).all()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_nan_in_activation_reaches_the_output_and_gradients(granularity: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    transformed = swat_fx.transform(model, 0.9, granularity=granularity, sparsify_first=True,
                                    sites={"fw_a", "fw_w", "bw_w"})
    x = torch.randn(2, 4, 5, 5)
    x[1, 2, 3, 3] = float("nan")
    y = transformed(x)
    assert torch.isnan(y[1]).any()
    y.sum().backward()
    assert torch.isnan(transformed.get_parameter("0.weight").grad).any()


def test_inf_is_kept_like_nan() -> None:
    t = torch.randn(4, 8)
    t[0, 0] = float("inf")
    t[1, 1] = float("-inf")
    keep = TopK(0.95, "nchw", "input", "linear").eval().mask(t)
    assert keep[0, 0] and keep[1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("density", [0.001, 0.1, 0.3, 0.5, 0.8, 0.999])
@pytest.mark.parametrize("data", ["normal", "relu", "relu_subnormal", "few_values", "non_finite"])
def test_large_tensors_select_the_exact_threshold(data: str, density: float, dtype: torch.dtype) -> None:
    """The radix select (large groups) agrees with a full sort of the magnitudes (NaN as +inf), also
    with many ties, negative values and infinities, and so does `torch.kthvalue` (the other path)."""
    from swat_fx import selection
    from swat_fx.masks import kth_largest_magnitude

    torch.manual_seed(8)
    t = torch.randn(2, 300_000)
    if data == "relu":
        t = t.relu()  # half of the entries tie at zero
    elif data == "relu_subnormal":  # zeros and, just above them, subnormals sharing their top digit
        t = t.relu()
        subnormal = torch.randint(0, 1000, t[:, ::7].shape, dtype=torch.int32).view(torch.float32)
        t[:, ::7] = subnormal * torch.randn(subnormal.shape).sign()
    elif data == "few_values":
        t = torch.randint(-4, 5, t.shape).float()
    elif data == "non_finite":
        t[:, :100] = float("nan")
        t[:, 100:200] = float("-inf")
        t[0, 200:250] = float("inf")
        payloads = torch.tensor([0x7F800001, 0x7FFFFFFF, -1, -0x7FFFFF], dtype=torch.int32)  # NaNs, some negative
        t[:, 250:400] = payloads.repeat(38)[:150].view(torch.float32)  # 0x7F800001 shares +inf's top digit
    t = t.to(dtype)
    k = keep_count(density, t.shape[1])
    magnitudes = torch.where(t.isnan(), torch.full_like(t, float("inf")), t.abs())
    expected = magnitudes.float().sort(dim=1, descending=True).values[:, k - 1].to(dtype)
    assert selection.available(t)
    assert torch.equal(kth_largest_magnitude(t, k), expected)
    assert torch.equal(kth_largest_magnitude(t[:, :1000], min(k, 1000)),  # below selection.MIN_SIZE
                       magnitudes[:, :1000].float().sort(dim=1, descending=True).values[:, min(k, 1000) - 1]
                       .to(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("density", [0.0001, 0.3, 0.6, 0.75, 0.9, 1.0])
def test_radix_select_on_native_float64_and_float16_data(density: float, dtype: torch.dtype) -> None:
    """Data made in the dtype itself (full float64 mantissas, the dtype's own subnormals, a NaN whose
    top digit is +inf's), so every pass of the select and its zero shortcut see real bit patterns."""
    from swat_fx import selection
    from swat_fx.masks import kth_largest_magnitude

    integer, nan_bits = {torch.float64: (torch.int64, 0x7FF0000000000001), torch.float16: (torch.int16, 0x7C01)}[dtype]
    generator = torch.Generator().manual_seed(3)
    t = torch.randn(2, 70_000, dtype=torch.float64, generator=generator).to(dtype).relu()  # half zeros
    subnormal = torch.randint(1, 1000, t[:, ::9].shape, generator=generator).to(integer).view(dtype)
    t[:, ::9] = subnormal * torch.randn(subnormal.shape, generator=generator).sign().to(dtype)
    t[0, 1::9] = torch.tensor(nan_bits, dtype=integer).view(dtype)
    t[1, 2:40] = float("inf")
    k = keep_count(density, t.shape[1])
    magnitudes = torch.where(t.isnan(), torch.full_like(t, float("inf")), t.abs())
    expected = magnitudes.double().sort(dim=1, descending=True).values[:, k - 1].to(dtype)
    assert selection.available(t) and t.shape[1] >= selection.MIN_SIZE
    assert torch.equal(kth_largest_magnitude(t, k), expected)
