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
from swat_fx.operands import CompressedTensor, KeptUnits, MaskedParameter, pack_bits, unpack_bits
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


@pytest.mark.parametrize(("kernel", "granularity"), [("compressed", "nchw"), ("compressed", "chw"),
                                                     ("compressed", "filter"), ("compact", "filter")])
def test_fast_paths_give_the_masked_paths_gradients(kernel: str, granularity: str) -> None:
    masked, fast = _pair(kernel, granularity)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    expected, actual = _grads(masked, x, y), _grads(fast, x, y)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    if kernel == "compressed":  # the same arithmetic on the same values: bit-identical
        assert all(torch.equal(actual[n], expected[n]) for n in expected)


def test_kernel_choice_is_visible_in_the_code() -> None:
    filt = swat_fx.transform(models.small_cnn(), 0.7, granularity="filter").code
    assert "kernel = 'compact'" in filt and "format = 'units'" in filt
    compressed = swat_fx.transform(models.small_cnn(), 0.7, kernel="compressed").code
    assert "kernel = 'compressed'" in compressed and "format = 'compressed'" in compressed
    assert "swat_fx_ops_relu" in compressed  # ReLUs feeding compressed X_s keep 1 bit an entry
    default = swat_fx.transform(models.small_cnn(), 0.7).code
    assert "kernel = 'masked'" in default and "format" not in default and "swat_fx_ops_relu" not in default


def test_compact_falls_back_for_grouped_convs() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1))
    code = swat_fx.transform(model, 0.5, granularity="filter").code
    assert code.count("kernel = 'compact'") == 1 and code.count("kernel = 'masked'") == 1


def test_compact_needs_filter_granularity() -> None:
    with pytest.raises(ValueError, match="granularity='filter'"):
        swat_fx.SwatConfig(kernel="compact", granularity="nchw")


def test_block_input_is_sparsified_once_for_conv_and_downsample() -> None:
    transformed = swat_fx.transform(models.resnet18(num_classes=10), 0.7, kernel="compressed")
    ops = {node.meta["swat"].name: node for node in transformed.graph.nodes
           if node.target in (swat_fx.ops.conv, swat_fx.ops.linear)}
    shared = ops["layer2.0.conv1"].kwargs["input_bwd"]
    assert ops["layer2.0.downsample.0"].kwargs["input_bwd"] is shared
    x_sites = [m for name, m in transformed.named_modules() if name.endswith("x_topk")]
    assert len(x_sites) == len(ops) - 3  # one per op, less the three shared downsample inputs
    info = {i.name: i for i in swat_fx.layers(transformed)}
    assert "input" in info["layer2.0.downsample.0"].achieved


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Unique storages autograd holds at the end of the forward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    return sum(storages.values())


def test_compressed_storage_holds_less_for_the_backward() -> None:
    torch.manual_seed(1)
    net = models.resnet18(num_classes=10, stem="cifar")
    x = torch.randn(8, 3, 32, 32)
    dense = _saved_bytes(net, x)
    masked = _saved_bytes(swat_fx.transform(net, 0.8, kernel="masked"), x)
    compressed = _saved_bytes(swat_fx.transform(net, 0.8, kernel="compressed"), x)
    compact = _saved_bytes(swat_fx.transform(net, 0.8, granularity="filter"), x)
    assert masked > dense  # zero-filled X_s next to the ReLU output: more, not less
    assert compressed < 0.75 * dense
    assert compact < 0.75 * dense


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
    torch.testing.assert_close(MaskedParameter.compress(t, keep).to_dense(), zero_filled, equal_nan=True)
    channels = torch.tensor([True, False, True, False, False]).view(1, 5, 1)
    units = KeptUnits.select(t, channels, dim=1)
    assert units.index.tolist() == [0, 2] and units.values.shape == (3, 2, 7)
    torch.testing.assert_close(units.to_dense(), torch.where(channels, t, torch.zeros(())), equal_nan=True)


def test_bitmask_relu_gradient_is_exact() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 6, requires_grad=True)
    g = torch.randn(4, 6)
    swat_fx.ops.relu(x).backward(g)
    x2 = x.detach().clone().requires_grad_()
    torch.relu(x2).backward(g)
    assert torch.equal(x.grad, x2.grad)


def test_topk_formats_keep_state_like_dense() -> None:
    torch.manual_seed(4)
    site = TopK(0.5, "filter", "input", "conv", period=2)
    t = torch.randn(2, 6, 4, 4)
    units = site(t, format="units")
    assert units.index.numel() == 3 and int(site.step) == 1 and float(site.density) == 0.5
