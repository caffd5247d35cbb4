"""ORT training artifacts against the eager backend: gradients, trajectories, and where the Top-K nodes sit.

Every comparison runs the eager SWAT model in train mode (batch-statistics BatchNorm), which is what
the ORT training graph computes, on the same weights and batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import swat_fx
from swat_fx import models

pytest.importorskip("onnxruntime.training")
from swat_fx.export import TrainingArtifacts, load_ort_training

ALGORITHMS = ("swat", "saw", "meprop", "dense")
SPARSITY = 0.6


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.block = models.BasicBlock(4, 8, stride=2, downsample=down)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


class GroupedStrided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2)
        self.conv2 = nn.Conv2d(8, 8, (4, 3), padding="same", groups=4)
        self.conv3 = nn.Conv1d(8, 6, 3, stride=2, groups=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(torch.tanh(self.conv3(x.flatten(2))).mean(2))


class LinearForms(nn.Module):
    """3-D inputs (MatMul + Add), `x @ W.T`, `x @ P`, a bias-less layer used twice (`proj@1`), and an
    output with two consumers (ORT sums its gradient before meProp's G_s)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 12)
        self.proj = nn.Linear(12, 12, bias=False)
        self.w = nn.Parameter(torch.randn(10, 12) / 4)
        self.p = nn.Parameter(torch.randn(10, 8) / 3)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.proj(torch.tanh(h)) + self.proj(torch.sigmoid(h))
        h = torch.tanh(h @ self.w.T) @ self.p
        return self.head(h.mean(1))


class AvgPool(nn.Module):
    """AvgPool2d: ORT's gradient of AveragePool needs a static batch (`dynamic_batch=False`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


# name -> (model factory, input shape)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda: models.mlp(in_features=16, hidden=(24, 16), num_classes=5), (6, 16)),
    "conv_bn": (ConvBN, (4, 3, 6, 6)),
    "residual": (Residual, (3, 3, 6, 6)),
    "grouped_strided": (GroupedStrided, (3, 4, 9, 9)),
    "small_cnn": (lambda: models.small_cnn(num_classes=5), (4, 1, 8, 8)),
    "linear_forms": (LinearForms, (3, 4, 6)),
}


def _batch(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randint(0, 5, (shape[0],), generator=generator)


def _transformed(name: str, **options: object) -> tuple[torch.fx.GraphModule, tuple[int, ...]]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    options = {"sparsify_first": True, **options}
    return swat_fx.transform(factory(), SPARSITY, **options).train(), shape


def _export(gm: torch.fx.GraphModule, x: torch.Tensor, out: Path, **options: object) -> TrainingArtifacts:
    artifacts = load_ort_training(swat_fx.export_ort_training(gm, [x], out, **options))
    artifacts.module.train()
    return artifacts


def _assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6, err_msg=what)


def _check_gradients(gm: torch.fx.GraphModule, shape: tuple[int, ...], out: Path, **options: object) -> None:
    x, y = _batch(shape, seed=1)
    artifacts = _export(gm, x, out, optimizer="sgd", **options)
    loss, output, *_ = artifacts.module(x.numpy(), y.numpy())
    expected = F.cross_entropy(gm(x), y)
    expected.backward()
    _assert_close(loss, expected.item(), "loss")
    _assert_close(output, gm(x).detach().numpy(), "output")
    for name, param in gm.named_parameters():
        _assert_close(artifacts.state.parameters[name].grad, param.grad.numpy(), f"gradient of {name}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_gradients_equal_eager(model: str, algorithm: str, tmp_path: Path) -> None:
    gm, shape = _transformed(model, algorithm=algorithm)
    _check_gradients(gm, shape, tmp_path / "artifacts")


@pytest.mark.parametrize("granularity", ["chw", "hw", "filter"])
@pytest.mark.parametrize("model", ["conv_bn", "linear_forms"])
def test_gradients_equal_eager_per_granularity(model: str, granularity: str, tmp_path: Path) -> None:
    gm, shape = _transformed(model, algorithm="swat", granularity=granularity)
    _check_gradients(gm, shape, tmp_path / "artifacts")


CUSTOM_SITES = [{"fw_w"}, {"fw_w", "bw_g"}, {"bw_w", "bw_a", "bw_g"}]


@pytest.mark.parametrize("sites", CUSTOM_SITES, ids=lambda s: "+".join(sorted(s)))
@pytest.mark.parametrize("model", ["conv_bn", "linear_forms"])
def test_gradients_equal_eager_for_custom_sites(model: str, sites: set[str], tmp_path: Path) -> None:
    gm, shape = _transformed(model, sites=sites)
    _check_gradients(gm, shape, tmp_path / "artifacts")


@pytest.mark.parametrize("algorithm", ["swat", "meprop"])
def test_gradients_equal_eager_with_a_static_batch(algorithm: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    gm = swat_fx.transform(AvgPool(), SPARSITY, algorithm=algorithm, sparsify_first=True)
    _check_gradients(gm, (4, 2, 6, 6), tmp_path / "artifacts", dynamic_batch=False)


def test_gradients_equal_eager_with_erk_and_default_layer_rules(tmp_path: Path) -> None:
    gm, shape = _transformed("small_cnn", distribution="erk", sparsify_first=False, sparsify_last=False)
    assert len({info.sparsity for info in swat_fx.layers(gm)}) > 2  # dense first/last, ERK in between
    _check_gradients(gm, shape, tmp_path / "artifacts")


def _hf_adamw(params: list[nn.Parameter], lr: float, state: dict, betas=(0.9, 0.999), eps=1e-6) -> None:
    """ORT's AdamW (`adam_mode=1`, the transformers formula): eps added after the bias correction."""
    state["t"] = state.get("t", 0) + 1
    t = state["t"]
    with torch.no_grad():
        for p in params:
            m, v = state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
            m.mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
            step = lr * (1 - betas[1] ** t) ** 0.5 / (1 - betas[0] ** t)
            p.sub_(step * m / (v.sqrt() + eps))


@pytest.mark.parametrize(("model", "algorithm", "optimizer"), [
    ("conv_bn", "swat", "sgd"), ("linear_forms", "meprop", "sgd"), ("small_cnn", "swat", "adamw"),
])
def test_five_step_trajectory_equals_eager(model: str, algorithm: str, optimizer: str, tmp_path: Path) -> None:
    gm, shape = _transformed(model, algorithm=algorithm)
    lr = 0.05 if optimizer == "sgd" else 0.01
    artifacts = _export(gm, _batch(shape, 0)[0], tmp_path / "artifacts", optimizer=optimizer)
    artifacts.optimizer.set_learning_rate(lr)
    params = list(gm.parameters())
    sgd, adam_state = torch.optim.SGD(params, lr=lr), {}
    for step in range(5):
        x, y = _batch(shape, seed=step)
        artifacts.module.lazy_reset_grad()
        ort_loss = artifacts.module(x.numpy(), y.numpy())[0]
        artifacts.optimizer.step()
        sgd.zero_grad()
        loss = F.cross_entropy(gm(x), y)
        loss.backward()
        sgd.step() if optimizer == "sgd" else _hf_adamw(params, lr, adam_state)
        np.testing.assert_allclose(ort_loss, loss.item(), rtol=1e-4, err_msg=f"step {step}")


def test_batchnorm_running_statistics_are_outputs_that_equal_eager(tmp_path: Path) -> None:
    gm, shape = _transformed("conv_bn")
    artifacts = _export(gm, _batch(shape, 0)[0], tmp_path / "artifacts")
    names = artifacts.module.output_names()[2:]
    assert names == [f"bn{i}.running_{stat}.updated" for i in (1, 2) for stat in ("mean", "var")]
    for step in range(2):
        x, y = _batch(shape, seed=step)
        for name, value in zip(names, artifacts.module(x.numpy(), y.numpy())[2:], strict=True):
            artifacts.state.parameters[name.removesuffix(".updated")].data = value
        gm(x)
    for name in names:
        buffer = name.removesuffix(".updated")
        _assert_close(artifacts.state.parameters[buffer].data, gm.get_buffer(buffer).numpy(), buffer)


def test_mse_loss_gradients_equal_eager(tmp_path: Path) -> None:
    gm, shape = _transformed("mlp")
    x, _ = _batch(shape, seed=3)
    target = torch.randn(shape[0], 5)
    artifacts = _export(gm, x, tmp_path / "artifacts", loss="mse", optimizer="sgd")
    loss = artifacts.module(x.numpy(), target.numpy())[0]
    expected = F.mse_loss(gm(x), target)
    expected.backward()
    _assert_close(loss, expected.item(), "loss")
    for name, param in gm.named_parameters():
        _assert_close(artifacts.state.parameters[name].grad, param.grad.numpy(), f"gradient of {name}")


# ------------------------------------------------------------------------------------ graph structure


def _origin(producers: dict[str, onnx.NodeProto], tensor: str) -> str:
    node = producers.get(tensor)
    return node.name if node is not None else tensor


@pytest.mark.parametrize("algorithm", ["swat", "saw", "meprop"])
@pytest.mark.parametrize("model", ["mlp", "conv_bn"])
def test_gradient_nodes_read_the_sparsified_operands(model: str, algorithm: str, tmp_path: Path) -> None:
    gm, shape = _transformed(model, algorithm=algorithm)
    out = swat_fx.export_ort_training(gm, [torch.randn(shape)], tmp_path / "artifacts")
    graph = onnx.load(out / "training_model.onnx").graph
    producers = {name: node for node in graph.node for name in node.output}
    for info in swat_fx.layers(gm):
        weight = f"{info.name}.weight"
        swat = f"/swat/{info.name}/"
        dw_node = producers[f"{weight}_grad"]  # ConvGrad (dX, dW, db) or the Gemm computing dW
        forward = next(node for node in graph.node if node.name == dw_node.name.split("_Grad/")[0])
        x, w = forward.input[0], weight
        reads = {_origin(producers, name) for name in dw_node.input}
        if algorithm == "meprop":
            assert any(name.startswith(swat + "g_s/") for name in reads), info.name
            assert x in dw_node.input and _origin(producers, forward.input[1]) == w
            continue
        assert any(name.startswith(swat + "x_s/") for name in reads), f"{info.name}: dW reads {reads}"
        assert x not in dw_node.input
        fw_reads_ws = _origin(producers, forward.input[1]).startswith(swat + "w_s/")
        assert fw_reads_ws == (algorithm == "swat")
        dx_node = dw_node if dw_node.op_type == "ConvGrad" else producers.get(f"{x}_grad")
        if dx_node is not None:  # the first layer reads the model input: no dX
            assert w not in dx_node.input
            assert any(_origin(producers, name).startswith(swat + "w_s/") for name in dx_node.input)


# ------------------------------------------------------------------------------ on a bare device

# The script makes torch, onnx and swat_fx unimportable. ORT 1.19's `onnxruntime/training/__init__.py`
# imports torch (for ORTModule), so `onnxruntime.training.api` is loaded without that initialiser: the
# API itself needs only ORT's native module and numpy, as on a device.
DEVICE_SCRIPT = textwrap.dedent("""
    import json, os, sys, types
    for name in ("torch", "onnx", "swat_fx"):
        sys.modules[name] = None
    import numpy as np
    import onnxruntime

    package = types.ModuleType("onnxruntime.training")
    package.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    sys.modules["onnxruntime.training"] = package
    from onnxruntime.training import api

    directory, batch = sys.argv[1], np.load(sys.argv[2])
    state = api.CheckpointState.load_checkpoint(f"{directory}/checkpoint")
    module = api.Module(f"{directory}/training_model.onnx", state, f"{directory}/eval_model.onnx")
    optimizer = api.Optimizer(f"{directory}/optimizer_model.onnx", module)
    optimizer.set_learning_rate(0.05)
    running_stats = [name.removesuffix(".updated") for name in module.output_names()[2:]]
    module.train()
    losses = []
    for _ in range(5):
        module.lazy_reset_grad()
        loss, logits, *updated = module(batch["x"], batch["y"])
        optimizer.step()
        for name, value in zip(running_stats, updated):
            state.parameters[name].data = value
        losses.append(float(loss))
    module.eval()
    eval_loss, _ = module(batch["x"], batch["y"])
    print(json.dumps({"losses": losses, "eval_loss": float(eval_loss)}))
""")


def test_artifacts_train_in_a_process_with_only_onnxruntime_and_numpy(tmp_path: Path) -> None:
    gm, shape = _transformed("conv_bn")
    x, y = _batch(shape, seed=5)
    out = swat_fx.export_ort_training(gm, [x[:1]], tmp_path / "artifacts", optimizer="sgd")
    np.savez(tmp_path / "batch.npz", x=x.numpy(), y=y.numpy())
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(out), str(tmp_path / "batch.npz")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    sgd = torch.optim.SGD(gm.parameters(), lr=0.05)
    for step in range(5):
        sgd.zero_grad()
        loss = F.cross_entropy(gm(x), y)
        loss.backward()
        sgd.step()
        np.testing.assert_allclose(report["losses"][step], loss.item(), rtol=1e-4)
    with torch.no_grad():  # the eval model normalises with the running statistics carried on the device
        np.testing.assert_allclose(report["eval_loss"], F.cross_entropy(gm.eval()(x), y).item(), rtol=1e-4)
