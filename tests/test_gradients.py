"""Y, dX, dW, db of transformed layers against the independent reference in `reference.py`."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference import ALGORITHM_SITES, GRANULARITIES, ref_layer, ref_mask

import swat_fx

SPARSITY = 0.6
ALL_SITES = ("fw_w", "fw_a", "bw_w", "bw_a", "bw_g")

# (kind, module factory, input shape, conv kwargs for the reference)
LAYER_CASES = {
    "conv1d": ("conv1d", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (3, 4, 17),
               {"stride": 2, "padding": 1, "dilation": 2, "groups": 2}),
    "conv2d": ("conv2d", lambda: nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2), (3, 4, 9, 11),
               {"stride": 2, "padding": 2, "dilation": 2, "groups": 2}),
    "conv2d_same_even": ("conv2d", lambda: nn.Conv2d(3, 5, (4, 3), padding="same", bias=False), (2, 3, 7, 6),
                         {"padding": "same"}),
    "conv3d": ("conv3d", lambda: nn.Conv3d(2, 4, 3, stride=(1, 2, 1), padding=1, groups=2), (2, 2, 5, 6, 4),
               {"stride": (1, 2, 1), "padding": 1, "groups": 2}),
    "linear_2d": ("linear", lambda: nn.Linear(12, 7), (5, 12), {}),
    "linear_3d": ("linear", lambda: nn.Linear(12, 7), (3, 4, 12), {}),
}


def _run(model: nn.Module, inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    outputs = model(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, grads)
    return [o.detach() for o in outputs]


def _close(actual: torch.Tensor | None, expected: torch.Tensor | None) -> None:
    if expected is None:
        assert actual is None or not actual.any()
        return
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-5, atol=1e-5)


def _check_single_layer(case: str, granularity: str, sites: frozenset[str], **options: object) -> None:
    kind, factory, shape, conv_kwargs = LAYER_CASES[case]
    torch.manual_seed(0)
    layer = factory()
    model = swat_fx.transform(nn.Sequential(layer), SPARSITY, granularity=granularity, sites=sites,
                              sparsify_first=True, **options)
    x = torch.randn(shape, requires_grad=True)
    y = model(x)
    g = torch.randn_like(y)
    y.backward(g)
    ref = ref_layer(kind, x.detach(), layer.weight.detach(), None if layer.bias is None else layer.bias.detach(),
                    g, sites, 1 - SPARSITY, granularity, **conv_kwargs)
    weight = model.get_parameter("0.weight")
    _close(y.detach(), ref["y"])
    _close(x.grad, ref["dx"])
    _close(weight.grad, ref["dw"])
    if layer.bias is not None:
        _close(model.get_parameter("0.bias").grad, ref["db"])


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_SITES))
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_algorithm_and_granularity_matches_reference(case: str, algorithm: str, granularity: str) -> None:
    _check_single_layer(case, granularity, ALGORITHM_SITES[algorithm])


KERNEL_CASES = [(kernel, granularity) for kernel in ("masked", "compressed") for granularity in GRANULARITIES]
KERNEL_CASES.append(("compact", "filter"))


@pytest.mark.parametrize(("kernel", "granularity"), KERNEL_CASES)
@pytest.mark.parametrize("algorithm", ["swat", "saw"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_kernel_matches_reference(case: str, algorithm: str, kernel: str, granularity: str) -> None:
    """The fast paths (compressed storage, compact structured products) against the plain reference."""
    _check_single_layer(case, granularity, ALGORITHM_SITES[algorithm], kernel=kernel)


SITE_SUBSETS = [frozenset(c) for r in range(1, 6) for c in itertools.combinations(ALL_SITES, r)]


@pytest.mark.parametrize("sites", SITE_SUBSETS, ids=lambda s: "+".join(sorted(s)))
@pytest.mark.parametrize("case", ["conv2d", "linear_3d"])
def test_every_site_combination_matches_reference(case: str, sites: frozenset[str]) -> None:
    _check_single_layer(case, "chw", sites)


class FunctionalNet(nn.Module):
    """F.conv2d, F.linear, x @ W.T and torch.matmul(x, W) on parameters of the root module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_w = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.conv_b = nn.Parameter(torch.randn(6))
        self.fc_w = nn.Parameter(torch.randn(5, 24))
        self.fc_b = nn.Parameter(torch.randn(5))
        self.proj_t = nn.Parameter(torch.randn(5, 4))  # stored [in, out]: used as x @ W
        self.head_w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = F.conv2d(x, self.conv_w, self.conv_b, stride=2, padding=1)
        f = F.linear(c.flatten(1), self.fc_w, self.fc_b)
        p = torch.matmul(f, self.proj_t)
        h = p @ self.head_w.T
        return c, f, p, h


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_SITES))
def test_functional_calls_on_parameters_match_reference(algorithm: str) -> None:
    """Each output's gradient is given independently, so each op is checked against its own reference."""
    torch.manual_seed(1)
    net = FunctionalNet()
    model = swat_fx.transform(net, SPARSITY, algorithm=algorithm, sparsify_first=True)
    names = [info.name for info in swat_fx.layers(model)]
    assert names == ["conv_w", "fc_w", "proj_t", "head_w"]
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    c, f, p, h = model(x)
    grads = [torch.randn_like(t) for t in (c, f, p, h)]
    # detach the chain so each op sees its own upstream gradient only
    inputs = [x.detach(), c.detach().flatten(1), f.detach(), p.detach()]
    sites, d = ALGORITHM_SITES[algorithm], 1 - SPARSITY
    refs = [
        ref_layer("conv2d", inputs[0], net.conv_w.detach(), net.conv_b.detach(), grads[0], sites, d, "nchw",
                  stride=2, padding=1),
        ref_layer("linear", inputs[1], net.fc_w.detach(), net.fc_b.detach(), grads[1], sites, d, "nchw"),
        ref_layer("linear", inputs[2], net.proj_t.detach().t(), None, grads[2], sites, d, "nchw"),
        ref_layer("linear", inputs[3], net.head_w.detach(), None, grads[3], sites, d, "nchw"),
    ]
    for out, ref in zip((c, f, p, h), refs, strict=True):
        _close(out.detach(), ref["y"])
    # Re-run with the ops decoupled to compare gradients one op at a time.
    for index, (param, ref) in enumerate(zip(("conv_w", "fc_w", "proj_t", "head_w"), refs, strict=True)):
        model.zero_grad()
        outs = model(x)
        outs[index].backward(grads[index], inputs=[model.get_parameter(param)])
        expected = ref["dw"].t() if param == "proj_t" else ref["dw"]
        _close(model.get_parameter(param).grad, expected)
    model.zero_grad()
    x.grad = None
    model(x)[0].backward(grads[0])
    _close(x.grad, refs[0]["dx"])
    _close(model.get_parameter("conv_b").grad, refs[0]["db"])


class SharedWeightNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 8))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.linear(a, self.w), F.linear(b, self.w)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_SITES))
def test_weight_shared_by_two_call_sites(algorithm: str) -> None:
    torch.manual_seed(2)
    net = SharedWeightNet()
    model = swat_fx.transform(net, SPARSITY, algorithm=algorithm, sparsify_first=True)
    assert [info.name for info in swat_fx.layers(model)] == ["w", "w@1"]
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    ya, yb = model(a, b)
    ga, gb = torch.randn_like(ya), torch.randn_like(yb)
    torch.autograd.backward((ya, yb), (ga, gb))
    sites, d, w = ALGORITHM_SITES[algorithm], 1 - SPARSITY, net.w.detach()
    ref_a = ref_layer("linear", a.detach(), w, None, ga, sites, d, "nchw")
    ref_b = ref_layer("linear", b.detach(), w, None, gb, sites, d, "nchw")
    _close(ya.detach(), ref_a["y"])
    _close(yb.detach(), ref_b["y"])
    _close(a.grad, ref_a["dx"])
    _close(b.grad, ref_b["dx"])
    _close(model.get_parameter("w").grad, ref_a["dw"] + ref_b["dw"])


@pytest.mark.parametrize("algorithm", ["swat", "saw"])
def test_weight_gradient_is_dense(algorithm: str) -> None:
    """Weights dropped by the Top-K still receive gradient: the update is dense (no pruning)."""
    torch.manual_seed(3)
    layer = nn.Conv2d(8, 16, 3, padding=1)
    model = swat_fx.transform(nn.Sequential(layer), 0.9, algorithm=algorithm, sparsify_first=True)
    model(torch.randn(4, 8, 6, 6)).square().sum().backward()
    dropped = ~ref_mask(layer.weight.detach(), 0.1, "nchw", "weight", "conv")
    assert dropped.float().mean() > 0.85
    assert (model.get_parameter("0.weight").grad[dropped] != 0).float().mean() > 0.99


