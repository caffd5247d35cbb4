"""BatchNorm after a compact conv, run on the kept channels only (`kernels.batch_norm`).

It must be `bn(y)` bit for bit (outputs, running statistics, gradients), and the whole model must
still match the independent reference (tests/reference_models.py, plain BatchNorm modules).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference_models import reference_model

import swat_fx
from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.operands import KeptFilters

SPARSITY = 0.75


class ConvBnNet(nn.Module):
    """Bias-free convs each followed by a BatchNorm (2-D and 1-D), as in ResNets."""

    def __init__(self, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8, momentum=momentum)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12, momentum=momentum)
        self.conv3 = nn.Conv1d(12, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm1d(8, momentum=momentum)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x.flatten(2))))
        return self.fc(x.mean(2))


def _randomise_batch_norms(model: nn.Module) -> None:
    """Affine parameters and running statistics away from their initial values."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.weight.normal_()
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)


def _plain_batch_norms(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorms carry a (no-op) forward pre-hook: `kernels.batch_norm` then calls the
    module itself, so the copy runs the plain BatchNorm on every channel."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module) in kernels.PLAIN_BATCH_NORMS:
            module.register_forward_pre_hook(lambda module, args: None)
    return plain


def _kept_channel_batch_norms(out: torch.Tensor) -> int:
    """How many kept-channel BatchNorms the autograd graph of `out` went through."""
    seen, stack, count = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == "_KeptChannelBatchNormBackward"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bit_identical_to_the_module_over_training_steps(dtype: torch.dtype, momentum: float | None) -> None:
    torch.manual_seed(0)
    net = ConvBnNet(momentum).to(dtype)
    _randomise_batch_norms(net)
    fast = swat_fx.transform(net, SPARSITY, granularity="filter", sparsify_first=True, period=2)
    assert "kernels_batch_norm" in fast.code
    plain = _plain_batch_norms(fast)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (fast, plain)]
    for step in range(4):
        x = torch.randn(4, 3, 6, 6, dtype=dtype)
        outputs = []
        for model, optimizer in zip((fast, plain), optimizers, strict=True):
            optimizer.zero_grad()
            out = model(x)
            assert _kept_channel_batch_norms(out) == (3 if model is fast else 0)
            out.square().sum().backward()
            outputs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
            optimizer.step()
        assert torch.equal(outputs[0][0], outputs[1][0]), step
        for name, grad in outputs[1][1].items():
            assert torch.equal(outputs[0][1][name], grad), (step, name)
        fast_state, plain_state = _state(fast), _state(plain)
        for name, value in plain_state.items():
            assert torch.equal(fast_state[name], value), (step, name)
    fast.eval(), plain.eval()
    x = torch.randn(4, 3, 6, 6, dtype=dtype)
    assert torch.equal(fast(x), plain(x))


def test_the_whole_model_matches_the_reference() -> None:
    """Gradients of every parameter, BatchNorm affine ones included, and the running statistics,
    against the reference model (reference SWAT products, plain BatchNorm modules)."""
    torch.manual_seed(1)
    net = ConvBnNet().double()
    _randomise_batch_norms(net)
    transformed = swat_fx.transform(net, SPARSITY, granularity="filter", sparsify_first=True)
    reference = reference_model(net, "swat", 1 - SPARSITY, "filter")
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    for model in (transformed, reference):
        model(x).square().sum().backward()
    expected = dict(reference.named_parameters())
    for name, p in transformed.named_parameters():
        torch.testing.assert_close(p.grad, expected[name].grad, rtol=1e-9, atol=1e-9, msg=name)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(transformed.state_dict()[name], value, rtol=1e-12, atol=0, msg=name)


def _zero_channel_output(channels: int, kept: torch.Tensor) -> torch.Tensor:
    y = torch.zeros(4, channels, 5, 5, dtype=torch.float64)
    y[:, kept] = torch.randn(4, len(kept), 5, 5, dtype=torch.float64)
    return y.requires_grad_()


@pytest.mark.parametrize("options", [{"affine": False}, {"track_running_stats": False}, {"momentum": None}])
def test_kernel_equals_the_module_for_every_batch_norm_setting(options: dict) -> None:
    torch.manual_seed(2)
    kept = torch.tensor([1, 4, 5])
    bn = nn.BatchNorm2d(6, **options).double()
    plain = copy.deepcopy(bn)
    y = _zero_channel_output(6, kept)
    operand = KeptFilters(torch.zeros(6, 3, 1, 1), kept)
    for _ in range(2):  # momentum=None averages over the batches counted so far
        out, expected = kernels.batch_norm(y, bn, operand), plain(y)
        assert type(out.grad_fn).__name__ == "_KeptChannelBatchNormBackward"
        assert torch.equal(out, expected)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, [y, *bn.parameters()], g)
        expected_grads = torch.autograd.grad(expected, [y, *plain.parameters()], g)
        assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(bn.state_dict().values(), plain.state_dict().values(),
                                                     strict=True))


