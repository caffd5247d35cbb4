"""Every model of `swat_fx.models` trains with SWAT; SWAT at 70 % learns digits about as well as dense."""

from __future__ import annotations

import pytest
import torch

import swat_fx
from swat_fx import models
from swat_fx.lab.cli import main
from swat_fx.lab.data import load_digits
from swat_fx.lab.training import train

SMALL_INPUTS = {"resnet18": 64, "resnet34": 64, "resnet50": 64, "vgg16_bn": 64, "densenet121": 64,
                "wide_resnet50_2": 64}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("algorithm", ["swat", "meprop"])
def test_every_model_transforms_and_trains(name: str, algorithm: str) -> None:
    torch.manual_seed(0)
    model = models.build(name)
    transformed = swat_fx.transform(model, 0.8, algorithm=algorithm)
    shape = list(models.default_input_shape(name))
    shape[0] = 2
    if name in SMALL_INPUTS:
        shape[-2:] = [SMALL_INPUTS[name]] * 2
    x = torch.randn(shape)
    out = transformed(x)
    out.square().mean().backward()
    infos = swat_fx.layers(transformed)
    assert sum(info.sparsified for info in infos) == len(infos) - 1  # all but the first layer
    grads = [p.grad for p in transformed.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    transformed.eval()
    with torch.no_grad():
        assert transformed(x).shape == out.shape


@pytest.mark.slow
def test_swat_70_on_digits_is_within_3_points_of_dense() -> None:
    data = load_digits(seed=0)
    accuracy = {}
    for label, sparsity in (("dense", None), ("swat", 0.7)):
        torch.manual_seed(0)
        model = models.small_cnn()
        if sparsity is not None:
            model = swat_fx.transform(model, sparsity)
        accuracy[label] = train(model, data, epochs=30, seed=0, progress=False).accuracy
    assert accuracy["dense"] > 0.95
    assert accuracy["swat"] >= accuracy["dense"] - 0.03, accuracy


def test_train_command_prints_both_accuracies_and_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "swat 70%" in out and "test accuracy" in out
    assert "conv2" in out and "0.300" in out


def test_train_command_rejects_bad_sparsity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--sparsity", "1.2", "--quiet"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
