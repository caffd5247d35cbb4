"""`torch.compile(transformed, fullgraph=True)` trains as the eager model does (the same thresholds,
steps and gradients), at period 1 and with periodic Top-K, and hands its schedule back to eager mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import swat_fx
from swat_fx.contract import is_state_key


class Net(nn.Module):
    def __init__(self, norm: bool = True) -> None:
        """`norm=False`: no BatchNorm. (Filter SWAT drops whole filters, and BatchNorm's gradient on such a
        constant channel is 0/0-like: eager and inductor kernels then disagree, with or without SWAT.)"""
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


def _train(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """SGD steps; the gradients of each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    grads = []
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append({name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters()})
        optimizer.step()
    return grads


def _assert_trained_alike(expected: list[dict[str, torch.Tensor]], actual: list[dict[str, torch.Tensor]],
                          eager: nn.Module, compiled_model: nn.Module, rtol: float, atol: float,
                          state_atol: float) -> None:
    """Each step's gradients and the final SWAT state (thresholds, steps, densities) equal eager's."""
    for step, (want, got) in enumerate(zip(expected, actual, strict=True)):
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=rtol, atol=atol, msg=f"step {step}: {name}")
    for key, value in eager.state_dict().items():
        if is_state_key(key):
            torch.testing.assert_close(compiled_model.state_dict()[key], value, rtol=rtol, atol=state_atol, msg=key)


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=generator),
             torch.randint(0, 10, (4,), generator=generator)) for _ in range(count)]


@pytest.mark.parametrize(("period", "options"), [
    (1, {}), (3, {}), (2, {"granularity": "chw"}), (2, {"granularity": "filter", "norm": False}),
    (1, {"algorithm": "saw", "kernel": "compressed"}), (1, {"sites": {"fw_a", "bw_w"}})])
def test_fullgraph_compiled_training_equals_eager(period: int, options: dict, fullgraph: bool = True) -> None:
    torch.manual_seed(0)
    options = dict(options)
    net = Net(options.pop("norm", True)).double()
    eager = swat_fx.transform(net, 0.7, period=period, sparsify_first=True, **options)
    compiled_model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=fullgraph)
    batches = _batches(5)
    for step, (expected, actual) in enumerate(zip(_train(eager, batches), _train(compiled, batches), strict=True)):
        for name, grad in expected.items():
            torch.testing.assert_close(actual[name], grad, rtol=1e-9, atol=1e-10, msg=f"step {step}: {name}")
    eager_state, compiled_state = eager.state_dict(), compiled_model.state_dict()
    for key, value in eager_state.items():
        if is_state_key(key):  # steps, stored thresholds and achieved densities
            torch.testing.assert_close(compiled_state[key], value, rtol=1e-9, atol=1e-12, msg=key)


def test_eager_steps_after_compiled_ones_continue_the_schedule() -> None:
    torch.manual_seed(0)
    eager = swat_fx.transform(Net().double(), 0.7, period=3, sparsify_first=True)
    mixed = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(mixed, fullgraph=True)
    batches = _batches(6)
    expected = _train(eager, batches)
    actual = _train(compiled, batches[:4]) + _train(mixed, batches[4:])  # steps 5 and 6 in eager mode
    for step, (want, got) in enumerate(zip(expected, actual, strict=True)):
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-9, atol=1e-10, msg=f"step {step}: {name}")
    assert int(mixed.get_submodule("swat.conv2.w_topk").step) == 6


def test_meprop_compiles_with_a_graph_break_at_its_gradient_site() -> None:
    """meProp's site sparsifies G in a backward hook that writes the site's state, which a compiled
    graph cannot hold: it compiles (not `fullgraph`) and trains as eager does."""
    test_fullgraph_compiled_training_equals_eager(2, {"algorithm": "meprop"}, fullgraph=False)


class WideNet(nn.Module):
    """Groups of 73,728 entries: above `selection.MIN_SIZE`, so the compiled step runs the radix select op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(16, 64, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_compiled_steps_between_refreshes_skip_the_radix_select() -> None:
    """At period 3 the compiled graph selects at the refresh steps only (steps 1 and 4 of 5), and its
    gradients and state still equal eager's."""
    from unittest import mock

    from swat_fx import selection

    torch.manual_seed(0)
    eager = swat_fx.transform(WideNet().double(), 0.7, period=3, sparsify_first=True)
    compiled_model = copy.deepcopy(eager)
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(2, 16, 48, 48, dtype=torch.float64, generator=generator),
                torch.randint(0, 10, (2,), generator=generator)) for _ in range(5)]
    expected = _train(eager, batches)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    with mock.patch.object(selection, "kth_largest_magnitude", wraps=selection.kth_largest_magnitude) as select:
        actual = _train(compiled, batches)
    large_sites = 3  # conv1's X is 73,728 entries, conv2's W and X too; conv1's W and fc are small
    assert select.call_count == 2 * large_sites
    _assert_trained_alike(expected, actual, eager, compiled_model, rtol=1e-9, atol=1e-10, state_atol=1e-12)


def test_compiled_steps_select_from_the_last_threshold() -> None:
    """At period 1 the compiled graph hands each large site's bracket to the select op, which updates it
    in place: after the first step the radix passes run for fewer groups than there are selections,
    no step recompiles for it, and gradients and state equal eager's."""
    from unittest import mock

    from swat_fx import selection
    from swat_fx.contract import site_modules

    torch.manual_seed(0)
    eager = swat_fx.transform(WideNet(), 0.7, period=1, sparsify_first=True)
    compiled_model = copy.deepcopy(eager)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 48, 48, generator=generator)
    batches = [(x + 0.01 * torch.randn(x.shape, generator=generator), torch.randint(0, 10, (2,), generator=generator))
               for _ in range(5)]
    expected = _train(eager, batches)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(compiled_model, fullgraph=True)
    radix_rows = []
    radix = selection._radix_select

    def counted(compiled_kernels: object, bits: object, *args: object) -> object:
        radix_rows.append(bits.shape[0])
        return radix(compiled_kernels, bits, *args)

    with mock.patch.object(selection, "_radix_select", counted):
        actual = _train(compiled, batches)
    large_sites = 3  # conv1's X, conv2's W and X
    assert 0 < sum(radix_rows) < large_sites * len(batches)
    brackets = [site._bracket.previous for _, site in site_modules(compiled_model) if site._bracket.previous[0] >= 0]
    assert len(brackets) == large_sites
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # without, then with a stored threshold
    _assert_trained_alike(expected, actual, eager, compiled_model, rtol=1e-5, atol=1e-6, state_atol=1e-7)