def test_double_precision_is_exact() -> None:
    """In float64 the kernels and the reference agree to rounding; `.to(dtype)` converts everything."""
    torch.manual_seed(4)
    layer = nn.Conv2d(4, 6, 3, padding=1).double()
    model = swat_fx.transform(nn.Sequential(layer), 0.5, sparsify_first=True).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = model(x)
    g = torch.randn_like(y)
    y.backward(g)
    ref = ref_layer("conv2d", x.detach(), layer.weight.detach(), layer.bias.detach(), g,
                    ALGORITHM_SITES["swat"], 0.5, "nchw", padding=1)
    torch.testing.assert_close(y.detach(), ref["y"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref["dx"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.get_parameter("0.weight").grad, ref["dw"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_SITES))
def test_two_layers_with_inplace_relu_between(algorithm: str) -> None:
    """G of the first layer is dL/dY1 even though an in-place ReLU overwrites Y1 (meProp's hook)."""
    torch.manual_seed(5)
    first, second = nn.Linear(10, 12), nn.Linear(12, 6)
    model = swat_fx.transform(nn.Sequential(first, nn.ReLU(inplace=True), second), SPARSITY,
                              algorithm=algorithm, sparsify_first=True)
    x = torch.randn(4, 10)
    y = model(x)
    g = torch.randn_like(y)
    y.backward(g)
    sites, d = ALGORITHM_SITES[algorithm], 1 - SPARSITY
    with torch.no_grad():
        y1 = ref_layer("linear", x, first.weight, first.bias, torch.zeros(4, 12), sites, d, "nchw")["y"]
        ref2 = ref_layer("linear", y1.relu(), second.weight, second.bias, g, sites, d, "nchw")
        ref1 = ref_layer("linear", x, first.weight, first.bias, ref2["dx"] * (y1 > 0), sites, d, "nchw")
    _close(y.detach(), ref2["y"])
    _close(model.get_parameter("2.weight").grad, ref2["dw"])
    _close(model.get_parameter("0.weight").grad, ref1["dw"])
    _close(model.get_parameter("0.bias").grad, ref1["db"])


def test_padding_mode_pads_before_the_sparse_conv() -> None:
    """nn.Conv2d(padding_mode="reflect") pads first; the SWAT conv's input X is the padded tensor."""
    torch.manual_seed(6)
    layer = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    model = swat_fx.transform(nn.Sequential(layer), SPARSITY, sparsify_first=True)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = model(x)
    g = torch.randn_like(y)
    y.backward(g)
    x0 = x.detach().requires_grad_()
    padded = F.pad(x0, (1, 1, 1, 1), mode="reflect")
    ref = ref_layer("conv2d", padded.detach(), layer.weight.detach(), layer.bias.detach(), g,
                    ALGORITHM_SITES["swat"], 1 - SPARSITY, "nchw")
    (expected_dx,) = torch.autograd.grad(padded, x0, ref["dx"])
    _close(y.detach(), ref["y"])
    _close(model.get_parameter("0.weight").grad, ref["dw"])
    _close(x.grad, expected_dx)


@pytest.mark.parametrize("algorithm", ["dense", "saw", "meprop"])
def test_dense_forward_algorithms_match_the_original_model_exactly(algorithm: str) -> None:
    """Where the forward computation is the same as dense PyTorch, the result is bit-identical."""
    torch.manual_seed(7)
    from swat_fx import models

    model = models.small_cnn().eval()
    transformed = swat_fx.transform(model, 0.9, algorithm=algorithm).eval()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(transformed(x), model(x))


# Layers whose weights and activations are large enough (>= 65,536 entries) for the compiled CPU
# kernels: the radix select, the fused threshold pass, compressed storage and the bit-mask ReLU.
LARGE_CASES = {
    "conv2d": ("conv2d", lambda: nn.Conv2d(64, 128, 3, padding=1), (2, 64, 24, 24), {"padding": 1}),
    "linear": ("linear", lambda: nn.Linear(300, 400), (3, 80, 300), {}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["masked", "compressed"])
@pytest.mark.parametrize("granularity", ["nchw", "chw"])
@pytest.mark.parametrize("algorithm", ["swat", "saw", "meprop"])
@pytest.mark.parametrize("case", sorted(LARGE_CASES))
def test_the_compiled_paths_match_the_reference(case: str, algorithm: str, granularity: str, kernel: str,
                                               dtype: torch.dtype) -> None:
    kind, factory, shape, conv_kwargs = LARGE_CASES[case]
    torch.manual_seed(0)
    layer = factory().to(dtype)
    model = swat_fx.transform(nn.Sequential(nn.ReLU(), layer), SPARSITY, granularity=granularity,
                              algorithm=algorithm, kernel=kernel, sparsify_first=True)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    y = model(x)
    g = torch.randn_like(y)
    y.backward(g)
    relu_x = torch.relu(x.detach())
    ref = ref_layer(kind, relu_x, layer.weight.detach(), layer.bias.detach(), g, algorithm, 1 - SPARSITY,
                    granularity, **conv_kwargs)
    torch.testing.assert_close(y.detach(), ref["y"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.get_parameter("1.weight").grad, ref["dw"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, torch.where(x.detach() > 0, ref["dx"], torch.zeros((), dtype=dtype)),
                               rtol=1e-5, atol=1e-5)
