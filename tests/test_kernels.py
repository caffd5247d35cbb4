"""Kernel choice: compressed storage, compact structured products, bit-mask ReLU, shared X_s.

Every fast path must give the same gradients as the plain zero-filled (masked) path; the gradient
values themselves are checked against the independent reference in test_gradients.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import swat_fx
from swat_fx import models
from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.formats import Format
from swat_fx.backends.eager.operands import CompressedTensor, KeptUnits, ThresholdedParameter, pack_bits, unpack_bits
from swat_fx.masks import mask_layout
from swat_fx.memory import saved_tensor_bytes
from swat_fx.topk import TopK


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _pair(kernel: str, granularity: str = "nchw", model: str = "resnet18_cifar") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = models.build(model)
    return (swat_fx.transform(net, 0.8, granularity=granularity, kernel="masked"),
            swat_fx.transform(net, 0.8, granularity=granularity, kernel=kernel))


@pytest.mark.parametrize(("kernel", "granularity", "model"), [
    ("compressed", "nchw", "resnet18_cifar"), ("compressed", "chw", "resnet18_cifar"),
    ("compressed", "filter", "resnet18_cifar"), ("compact", "filter", "resnet18_cifar"),
    ("compressed", "hw", "resnet18"), ("compact", "filter", "resnet18"),  # ImageNet stem: ReLU -> max-pool
])
def test_fast_paths_give_the_masked_paths_gradients(kernel: str, granularity: str, model: str) -> None:
    masked, fast = _pair(kernel, granularity, model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    expected, actual = _grads(masked, x, y), _grads(fast, x, y)
    for name in expected:
        scale = float(expected[name].abs().max())  # summation order differs: relative to the tensor's size
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-5 * scale, msg=name)
    if kernel == "compressed":  # the same arithmetic on the same values: bit-identical
        assert all(torch.equal(actual[n], expected[n]) for n in expected)


def test_kernel_choice_is_visible_in_the_code() -> None:
    filt = swat_fx.transform(models.small_cnn(), 0.7, granularity="filter").code
    assert "kernel = Kernel.COMPACT" in filt
    assert "format = Format.FILTERS" in filt and "format = Format.CHANNELS" in filt
    compressed = swat_fx.transform(models.small_cnn(), 0.7, kernel="compressed").code
    assert "kernel = Kernel.COMPRESSED" in compressed and "format = Format.COMPRESSED" in compressed
    assert "swat_fx_backends_eager_kernels_relu" in compressed  # ReLUs feeding compressed X_s keep 1 bit an entry
    default = swat_fx.transform(models.small_cnn(), 0.7).code
    assert "kernel = Kernel.MASKED" in default and "format = Format.THRESHOLDED" in default
    assert "format = Format.COMPRESSED" not in default and "swat_fx_backends_eager_kernels_relu" not in default


def test_compact_falls_back_for_grouped_convs() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1))
    code = swat_fx.transform(model, 0.5, granularity="filter").code
    assert code.count("kernel = Kernel.COMPACT") == 1 and code.count("kernel = Kernel.MASKED") == 1


def test_compact_needs_filter_granularity() -> None:
    with pytest.raises(ValueError, match="granularity='filter'"):
        swat_fx.transform(models.small_cnn(), 0.5, kernel="compact", granularity="nchw")


def test_block_input_is_sparsified_once_for_conv_and_downsample() -> None:
    transformed = swat_fx.transform(models.resnet18(num_classes=10), 0.7, kernel="compressed")
    ops = {node.meta["swat"].name: node for node in transformed.graph.nodes
           if node.target in (kernels.conv, kernels.linear)}
    shared = ops["layer2.0.conv1"].kwargs["input_bwd"]
    assert ops["layer2.0.downsample.0"].kwargs["input_bwd"] is shared
    x_sites = [m for name, m in transformed.named_modules() if name.endswith("x_topk")]
    assert len(x_sites) == len(ops) - 3  # one per op, less the three shared downsample inputs
    info = {i.name: i for i in swat_fx.layers(transformed)}
    assert "input" in info["layer2.0.downsample.0"].achieved


def test_saved_tensor_bytes_counts_unique_storages() -> None:
    """A linear saves its input (N·F floats); ReLU's output is saved once although two ops keep it."""
    x = torch.randn(8, 16, requires_grad=True)
    assert saved_tensor_bytes(nn.Linear(16, 4), x) == 8 * 16 * 4
    assert saved_tensor_bytes(nn.Sequential(nn.ReLU(), nn.Linear(16, 4)), x) == 8 * 16 * 4


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50"])
@pytest.mark.parametrize("granularity", ["nchw", "chw"])
def test_the_default_holds_nothing_beyond_dense_and_compressed_storage_holds_less(name: str, granularity: str) -> None:
    """The masked kernel holds X and the threshold (X is what the ReLU/BN before it keeps anyway) and
    rebuilds X_s in the backward; compressed storage keeps the kept values and a bitmap."""
    torch.manual_seed(1)
    net = models.build(name, num_classes=10)
    x = torch.randn(2, 3, 32, 32) if name == "resnet18_cifar" else torch.randn(1, 3, 64, 64)
    dense = saved_tensor_bytes(net, x)
    model = swat_fx.transform(net, 0.8, granularity=granularity)
    default = saved_tensor_bytes(model, x)
    thresholds = sum(site.threshold.nbytes for _, site in swat_fx.contract.sites(model))  # a few bytes a site
    compressed = saved_tensor_bytes(swat_fx.transform(net, 0.8, granularity=granularity, kernel="compressed"), x)
    assert default <= dense + 2 * thresholds  # each op holds the thresholds in force (per sample for chw)
    assert compressed < 0.8 * dense


