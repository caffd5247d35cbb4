"""A transformed model in the places people put models: activation checkpointing, `no_grad` forwards,
gradient accumulation, mixed precision, and edge inputs (SPEC §3: a step is a training iteration)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference import ref_layer
from torch.utils.checkpoint import checkpoint

import swat_fx
from swat_fx import models

PERIODS = [1, 2, 3]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


def _batches(steps: int, batch: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 1, 8, 8, generator=generator), torch.randint(0, 10, (batch,), generator=generator))
            for _ in range(steps)]


def _train(model: nn.Module, forward, steps: int = 5) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in _batches(steps):
        optimizer.zero_grad()
        F.cross_entropy(forward(model, x), y).backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


class _Blocks(nn.Module):
    """A transformed block checkpointed inside a larger model, followed by a dense head."""

    def __init__(self, block: nn.Module, head: nn.Module, use_reentrant: bool | None) -> None:
        super().__init__()
        self.block, self.head, self.use_reentrant = block, head, use_reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_reentrant is None:
            return self.head(self.block(x))
        if self.use_reentrant:  # the reentrant variant needs an input that requires grad to run a backward
            x = x.requires_grad_()
        return self.head(checkpoint(self.block, x, use_reentrant=self.use_reentrant))


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("period", PERIODS)
def test_checkpointing_around_the_model_changes_nothing(period: int, use_reentrant: bool) -> None:
    model = swat_fx.transform(_net(), 0.7, granularity="chw", period=period)
    expected = _train(copy.deepcopy(model), lambda m, x: m(x))

    def checkpointed(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(m, x.requires_grad_() if use_reentrant else x, use_reentrant=use_reentrant)

    _assert_same_state(_train(model, checkpointed), expected)
    assert int(model.get_submodule("swat.2.w_topk").step) == 5  # one step per iteration, not per forward


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("period", PERIODS)
def test_checkpointing_inside_a_model_changes_nothing(period: int, use_reentrant: bool) -> None:
    net = _net()
    block = swat_fx.transform(net[:4], 0.7, period=period, sparsify_first=True)
    plain = _Blocks(copy.deepcopy(block), copy.deepcopy(net[4:]), None)
    expected = _train(plain, lambda m, x: m(x))
    _assert_same_state(_train(_Blocks(block, net[4:], use_reentrant), lambda m, x: m(x)), expected)


def test_a_no_grad_forward_in_train_mode_changes_no_state_and_no_later_step() -> None:
    model = swat_fx.transform(_net(), 0.7, granularity="chw", period=3)
    expected = _train(copy.deepcopy(model), lambda m, x: m(x))

    def with_validation(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with torch.no_grad():
            m(torch.randn(3, 1, 8, 8))  # a validation batch someone forgot .eval() for
        _assert_same_state(m.state_dict(), before)
        return m(x)

    _assert_same_state(_train(model, with_validation), expected)


def test_gradient_accumulation_counts_micro_batches_unless_accumulate_is_used() -> None:
    x = torch.randn(8, 1, 8, 8)
    plain = swat_fx.transform(_net(), 0.7, period=4)
    for half in x.chunk(2):
        plain(half).sum().backward()
    assert int(plain.get_submodule("swat.2.w_topk").step) == 2  # each micro-batch is an iteration

    held = swat_fx.transform(_net(), 0.7, period=4)
    sites = [site for _, site in swat_fx.contract.sites(held)]
    for step in range(3):
        with swat_fx.accumulate(held):
            for half in x.chunk(2):
                held(half).sum().backward()
        assert all(int(site.step) == step + 1 for site in sites)
    # refreshed at step 0 only (period 4): the activation threshold is the one stored at the first
    # micro-batch of the first step, reused by both micro-batches of the later steps
    site = held.get_submodule("swat.2.x_topk")
    stored = site.threshold.clone()
    with swat_fx.accumulate(held):
        held(x[:4]).sum().backward()
        assert torch.equal(site.threshold, stored)


def test_a_model_checkpointed_many_times_per_step_advances_once() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7, period=2)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    y = sum(checkpoint(model, x, use_reentrant=False) for _ in range(3))
    y.sum().backward()
    assert {int(site.step) for _, site in swat_fx.contract.sites(model)} == {1}


# ------------------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize(("kind", "layer", "shape", "conv_kwargs"), [
    ("conv2d", lambda: nn.Conv2d(4, 6, 3, padding=1), (3, 4, 7, 7), {"padding": 1}),
    ("linear", lambda: nn.Linear(12, 7), (5, 12), {}),
])
@pytest.mark.parametrize("algorithm", ["swat", "saw", "meprop"])
def test_autocast_bfloat16_matches_the_reference_in_the_same_precision(kind, layer, shape, conv_kwargs,
                                                                       algorithm) -> None:
    torch.manual_seed(3)
    module = layer()
    model = swat_fx.transform(nn.Sequential(module), 0.6, algorithm=algorithm, sparsify_first=True)
    x = torch.randn(shape, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16  # as autocast runs the conv/linear SWAT replaces
    g = torch.randn_like(y)
    y.backward(g)
    weight = model.get_parameter("0.weight")
    assert weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    # masks of W and X on the float32 tensors the sites see, products on bfloat16 operands; meProp's
    # G_s on the bfloat16 gradient. Tolerance: one bfloat16 rounding (8 bits) of sums that two kernels
    # may accumulate in other orders
    ref = ref_layer(kind, x.detach(), module.weight.detach(), module.bias.detach(), g, algorithm, 0.4, "nchw",
                    compute_dtype=torch.bfloat16, **conv_kwargs)
    for actual, expected in ((y, ref["y"]), (x.grad, ref["dx"]), (weight.grad, ref["dw"])):
        scale = float(expected.abs().max())
        torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-2, atol=2e-2 * scale)


def test_autocast_training_step_keeps_non_finite_gradients_visible() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    x = torch.randn(4, 1, 8, 8)
    x[0, 0, 0, 0] = float("inf")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), torch.tensor([1, 2, 3, 4]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert not all(torch.isfinite(g).all() for g in grads)  # what GradScaler's inf check looks for


# ---------------------------------------------------------------------------------------- edge inputs


@pytest.mark.parametrize("kernel", ["masked", "compressed"])
def test_empty_batch_behaves_as_dense_pytorch(kernel: str) -> None:
    model = swat_fx.transform(_net(), 0.7, granularity="chw", kernel=kernel)
    dense = copy.deepcopy(_net())
    x = torch.randn(0, 1, 8, 8)
    y = model(x)
    assert y.shape == dense(x).shape == (0, 10)
    F.cross_entropy(y, torch.zeros(0, dtype=torch.long)).backward()  # a NaN loss, as in dense PyTorch


def test_batch_of_one_single_weight_layer_and_extreme_sparsity() -> None:
    one = swat_fx.transform(nn.Sequential(nn.Linear(1, 1)), 0.5, sparsify_first=True)
    y = one(torch.randn(1, 1))
    y.sum().backward()
    assert one.get_parameter("0.weight").grad.shape == (1, 1)
    extreme = swat_fx.transform(_net(), 0.999)
    extreme(torch.randn(1, 1, 8, 8)).sum().backward()
    site = extreme.get_submodule("swat.2.w_topk")
    assert float(site.density) == pytest.approx(2 / (16 * 8 * 9))  # k = ceil(0.001 n) = 2 of 1152


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
@pytest.mark.parametrize("kernel", ["masked", "compressed"])
def test_non_contiguous_and_channels_last_inputs_give_the_same_gradients(layout: str, kernel: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(64, 5))
    model = swat_fx.transform(net, 0.7, granularity="chw", sparsify_first=True, kernel=kernel)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8)
    odd = x.transpose(2, 3).contiguous().transpose(2, 3) if layout == "transposed" else x.to(
        memory_format=torch.channels_last)
    assert torch.equal(odd, x) and not odd.is_contiguous()
    model(x).square().sum().backward()
    twin(odd).square().sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------- where an iteration ends, robustly


def _steps(model: nn.Module) -> set[int]:
    return {int(site.step) for _, site in swat_fx.contract.sites(model)}


@pytest.mark.parametrize("algorithm", ["swat", "meprop"])
def test_a_forward_without_backward_joins_the_next_iteration_and_the_schedule_goes_on(algorithm: str) -> None:
    model = swat_fx.transform(_net(), 0.7, algorithm=algorithm, period=2)
    x = torch.randn(4, 1, 8, 8)
    model(x)  # a shape check in train mode: no backward follows
    with pytest.raises(RuntimeError):
        model(x[:, :, :3])  # an exception mid-forward
    for _ in range(5):
        model(x).sum().backward()
    assert _steps(model) == {5}
    assert not any(site.threshold.isinf().any() for _, site in swat_fx.contract.sites(model))


def test_a_loss_on_one_of_several_outputs_and_frozen_sparse_layers_end_iterations() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(x).relu()
            return self.a(h), self.b(h)

    heads = swat_fx.transform(TwoHeads(), 0.5, sparsify_first=True)
    for _ in range(3):
        heads(torch.randn(4, 8))[0].sum().backward()
    assert _steps(heads) == {3}
    probe = swat_fx.transform(_net(), 0.7, sparsify_last=False)  # frozen SWAT layers, a trained linear head
    for name, p in probe.named_parameters():
        p.requires_grad_(name.startswith("5."))
    for _ in range(3):
        probe(torch.randn(4, 1, 8, 8)).sum().backward()
    assert _steps(probe) == {3}


@pytest.mark.parametrize("use_reentrant", [False])  # reentrant: see the README (last call's threshold kept)
def test_a_block_used_twice_with_checkpointing_changes_nothing(use_reentrant: bool) -> None:
    torch.manual_seed(0)
    block = swat_fx.transform(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), 0.5, period=2,
                              granularity="chw", sparsify_first=True)
    twin = copy.deepcopy(block)

    def steps(model: nn.Module, checkpointed: bool) -> dict[str, torch.Tensor]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(2)
        for _ in range(5):
            x = torch.randn(4, 6, generator=generator, requires_grad=True)
            twice = (lambda t: checkpoint(model, t, use_reentrant=use_reentrant)) if checkpointed else model
            optimizer.zero_grad()
            twice(twice(x)).square().sum().backward()
            optimizer.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    _assert_same_state(steps(block, True), steps(twin, False))
    assert _steps(block) == {5}


def test_loading_a_checkpoint_in_the_middle_of_an_iteration_resumes_exactly() -> None:
    model = swat_fx.transform(_net(), 0.7, granularity="chw", period=3)
    _train(model, lambda m, x: m(x), steps=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _train(copy.deepcopy(model), lambda m, x: m(x), steps=4)
    fresh = swat_fx.transform(_net(), 0.7, granularity="chw", period=3)
    fresh(torch.randn(2, 1, 8, 8))  # a forward before loading (a summary, a shape check)
    fresh.load_state_dict(saved)
    _assert_same_state(_train(fresh, lambda m, x: m(x), steps=4), expected)


def test_an_overflow_at_a_refresh_does_not_silence_the_next_steps() -> None:
    model = swat_fx.transform(_net(), 0.7, algorithm="meprop", period=4)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().mul(float("inf")).backward()  # stored gradient thresholds would be inf
    model.zero_grad()
    model(x).sum().backward()
    assert all(torch.isfinite(site.threshold).all() for _, site in swat_fx.contract.sites(model))
    assert model.get_parameter("2.weight").grad.abs().sum() > 0


def test_accumulate_nests() -> None:
    model = swat_fx.transform(_net(), 0.7)
    with swat_fx.accumulate(model):
        for _ in range(2):
            with swat_fx.accumulate(model):
                model(torch.randn(2, 1, 8, 8)).sum().backward()
        model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert _steps(model) == {1}
