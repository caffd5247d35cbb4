"""Periodic Top-K (SPEC §3): stored thresholds, step counters, eval mode, and bit-exact resume."""

from __future__ import annotations

import io

import torch
import torch.nn as nn
import torch.nn.functional as F
from reference import keep_count

import swat_fx
from swat_fx import models
from swat_fx.topk import TopK


def _kth_largest(t: torch.Tensor, density: float) -> torch.Tensor:
    flat = t.detach().abs().flatten().sort(descending=True).values
    return flat[keep_count(density, flat.numel()) - 1]


def test_threshold_is_reused_between_refreshes() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(32, 16)
    model = swat_fx.transform(nn.Sequential(layer), 0.8, period=3, sparsify_first=True)
    site = model.get_submodule("swat.0.w_topk")
    weight = model.get_parameter("0.weight")
    x = torch.randn(4, 32)
    thresholds = []
    for step in range(7):
        tau_now = _kth_largest(weight, 0.2)
        model(x).sum().backward()
        thresholds.append(site.threshold.clone())
        if step % 3 == 0:
            assert torch.equal(site.threshold.squeeze(), tau_now), "refresh step computes the exact threshold"
        else:
            assert torch.equal(thresholds[-1], thresholds[-2]), "other steps reuse the stored one"
            expected_density = (weight.detach().abs() >= thresholds[-1]).float().mean()
            assert torch.isclose(site.density, expected_density)
        with torch.no_grad():
            weight.add_(torch.randn_like(weight) * 0.3)  # move the weights so the density drifts
    assert int(site.step) == 7
    assert not torch.equal(thresholds[0], thresholds[3])


def test_reused_threshold_defines_the_forward_weights() -> None:
    """Between refreshes the forward uses W ⊙ (|W| >= τ_stored), not a fresh Top-K."""
    torch.manual_seed(1)
    layer = nn.Linear(20, 10, bias=False)
    model = swat_fx.transform(nn.Sequential(layer), 0.5, period=10, sparsify_first=True)
    weight = model.get_parameter("0.weight")
    x = torch.randn(3, 20)
    model(x).sum().backward()  # one training iteration: the next forward starts the second one
    tau = model.get_submodule("swat.0.w_topk").threshold.clone()
    with torch.no_grad():
        weight.mul_(0.5)  # halves every magnitude: with τ kept, far fewer weights pass
    y = model(x)
    w_s = torch.where(weight.abs() >= tau, weight, 0.0)
    torch.testing.assert_close(y, F.linear(x, w_s))
    assert float(model.get_submodule("swat.0.w_topk").density) < 0.2


def test_eval_mode_uses_exact_topk_and_changes_no_state() -> None:
    torch.manual_seed(2)
    model = swat_fx.transform(models.small_cnn(), 0.7, period=5)
    x = torch.randn(8, 1, 8, 8)
    model(x).sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        weight = model.get_parameter("conv2.weight")
        weight.mul_(-1.5)
        before["conv2.weight"] = weight.clone()
        y = model(x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # exact Top-K of the current weight, not the stored threshold
    site = model.get_submodule("swat.conv2.w_topk")
    assert torch.equal(site.mask(weight).sum(), torch.tensor(keep_count(0.3, weight.numel())))
    assert y.shape == (8, 10)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(16, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _fresh(seed: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = swat_fx.transform(models.small_cnn(), 0.7, period=4, granularity="hw")
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_resume_from_state_dict_is_bit_identical() -> None:
    reference, ref_opt = _fresh()
    _train(reference, ref_opt, range(11))

    interrupted, opt = _fresh()
    _train(interrupted, opt, range(6))
    buffer = io.BytesIO()
    torch.save({"model": interrupted.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed, resumed_opt = _fresh(seed=99)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    assert int(resumed.get_submodule("swat.conv2.x_topk").step) == 6
    _train(resumed, resumed_opt, range(6, 11))

    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_dense_checkpoint_loads_into_transformed_model() -> None:
    torch.manual_seed(4)
    original = models.small_cnn()
    transformed = swat_fx.transform(models.small_cnn(), 0.7)
    transformed.load_state_dict(original.state_dict())  # strict: SWAT state is optional
    x = torch.randn(2, 1, 8, 8)
    transformed(x)
    for name, param in original.named_parameters():
        assert torch.equal(param, transformed.get_parameter(name))
    assert int(transformed.get_submodule("swat.conv2.w_topk").step) == 1
    # and back: the SWAT entries are dropped for the original model
    original.load_state_dict(swat_fx.dense_state_dict(transformed.state_dict()))


def test_grad_site_state_for_meprop() -> None:
    torch.manual_seed(5)
    model = swat_fx.transform(nn.Sequential(nn.Linear(8, 6)), 0.5, algorithm="meprop", sparsify_first=True,
                              period=2)
    site = model.get_submodule("swat.0.g_topk")
    assert isinstance(site, TopK) and site.role == "grad"
    model(torch.randn(4, 8)).backward(torch.randn(4, 6))  # tie-free upstream gradient
    assert int(site.step) == 1 and site.threshold.numel() == 1
    assert float(site.density) == 0.5