def test_operand_formats_round_trip() -> None:
    torch.manual_seed(2)
    t = torch.randn(3, 5, 7)
    t[0, 0, 0] = float("nan")
    keep = (t.abs() > 0.8) | t.isnan()
    zero_filled = torch.where(keep, t, torch.zeros(()))
    for mask in (keep, torch.zeros_like(keep), torch.ones_like(keep)):
        assert torch.equal(unpack_bits(pack_bits(mask), mask.shape), mask)
    compressed = CompressedTensor.compress(t, keep)
    assert compressed.values.numel() == int(keep.sum())
    torch.testing.assert_close(compressed.to_dense(), zero_filled, equal_nan=True)
    w = torch.randn(4, 3, 3, 3)
    for granularity in ("nchw", "chw", "kernel"):
        layout = mask_layout("weight", "conv", granularity, 4)
        site = TopK(0.6, granularity, "weight", "conv").eval()
        operand = site(w, format=Format.THRESHOLDED)
        assert isinstance(operand, ThresholdedParameter) and operand.layout == layout
        assert torch.equal(operand.to_dense(), site(w))
    channels = torch.tensor([True, False, True, False, False]).view(1, 5, 1)
    units = KeptUnits.select(t, channels, dim=1)
    assert units.index.tolist() == [0, 2] and units.values.shape == (3, 2, 7)
    torch.testing.assert_close(units.to_dense(), torch.where(channels, t, torch.zeros(())), equal_nan=True)


def test_index_max_pool_gradient_is_exact() -> None:
    torch.manual_seed(5)
    for args in [(3, 2, 1, 1, False), (2, None, 0, 1, True), ((3, 2), (2, 1), (1, 0), 2, False)]:
        x = torch.randn(2, 3, 11, 9, requires_grad=True)
        y = kernels.max_pool2d(x, *args)
        g = torch.randn_like(y)
        y.backward(g)
        x2 = x.detach().clone().requires_grad_()
        expected = F.max_pool2d(x2, *args)
        expected.backward(g)
        assert torch.equal(y, expected) and torch.equal(x.grad, x2.grad)


def test_stem_relu_and_max_pool_stop_holding_the_activation() -> None:
    code = swat_fx.transform(models.resnet50(num_classes=10), 0.8, kernel="compressed").code
    assert "swat_fx_backends_eager_kernels_max_pool2d(relu," in code.replace("relu_1", "relu")
    assert "self.maxpool(" not in code


def test_bitmask_relu_gradient_is_exact() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 6, requires_grad=True)
    g = torch.randn(4, 6)
    kernels.relu(x).backward(g)
    x2 = x.detach().clone().requires_grad_()
    torch.relu(x2).backward(g)
    assert torch.equal(x.grad, x2.grad)


