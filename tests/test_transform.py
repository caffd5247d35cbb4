"""`swat_fx.transform` as a user meets it: an ordinary module, readable code, clear errors."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import swat_fx
from swat_fx import models


def test_input_model_is_not_modified() -> None:
    torch.manual_seed(0)
    model = models.small_cnn()
    before = copy.deepcopy(model.state_dict())
    modules_before = [type(m) for m in model.modules()]
    transformed = swat_fx.transform(model, 0.7)
    transformed(torch.randn(4, 1, 8, 8)).sum().backward()
    torch.optim.SGD(transformed.parameters(), lr=1.0).step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == modules_before
    assert all(p.grad is None for p in model.parameters())


def test_parameters_keep_their_names() -> None:
    model = models.resnet18(num_classes=10)
    transformed = swat_fx.transform(model, 0.7)
    original = dict(model.named_parameters())
    assert dict(transformed.named_parameters()).keys() == original.keys()
    assert {k for k in transformed.state_dict() if not k.startswith("swat.")} == set(model.state_dict())


def test_code_shows_the_sparsification_sites() -> None:
    code = swat_fx.transform(models.small_cnn(), 0.7).code
    assert "conv2_w_s = self.swat.conv2.w_topk(conv2_weight, format = Format.THRESHOLDED)" in code
    assert "conv2_x_s = self.swat.conv2.x_topk(" in code
    assert "weight_fwd = conv2_w_s, weight_bwd = conv2_w_s, input_bwd = conv2_x_s" in code
    meprop = swat_fx.transform(models.small_cnn(), 0.7, algorithm="meprop").code
    assert "self.swat.conv2.g_topk(" in meprop and "w_topk" not in meprop


def test_ordinary_module_behaviour() -> None:
    torch.manual_seed(1)
    transformed = swat_fx.transform(models.small_cnn(), 0.7)
    assert isinstance(transformed, torch.fx.GraphModule)
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop):
        optimizer = optimizer_class(transformed.parameters(), lr=1e-3)
        transformed(torch.randn(4, 1, 8, 8)).sum().backward()
        optimizer.step()
    double = copy.deepcopy(transformed).to(torch.float64)
    out = double(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64
    out.sum().backward()
    assert double.get_parameter("conv2.weight").grad.dtype == torch.float64
    buffer = io.BytesIO()
    torch.save(transformed.state_dict(), buffer)
    buffer.seek(0)
    clone = swat_fx.transform(models.small_cnn(), 0.7)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    transformed.eval()
    clone.eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(transformed(x), clone(x))


def test_config_object_and_keywords_agree() -> None:
    config = swat_fx.SwatConfig(sparsity=0.8, algorithm="saw", granularity="chw", period=5)
    a = swat_fx.transform(models.mlp(), config=config)
    b = swat_fx.transform(models.mlp(), 0.8, algorithm="saw", granularity="chw", period=5)
    assert a.code == b.code
    assert swat_fx.config_of(a) == swat_fx.config_of(b) == config
    assert swat_fx.config_of(swat_fx.transform(models.mlp(), config=config, sparsity=0.5)).sparsity == 0.5


def test_sites_option_builds_a_custom_algorithm() -> None:
    transformed = swat_fx.transform(models.small_cnn(), 0.5, sites={"fw_a", "bw_w"})
    info = swat_fx.layers(transformed)[1]
    assert info.sites == {"fw_a", "bw_w"} and info.activation_sparsity == 0.5
    assert swat_fx.config_of(transformed).name == "custom(bw_w,fw_a)"


def test_layers_reports_shapes_and_achieved_density() -> None:
    transformed = swat_fx.transform(models.small_cnn(), 0.7)
    x = torch.randn(4, 1, 8, 8)
    transformed(x).sum().backward()
    conv2 = swat_fx.layers(transformed, [x])[1]
    assert conv2.name == "conv2" and conv2.kind == "conv2d"
    assert conv2.weight_shape == (32, 16, 3, 3)
    assert conv2.input_shape == (4, 16, 8, 8) and conv2.output_shape == (4, 32, 8, 8)
    assert conv2.weight_sparsity == conv2.activation_sparsity == 0.7 and conv2.grad_sparsity == 0.0
    assert conv2.achieved["weight"] == pytest.approx(0.3, abs=1 / 4608)
    assert 0.3 <= conv2.achieved["input"] < 0.32  # ReLU zeros tie at the threshold only if d > nonzeros
    assert "conv2" in swat_fx.format_layers(swat_fx.layers(transformed))


def test_leaf_modules_and_concrete_args() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.gate = Gate()
            self.out = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor, scale: bool = True) -> torch.Tensor:
            x = self.gate(self.inp(x))
            return self.out(x * 2 if scale else x)

    with pytest.raises(swat_fx.SwatTraceError) as error:
        swat_fx.transform(Net(), 0.5)
    message = str(error.value)
    assert "module 'gate'" in message and "x.sum() > 0" in message
    assert "leaf_modules" in message and "concrete_args" in message and "example_inputs" in message
    assert "a Python `if`/loop depends on a tensor" in message
    with pytest.warns(UserWarning, match=r"leaves 1 of the 3 weight products of Net dense: 1 inside a leaf module"):
        by_type = swat_fx.transform(Net(), 0.5, leaf_modules=(Gate,), concrete_args={"scale": True})
    with pytest.warns(UserWarning, match=r"gate \(Gate\)"):
        by_name = swat_fx.transform(Net(), 0.5, leaf_modules=("gate",), concrete_args={"scale": False})
    assert [(i.name, i.sparsified) for i in swat_fx.layers(by_type)] == [("inp", False), ("gate", False),
                                                                        ("out", True)]
    assert swat_fx.layers(by_type)[0].dense_reason is swat_fx.DenseReason.FIRST_LAYER
    assert "mul" not in by_name.code and "mul" in by_type.code
    by_name(torch.randn(2, 8), False).sum().backward()


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(sparsity: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        swat_fx.transform(models.mlp(), sparsity)


def test_sparsity_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="number"):
        swat_fx.transform(models.mlp(), "0.5")


@pytest.mark.parametrize(("option", "value", "listed"), [
    ("algorithm", "sparse", "'swat', 'saw', 'meprop', 'dense'"),
    ("granularity", "nhwc", "'nchw', 'chw', 'hw', 'kernel', 'filter'"),
    ("sites", {"fw_w", "bw_x"}, "'fw_w', 'fw_a', 'bw_w', 'bw_a', 'bw_g'"),
    ("distribution", "random", "'uniform', 'erk'"),
])
def test_unknown_choice_lists_valid_values(option: str, value: object, listed: str) -> None:
    with pytest.raises(ValueError) as error:
        swat_fx.transform(models.mlp(), 0.5, **{option: value})
    assert listed in str(error.value)


def test_algorithm_and_sites_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        swat_fx.SwatConfig(algorithm="swat", sites={"fw_w"})


@pytest.mark.parametrize("period", [0, -3, 2.5])
def test_bad_period(period: object) -> None:
    with pytest.raises(ValueError, match="period"):
        swat_fx.SwatConfig(period=period)


def test_model_without_sparsifiable_op_warns_and_still_works() -> None:
    model = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU())
    with pytest.warns(UserWarning, match="no conv/linear-like product with a parameter"):
        transformed = swat_fx.transform(model, 0.5)
    x = torch.randn(3, 4)
    model.eval()
    transformed.eval()
    assert torch.equal(transformed(x), model(x))


def test_unknown_layer_sparsity_key_lists_close_matches() -> None:
    with pytest.raises(KeyError) as error:
        swat_fx.transform(models.small_cnn(), 0.5, layer_sparsity={"conv_2": 0.3})
    assert "conv_2" in str(error.value) and "conv2" in str(error.value)


def test_layer_sparsity_value_is_checked() -> None:
    with pytest.raises(ValueError, match=r"layer_sparsity\['fc'\]"):
        swat_fx.transform(models.small_cnn(), 0.5, layer_sparsity={"fc": 1.0})


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        swat_fx.transform(lambda x: x, 0.5)


def test_functional_module_without_warnings() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(F.linear(x, self.w))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transformed = swat_fx.transform(Functional(), 0.5, sparsify_first=True)
    assert "swat_fx_backends_eager_kernels_linear" in transformed.code


def test_config_survives_deepcopy() -> None:
    transformed = swat_fx.transform(models.small_cnn(), 0.6, granularity="chw")
    clone = copy.deepcopy(transformed)
    assert swat_fx.config_of(clone) == swat_fx.config_of(transformed) is not None
    assert [i.sparsity for i in swat_fx.layers(clone)] == [i.sparsity for i in swat_fx.layers(transformed)]
    assert swat_fx.config_of(models.small_cnn()) is None