def test_double_backward_equals_the_modules() -> None:
    torch.manual_seed(3)
    kept = torch.tensor([0, 2])
    bn = nn.BatchNorm2d(5).double()
    plain = copy.deepcopy(bn)
    operand = KeptFilters(torch.zeros(5, 3, 1, 1), kept)
    data = _zero_channel_output(5, kept).detach()
    g = torch.randn_like(data)
    second = []
    for module, call in ((bn, lambda y: kernels.batch_norm(y, bn, operand)), (plain, plain)):
        y = data.clone().requires_grad_()
        (dy,) = torch.autograd.grad(call(y), y, g, create_graph=True)
        second.append(torch.autograd.grad(dy.square().sum(), [y, module.weight]))
    for ours, theirs in zip(*second, strict=True):  # autograd's double-backward formula: equal up to rounding
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_other_cases_call_the_module() -> None:
    """Eval mode, a module with forward or backward hooks, a global module hook and an operand that is
    not kept filters run `bn(y)` itself; bad inputs get the module's own errors."""
    kept = torch.tensor([1, 3])
    operand = KeptFilters(torch.zeros(4, 2, 1, 1), kept)
    y = _zero_channel_output(4, kept)
    calls = []
    bn = nn.BatchNorm2d(4).double()
    bn.register_forward_hook(lambda module, args, out: calls.append("forward"))
    bn.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append("backward"))
    kernels.batch_norm(y, bn, operand).sum().backward()
    assert calls == ["forward", "backward"]
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: calls.append("global"))
    try:
        out = kernels.batch_norm(y, nn.BatchNorm2d(4).double(), operand)
    finally:
        handle.remove()
    assert calls[-1] == "global" and type(out.grad_fn).__name__ != "_KeptChannelBatchNormBackward"
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        kernels.batch_norm(torch.zeros(1, 4, 1, 1, dtype=torch.float64), nn.BatchNorm2d(4).double(), operand)
    with pytest.raises(ValueError, match="4D"):
        kernels.batch_norm(y.detach()[:, :, 0], nn.BatchNorm2d(4).double(), operand)
    bn = nn.BatchNorm2d(4).double().eval()
    assert torch.equal(kernels.batch_norm(y, bn, operand), bn(y))
    bn.train()
    before = bn.num_batches_tracked.clone()
    dense = kernels.batch_norm(y, bn, y.detach())  # a zero-filled operand: the module on every channel
    assert bn.num_batches_tracked == before + 1 and dense.shape == y.shape


def test_the_pass_rewrites_only_batch_norms_after_bias_free_compact_convs() -> None:
    torch.manual_seed(5)
    net = ConvBnNet()
    net.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=True)  # a bias: its dropped channels are not zero
    code = swat_fx.transform(net, SPARSITY, granularity="filter", sparsify_first=True).code
    assert code.count("kernels_batch_norm(") == 2  # bn1 and bn3
    assert "self.bn2(" in code
    masked = swat_fx.transform(ConvBnNet(), SPARSITY, granularity="filter", kernel="masked").code
    assert "kernels_batch_norm(" not in masked
    saw = swat_fx.transform(ConvBnNet(), SPARSITY, granularity="filter", algorithm="saw").code
    assert "kernels_batch_norm(" not in saw  # SAW's forward is dense: no zero channels


class InPlaceBeforeBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.add_(1.0)  # the dropped channels are no longer zeros
        return self.bn(y)


def test_an_in_place_op_between_conv_and_batch_norm_keeps_the_module() -> None:
    torch.manual_seed(6)
    net = InPlaceBeforeBatchNorm().double()
    transformed = swat_fx.transform(net, SPARSITY, granularity="filter", sparsify_first=True)
    assert "kernels_batch_norm(" not in transformed.code
    reference = reference_model(net, "swat", 1 - SPARSITY, "filter")
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(transformed(x), reference(x), rtol=1e-9, atol=1e-9)


class CheckpointedConvBn(nn.Module):
    """A conv -> BatchNorm block inside `torch.utils.checkpoint` (recomputed in the backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ConvBnNet()

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net.bn2(self.net.conv2(F.relu(self.net.bn1(self.net.conv1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False).mean((2, 3))


def test_checkpoint_regions_run_the_kept_channel_batch_norm_as_the_module() -> None:
    """Inside an outlined checkpoint region the kernel gets the module as a region input; the recompute
    updates running statistics a second time, exactly as the module does under checkpointing."""
    torch.manual_seed(7)
    net = CheckpointedConvBn().double()
    _randomise_batch_norms(net)
    fast = swat_fx.transform(net, SPARSITY, granularity="filter", sparsify_first=True, period=2)
    plain = _plain_batch_norms(fast)
    for step in range(3):
        x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
        outs = [model(x) for model in (fast, plain)]
        assert _kept_channel_batch_norms(outs[0]) == 2
        for out in outs:
            out.square().sum().backward()
        assert torch.equal(outs[0], outs[1]), step
        for (name, p), q in zip(fast.named_parameters(), plain.parameters(), strict=True):
            if p.grad is not None or q.grad is not None:  # conv3, bn3 and fc are not used
                assert torch.equal(p.grad, q.grad), (step, name)
        assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values(),
                                                     strict=True)), step