def test_topk_formats_keep_state_like_dense() -> None:
    torch.manual_seed(4)
    site = TopK(0.5, "filter", "input", "conv", period=2)
    t = torch.randn(2, 6, 4, 4)
    units = site(t, format=Format.CHANNELS)
    assert units.index.numel() == 3 and int(site.step) == 1 and float(site.density) == 0.5


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 100_003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_compression_and_bit_mask_relu_equal_the_torch_paths(n: int, dtype: torch.dtype) -> None:
    """The numba kernels (CPU) against the plain torch formulas, NaN included."""
    torch.manual_seed(n)
    t = torch.randn(n, dtype=dtype)
    t[0] = float("nan")
    some = (t.abs() > 0.5) | t.isnan()
    for keep in (some, torch.zeros_like(some), torch.ones_like(some)):
        compressed = CompressedTensor.compress(t, keep)
        assert compressed.values.numel() == int(keep.sum())
        assert torch.equal(compressed.bitmap, pack_bits(keep))
        torch.testing.assert_close(compressed.to_dense(), torch.where(keep, t, torch.zeros((), dtype=dtype)),
                                   equal_nan=True, rtol=0, atol=0)
    x = t.clone().requires_grad_()
    y = kernels.relu(x)
    grad = torch.randn(n, dtype=dtype)
    grad[-1] = float("inf")  # kept or dropped exactly, as the value they are (no inf·0)
    grad[n // 2] = float("nan")
    y.backward(grad)
    expected = torch.relu(t.clone().requires_grad_())
    torch.testing.assert_close(y, expected, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, torch.where(t > 0, grad, torch.zeros((), dtype=dtype)), rtol=0, atol=0,
                               equal_nan=True)


def test_compress_writes_one_slot_past_the_kept_values_and_no_further() -> None:
    """numba does not check bounds: the packing kernel's scratch slot is checked with a sentinel."""
    import numpy as np

    from swat_fx import selection

    kernels = selection.kernels()
    values = torch.randn(1001).numpy()
    for keep in (values > 0.5, np.zeros(1001, np.bool_), np.ones(1001, np.bool_)):
        count = int(keep.sum())
        out = np.full(count + 2, 7.0, values.dtype)  # count values, the scratch slot, a sentinel
        bits = np.empty(126, np.uint8)
        kernels.compress(values, keep, values.dtype.type(0), out[:count + 1], bits)
        assert out[-1] == 7.0 and np.array_equal(out[:count], values[keep])
        assert np.array_equal(bits, np.packbits(keep, bitorder="little"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.0, 0.7, float("inf")])
def test_compressing_from_the_threshold_equals_compressing_by_the_mask(tau: float, dtype: torch.dtype) -> None:
    """`CompressedTensor.from_threshold` (no mask tensor) against `compress` by the reference keep-mask
    |v| >= tau with NaN kept, and the density it records, with NaN, ±inf and -0.0 in the data."""
    torch.manual_seed(7)
    t = torch.randn(3, 5, 7, 11, dtype=dtype)
    t.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=dtype)
    threshold = torch.tensor([tau], dtype=torch.float32)  # a float32 threshold, as sites store it
    keep = ~(t.abs() < threshold.to(dtype))
    recorded = []
    compressed = CompressedTensor.from_threshold(t, threshold, mask_layout("input", "conv", "nchw", 4),
                                                 recorded.append)
    expected = CompressedTensor.compress(t, keep)
    assert torch.equal(compressed.bitmap, expected.bitmap)
    torch.testing.assert_close(compressed.values, expected.values, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(compressed.to_dense(), torch.where(keep, t, torch.zeros((), dtype=dtype)),
                               equal_nan=True, rtol=0, atol=0)
    assert torch.equal(recorded[0], torch.count_nonzero(keep) / keep.numel())


def test_masked_and_compressed_kernels_record_the_same_state_between_refreshes() -> None:
    """Period 3: the thresholds, steps and densities (counted at every step, refresh or not) of the
    compressed kernel equal the masked kernel's."""
    torch.manual_seed(8)
    net = models.resnet18(num_classes=10, stem="cifar")
    masked = swat_fx.transform(net, 0.7, period=3, kernel="masked")
    compressed = swat_fx.transform(net, 0.7, period=3, kernel="compressed")
    for step in range(4):
        x = torch.randn(4, 3, 16, 16)
        for model in (masked, compressed):
            model(x).sum().backward()
        for (name, want), (_, got) in zip(swat_fx.contract.sites(masked), swat_fx.contract.sites(compressed),
                                          strict=True):
            for buffer in ("step", "threshold", "density"):
                assert torch.equal(getattr(got, buffer), getattr(want, buffer)), f"step {step}: {name}.{buffer}"


def test_bitmask_relu_backward_is_differentiable() -> None:
    """A double backward (create_graph=True) differentiates the bit-mask ReLU's backward w.r.t. its
    incoming gradient as torch's ReLU does."""
    torch.manual_seed(9)
    x = torch.randn(3, 300)
    results = []
    for relu in (kernels.relu, torch.relu):
        inp = x.clone().requires_grad_()
        upstream = torch.randn(3, 300, generator=torch.Generator().manual_seed(1)).requires_grad_()
        (grad_x,) = torch.autograd.grad(relu(inp), inp, upstream, create_graph=True)
        (grad_upstream,) = torch.autograd.grad((grad_x * x).sum(), upstream)
        results.append((grad_x.detach(), grad_upstream))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_compact_linear_keeping_no_feature_gives_a_zero_weight_gradient() -> None:
    """Between refreshes a stored threshold may keep no input feature at all (seen in training)."""
    torch.manual_seed(0)
    x, w = torch.randn(3, 4, 6, requires_grad=True), torch.randn(5, 6, requires_grad=True)
    none_kept = KeptUnits.select(x, torch.zeros(1, 1, 6, dtype=torch.bool), -1)
    y = kernels.linear_swat(x, w, None, input_bwd=none_kept)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(x.grad, g @ w.detach())


def test_compact_conv_keeping_no_input_channel_gives_a_zero_weight_gradient() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(3, 4, 3, 3, requires_grad=True)
    none_kept = KeptUnits.select(x, torch.zeros(1, 4, 1, 1, dtype=torch.bool), 1)
    y = kernels.conv_swat(x, w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, input_bwd=none_kept)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(x.grad, torch.nn.grad.conv2d_input(x.shape, w.detach(), g, padding=1))
