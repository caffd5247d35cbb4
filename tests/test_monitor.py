"""`swat_fx.monitor`: what it records equals what the tensors themselves say (computed here by sorting)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference import keep_count

import swat_fx
from swat_fx import models
from swat_fx.monitor import COLUMNS
from swat_fx.topk import TopK


def _kth_largest(t: torch.Tensor, density: float) -> float:
    flat = t.detach().abs().flatten().sort(descending=True).values
    return float(flat[keep_count(density, flat.numel()) - 1])


def _angle(t: torch.Tensor, kept: torch.Tensor) -> float:
    t, kept = t.double().flatten(), kept.double().flatten()
    return math.degrees(math.acos(min(1.0, float(t @ kept / (t.norm() * kept.norm())))))


def _capture_inputs(model: nn.Module) -> dict[tuple[str, str], list[torch.Tensor]]:
    """The tensor each weight/input site receives, per step (a hook of the test's own)."""
    seen: dict[tuple[str, str], list[torch.Tensor]] = {}
    for name, site in model.named_modules():
        if isinstance(site, TopK):
            key = (name.removeprefix("swat.").rsplit(".", 1)[0], site.role)
            seen[key] = []
            site.register_forward_pre_hook(lambda _, args, key=key: seen[key].append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("period", [1, 3])
def test_weight_and_input_records_match_the_tensors(period: int) -> None:
    torch.manual_seed(0)
    model = swat_fx.transform(models.small_cnn(), 0.7, period=period)
    seen = _capture_inputs(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with swat_fx.monitor(model, angle=True) as steps:
        for _ in range(5):
            x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert len(steps.records) == 5 * 6  # 3 sparsified layers x (weight, input) x 5 steps
    stored: dict[tuple[str, str], float] = {}
    for record in steps.records:
        key = (record.layer, record.role)
        t = seen[key][record.step]
        if record.step % period == 0:
            stored[key] = _kth_largest(t, 0.3)
        tau = stored[key]
        kept = t.abs() >= tau
        assert record.target_density == pytest.approx(0.3)
        assert record.threshold == pytest.approx(tau, rel=1e-6)
        assert record.density == pytest.approx(float(kept.float().mean()), abs=1e-6)
        assert record.nonzero == pytest.approx(float((kept & (t != 0)).float().mean()), abs=1e-6)
        assert record.angle == pytest.approx(_angle(t, t * kept), abs=1e-4)
    assert {r.layer for r in steps.records} == {"conv2", "conv3", "fc"}


def test_gradient_records_match_the_known_gradient() -> None:
    """meProp's site sees G = dL/dY; with L = sum(Y * c) on the last layer, G is c itself."""
    torch.manual_seed(0)
    model = swat_fx.transform(nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10)), 0.6,
                              algorithm="meprop", sparsify_first=True)
    c = torch.randn(4, 10)
    with swat_fx.monitor(model, angle=True) as steps:
        (model(torch.randn(4, 16)) * c).sum().backward()
    (record,) = [r for r in steps.records if r.layer == "2"]
    per_sample = [_kth_largest(row, 0.4) for row in c]
    kept = torch.stack([row.abs() >= tau for row, tau in zip(c, per_sample, strict=True)])
    assert record.role == "grad" and record.step == 0
    assert record.threshold == pytest.approx(sum(per_sample) / 4, rel=1e-6)  # stored: the batch mean
    assert record.density == pytest.approx(float(kept.float().mean()))
    assert record.angle == pytest.approx(_angle(c, c * kept), abs=1e-4)
    assert {r.layer for r in steps.records} == {"0", "2"}


def test_off_means_no_hooks_and_eval_steps_are_not_recorded(tmp_path: Path) -> None:
    model = swat_fx.transform(models.mlp(), 0.5)
    sites = [m for m in model.modules() if isinstance(m, TopK)]
    x = torch.randn(4, 1, 8, 8)
    steps = swat_fx.monitor(model, every=2, csv=tmp_path / "steps.csv")
    with steps:
        assert all(site._forward_hooks for site in sites)
        for _ in range(3):
            model(x).sum().backward()
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()
    assert not any(site._forward_hooks or site._forward_pre_hooks for site in sites)
    model(x).sum().backward()
    assert sorted({r.step for r in steps.records}) == [0, 2]
    assert len(steps.records) == 2 * len(sites)
    assert all(math.isnan(r.angle) for r in steps.records)
    with open(tmp_path / "steps.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == len(steps.records)
    steps.to_json(tmp_path / "steps.json")
    assert len(json.loads((tmp_path / "steps.json").read_text())) == len(steps.records)


def test_a_dense_model_has_nothing_to_monitor() -> None:
    with pytest.raises(ValueError, match="no SWAT sites"):
        swat_fx.monitor(swat_fx.transform(models.mlp(), 0.0))
    with pytest.raises(ValueError, match="every"):
        swat_fx.monitor(swat_fx.transform(models.mlp(), 0.5), every=0)


def test_a_checkpoint_recompute_is_not_recorded_twice() -> None:
    from torch.utils.checkpoint import checkpoint

    model = swat_fx.transform(models.small_cnn(), 0.7)
    meprop = swat_fx.transform(models.small_cnn(), 0.7, algorithm="meprop")
    for transformed in (model, meprop):
        with swat_fx.monitor(transformed) as steps:
            for _ in range(2):
                checkpoint(transformed, torch.randn(4, 1, 8, 8), use_reentrant=False).sum().backward()
        sites = len(list(swat_fx.contract.sites(transformed)))
        assert len(steps.records) == 2 * sites
        assert sorted({r.step for r in steps.records}) == [0, 1]
