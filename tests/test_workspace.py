"""The eager kernels' scratch workspace: W_s / X_s rebuilt for one product go into one buffer a slot,
shared by every layer of a model, without changing a gradient or keeping anything autograd needs."""

from __future__ import annotations

import copy
import math
import pickle
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import swat_fx
from swat_fx.backends.eager.workspace import Slot, Workspace
from tests.reference import ref_mask

SPARSITY = 0.7


class TwoConvs(nn.Module):
    """Two convs of different sizes, so a reused buffer would hand the second product the first's data."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


def _model(kernel: str = "masked") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = TwoConvs().double()
    return net, swat_fx.transform(net, SPARSITY, sparsify_first=True, kernel=kernel)


def test_the_workspace_is_one_submodule_read_once_and_holds_no_state() -> None:
    net, model = _model()
    assert isinstance(model.swat_workspace, Workspace)
    assert model.code.count("self.swat_workspace") == 1
    assert model.code.count("workspace = swat_workspace") == 3  # conv1, conv2, fc
    assert list(model.state_dict()) == list(swat_fx.transform(net, SPARSITY, sparsify_first=True).state_dict())
    assert not any(k.startswith("swat_workspace") for k in model.state_dict())


@pytest.mark.parametrize("kernel", ["masked", "compressed"])
def test_the_workspace_holds_the_largest_weight_and_input_and_does_not_grow(kernel: str) -> None:
    _, model = _model(kernel)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    for _ in range(3):
        model.zero_grad()
        model(x).sum().backward()
        largest_weight = max(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
        largest_input = max(4 * 3 * 36, 4 * 8 * 36, 4 * 16 * 36)
        assert model.swat_workspace.nbytes == (largest_weight + largest_input) * 8
    model.swat_workspace.clear()
    assert model.swat_workspace.nbytes == 0


def test_every_layer_rebuilds_into_the_one_buffer_of_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once grown, the products read the workspace's memory, not tensors of their own."""
    _, model = _model()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)  # dX and dW in one call each
    read: dict[str, list[int]] = {"weight": [], "input": []}
    convolution, backward = torch.convolution, torch.ops.aten.convolution_backward

    def recording_convolution(x: torch.Tensor, w: torch.Tensor, *args: object) -> torch.Tensor:
        read["weight"].append(w.data_ptr())
        return convolution(x, w, *args)

    def recording_backward(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, *args: object) -> tuple:
        read["input"].append(x.data_ptr())
        read["weight"].append(w.data_ptr())
        return backward(g, x, w, *args)

    model(x).sum().backward()  # the first step grows each buffer to its largest operand
    monkeypatch.setattr(torch, "convolution", recording_convolution)
    monkeypatch.setattr(torch.ops.aten, "convolution_backward", recording_backward)
    model(x).sum().backward()
    workspace, cpu = model.swat_workspace, torch.device("cpu")
    weight_buffer = workspace.buffer(Slot.WEIGHT, torch.Size([1]), torch.float64, cpu).data_ptr()
    input_buffer = workspace.buffer(Slot.INPUT, torch.Size([1]), torch.float64, cpu).data_ptr()
    assert read["weight"] == [weight_buffer] * 4  # conv1, conv2 forward; conv2, conv1 backward
    assert read["input"] == [input_buffer] * 2
    assert weight_buffer != input_buffer


def test_nothing_is_taken_where_nothing_is_rebuilt_into_it() -> None:
    """Without the compiled kernels (float16 has none) the operands are new tensors, and the
    workspace stays empty rather than holding buffers nobody writes."""
    torch.manual_seed(0)
    model = swat_fx.transform(TwoConvs().half(), SPARSITY, sparsify_first=True)
    model(torch.randn(4, 3, 6, 6, dtype=torch.float16)).float().sum().backward()
    assert model.swat_workspace.nbytes == 0


def test_moving_the_model_releases_the_buffers() -> None:
    _, model = _model()
    model(torch.randn(2, 3, 6, 6, dtype=torch.float64)).sum().backward()
    assert model.swat_workspace.nbytes > 0
    model.float()
    assert model.swat_workspace.nbytes == 0


