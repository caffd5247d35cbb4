"""A transformed model pickles whole: `torch.save(model)` loaded in a new process, `pickle`, `copy.deepcopy`
and multiprocessing spawn give back the same model, graph metadata and SWAT state included."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import swat_fx
from swat_fx import models


def _model(kernel: str = "compressed") -> torch.nn.Module:
    torch.manual_seed(0)
    model = swat_fx.transform(models.resnet18(num_classes=10), 0.7, kernel=kernel, period=3)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()  # some SWAT state
    return model


def _step(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One more training step's loss and first-layer gradient."""
    model.zero_grad()
    loss = F.cross_entropy(model(x), torch.tensor([3, 4]))
    loss.backward()
    return loss.detach(), model.get_parameter("layer1.0.conv1.weight").grad.clone()


@pytest.mark.parametrize("kernel", ["masked", "compressed", "compact"])
def test_pickle_and_deepcopy_give_back_the_same_model(kernel: str) -> None:
    model = _model(kernel) if kernel != "compact" else swat_fx.transform(models.small_cnn(), 0.7,
                                                                           granularity="filter")
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(clone).__name__ == type(model).__name__ and clone.code == model.code
        assert swat_fx.is_transformed(clone) and swat_fx.swat_graph(clone).code == swat_fx.swat_graph(model).code
        assert [(i.name, i.kernel) for i in swat_fx.layers(clone)] == [
            (i.name, i.kernel) for i in swat_fx.layers(model)]
        state, expected = clone.state_dict(), model.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_torch_save_loads_and_trains_in_a_new_process(tmp_path: Path) -> None:
    model = _model()
    torch.save(model, tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    loss, grad = _step(model, x)
    code = (f"import torch, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_pickling import _step; "
            f"model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False); "
            f"torch.save(_step(model, torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'out.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    loaded_loss, loaded_grad = torch.load(tmp_path / "out.pt")
    assert torch.equal(loaded_loss, loss) and torch.equal(loaded_grad, grad)


def _step_in_child(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _step(model, x)


@pytest.mark.slow
def test_a_spawned_worker_receives_the_model() -> None:
    model, x = _model(), torch.randn(2, 3, 32, 32)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        loss, grad = pool.apply(_step_in_child, (model, x))
    expected_loss, expected_grad = _step(model, x)
    assert torch.equal(loss, expected_loss) and torch.equal(grad, expected_grad)


@pytest.mark.slow
def test_a_spawned_worker_receives_an_export_traced_model() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = swat_fx.transform(models.resnet18(num_classes=10), 0.7, period=3, example_inputs=(x,))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        loss, grad = pool.apply(_step_in_child, (model, x))
    expected_loss, expected_grad = _step(model, x)
    assert torch.equal(loss, expected_loss) and torch.equal(grad, expected_grad)
