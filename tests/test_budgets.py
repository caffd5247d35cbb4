"""Layer budgets (SPEC §4): first/last rules, ERK, per-layer overrides."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn
from reference import keep_count

import swat_fx
from swat_fx import models


def _sparsities(model: nn.Module) -> dict[str, float]:
    return {info.name: info.sparsity for info in swat_fx.layers(model)}


def test_first_layer_stays_dense_by_default() -> None:
    transformed = swat_fx.transform(models.resnet18(num_classes=10, stem="cifar"), 0.7)
    infos = swat_fx.layers(transformed)
    assert infos[0].name == "conv1" and not infos[0].sites and infos[0].sparsity == 0.0
    assert all(info.sparsity == 0.7 and info.sites for info in infos[1:])
    assert len(infos) == 21
    assert "self.conv1(" in transformed.code  # the dense first layer is left as it was


def test_sparsify_first_and_last_flags() -> None:
    model = models.mlp()
    both = _sparsities(swat_fx.transform(model, 0.5, sparsify_first=True))
    assert set(both.values()) == {0.5}
    no_last = list(_sparsities(swat_fx.transform(model, 0.5, sparsify_last=False)).values())
    assert no_last == [0.0, 0.5, 0.0]


def test_layer_sparsity_overrides_win() -> None:
    model = models.small_cnn()
    result = _sparsities(swat_fx.transform(model, 0.7, layer_sparsity={"conv1": 0.2, "fc": 0.0},
                                           distribution="erk"))
    assert result["conv1"] == 0.2 and result["fc"] == 0.0


def _erk_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(),            # tiny: ERK would give it density > 1
        nn.Conv2d(4, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 128, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10),
    )


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("model_name", ["erk_model", "resnet18_cifar", "mlp"])
def test_erk_keeps_the_target_number_of_weights(model_name: str, sparsity: float) -> None:
    model = _erk_model() if model_name == "erk_model" else models.build(model_name)
    infos = swat_fx.layers(swat_fx.transform(model, sparsity, distribution="erk", sparsify_first=True))
    sizes = [math.prod(info.weight_shape) for info in infos]
    kept = sum(keep_count(1 - info.sparsity, n) for info, n in zip(infos, sizes, strict=True))
    target = (1 - sparsity) * sum(sizes)
    assert abs(kept - target) <= len(infos), (kept, target)
    assert all(0.0 <= info.sparsity < 1.0 for info in infos)  # no layer above density 1


def test_erk_caps_small_layers_at_density_one() -> None:
    infos = swat_fx.layers(swat_fx.transform(_erk_model(), 0.9, distribution="erk", sparsify_first=True))
    assert infos[0].sparsity == 0.0  # capped: kept dense
    assert not infos[0].sites
    biggest = max(infos, key=lambda info: math.prod(info.weight_shape))
    assert biggest.sparsity > 0.9  # the others are sparser than the target to make up for it


def test_erk_raw_proportions() -> None:
    from swat_fx.passes import erk_densities

    shapes = [(64, 32, 3, 3), (128, 64, 3, 3), (10, 128)]
    densities = erk_densities(shapes, 0.2)
    raw = [sum(s) / math.prod(s) for s in shapes]
    assert densities[0] / densities[1] == pytest.approx(raw[0] / raw[1])
    kept = sum(d * math.prod(s) for d, s in zip(densities, shapes, strict=True))
    assert kept == pytest.approx(0.2 * sum(math.prod(s) for s in shapes))