def _reference_grads(net: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Independent SWAT gradients of the two-conv model: masks from `tests.reference`, products from
    `torch.nn.grad`, chained by hand."""
    density = 1 - SPARSITY
    w1, w2, wf = (m.weight.detach() for m in (net.conv1, net.conv2, net.fc))
    w1s, w2s, wfs = (w * ref_mask(w, density, "nchw", "weight", layer) for w, layer in
                     ((w1, "conv"), (w2, "conv"), (wf, "linear")))
    a1 = torch.tanh(F.conv2d(x, w1s, padding=1))
    a2 = torch.tanh(F.conv2d(a1, w2s, padding=1))
    flat = a2.flatten(1)
    g_out = torch.ones(x.shape[0], wf.shape[0], dtype=x.dtype)
    grads = {"fc.weight": g_out.t() @ (flat * ref_mask(flat, density, "nchw", "input", "linear")),
             "fc.bias": g_out.sum(0)}
    g2 = (g_out @ wfs).view_as(a2) * (1 - a2**2)
    a1s = a1 * ref_mask(a1, density, "nchw", "input", "conv")
    grads["conv2.weight"] = torch.nn.grad.conv2d_weight(a1s, w2.shape, g2, padding=1)
    g1 = torch.nn.grad.conv2d_input(a1.shape, w2s, g2, padding=1) * (1 - a1**2)
    xs = x * ref_mask(x, density, "nchw", "input", "conv")
    grads["conv1.weight"] = torch.nn.grad.conv2d_weight(xs, w1.shape, g1, padding=1)
    return grads, torch.nn.grad.conv2d_input(x.shape, w1s, g1, padding=1)


@pytest.mark.parametrize("kernel", ["masked", "compressed"])
def test_layers_sharing_the_workspace_get_the_reference_gradients(kernel: str) -> None:
    net, model = _model(kernel)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    model(x).sum().backward()
    expected, expected_dx = _reference_grads(net, x.detach())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(x.grad, expected_dx, rtol=1e-10, atol=1e-12)


def test_a_double_backward_keeps_its_own_operands() -> None:
    """With create_graph, autograd keeps the rebuilt W_s of each product for the second backward: a
    shared buffer would give conv2's product conv1's weights."""
    net, model = _model()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    (dx**2).sum().backward()

    density = 1 - SPARSITY
    x_ref = x.detach().clone().requires_grad_()
    w1s, w2s, wfs = (m.weight.detach() * ref_mask(m.weight.detach(), density, "nchw", "weight", layer)
                     for m, layer in ((net.conv1, "conv"), (net.conv2, "conv"), (net.fc, "linear")))
    out = F.linear(torch.tanh(F.conv2d(torch.tanh(F.conv2d(x_ref, w1s, padding=1)), w2s, padding=1)).flatten(1),
                   wfs, net.fc.bias.detach())
    (dx_ref,) = torch.autograd.grad(out.sum(), x_ref, create_graph=True)
    (dx_ref**2).sum().backward()
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


def test_copies_start_empty_and_threads_get_buffers_of_their_own() -> None:
    _, model = _model()
    model(torch.randn(2, 3, 6, 6, dtype=torch.float64)).sum().backward()
    assert model.swat_workspace.nbytes > 0
    assert copy.deepcopy(model).swat_workspace.nbytes == 0
    assert pickle.loads(pickle.dumps(model)).swat_workspace.nbytes == 0

    workspace = Workspace()
    here = workspace.buffer(Slot.INPUT, torch.Size([4, 4]), torch.float32, torch.device("cpu"))
    there: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: there.append(
        workspace.buffer(Slot.INPUT, torch.Size([4, 4]), torch.float32, torch.device("cpu"))))
    thread.start()
    thread.join()
    assert there[0].data_ptr() != here.data_ptr()
    again = workspace.buffer(Slot.INPUT, torch.Size([2, 8]), torch.float32, torch.device("cpu"))
    assert again.data_ptr() == here.data_ptr() and again.shape == (2, 8)
    assert workspace.nbytes == math.prod((4, 4)) * 4
