"""`export_onnx` against the eager eval forward, the `swat-fx export` command, and every bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import swat_fx
from swat_fx.lab import cli

pytest.importorskip("onnxruntime.training")
from test_ort_training import MODELS, AvgPool, _transformed

from swat_fx.export import ArtifactError, UnsupportedOpError, load_onnx, load_ort_training


def _eval_outputs(gm: torch.fx.GraphModule, x: torch.Tensor, path: Path) -> tuple[np.ndarray, np.ndarray]:
    swat_fx.export_onnx(gm, [x], path)
    with torch.no_grad():
        expected = gm.eval()(x).numpy()
    return load_onnx(path).run(None, {"input": x.numpy()})[0], expected


@pytest.mark.parametrize("algorithm", ["swat", "saw"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_inference_model_equals_eager_eval(model: str, algorithm: str, tmp_path: Path) -> None:
    gm, shape = _transformed(model, algorithm=algorithm)
    actual, expected = _eval_outputs(gm, torch.randn(shape), tmp_path / "model.onnx")
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["chw", "hw", "filter"])
def test_inference_model_equals_eager_eval_per_granularity(granularity: str, tmp_path: Path) -> None:
    gm, shape = _transformed("conv_bn", granularity=granularity, period=3)  # period: training only
    actual, expected = _eval_outputs(gm, torch.randn(shape), tmp_path / "model.onnx")
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_inference_model_has_a_dynamic_batch_and_reads_w_s(tmp_path: Path) -> None:
    gm, shape = _transformed("conv_bn")
    path = swat_fx.export_onnx(gm, torch.randn(shape), tmp_path / "model.onnx")
    x = torch.randn(7, *shape[1:])
    with torch.no_grad():
        expected = gm.eval()(x).numpy()
    np.testing.assert_allclose(load_onnx(path).run(None, {"input": x.numpy()})[0], expected, rtol=1e-5, atol=1e-5)
    graph = onnx.load(path).graph
    producers = {name: node.name for node in graph.node for name in node.output}
    weights = [producers[node.input[1]].split("/") for node in graph.node if node.op_type in ("Conv", "Gemm")]
    expected = [("swat", name, "w_s") for name in ("conv1", "conv2", "fc")]
    assert [(path[1], path[2], path[3]) for path in weights] == expected


def test_export_does_not_change_the_model(tmp_path: Path) -> None:
    gm, shape = _transformed("small_cnn")
    before = {name: t.clone() for name, t in gm.state_dict().items()}
    swat_fx.export_ort_training(gm, [torch.randn(shape)], tmp_path / "artifacts")
    swat_fx.export_onnx(gm, [torch.randn(shape)], tmp_path / "model.onnx")
    assert gm.training
    for name, t in gm.state_dict().items():
        assert torch.equal(t, before[name]), name


# ------------------------------------------------------------------------------------------- CLI


def test_cli_exports_both_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--model", "mlp", "--sparsity", "0.5", "--format", "ort", "--out",
                     str(tmp_path / "ort"), "--optimizer", "sgd"]) == 0
    assert load_ort_training(tmp_path / "ort").manifest["optimizer"] == "sgd"
    assert cli.main(["export", "--model", "small_cnn", "--sparsity", "0.8", "--format", "onnx", "--out",
                     str(tmp_path / "onnx"), "--algorithm", "saw"]) == 0
    session = load_onnx(tmp_path / "onnx" / "small_cnn.onnx")
    assert session.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)
    assert cli.main(["export", "--model", "mlp", "--sparsity", "0.5", "--format", "ort", "--out",
                     str(tmp_path / "ort")]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_import_swat_fx_and_its_cli_never_import_onnx() -> None:
    code = ("import sys, swat_fx, swat_fx.lab.cli; swat_fx.lab.cli.build_parser(); "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------- bad input


class _KthValue(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - torch.kthvalue(x, 2, dim=1, keepdim=True).values


class _Atan(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(self.fc(x))


def _with_block(block: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), block, nn.Linear(6, 3))


def test_an_op_onnx_export_cannot_handle_is_named_with_its_layer(tmp_path: Path) -> None:
    gm = swat_fx.transform(_with_block(_KthValue()), 0.5)
    with pytest.raises(UnsupportedOpError, match=r"aten::kthvalue.*layer '1'"):
        swat_fx.export_onnx(gm, torch.randn(2, 4), tmp_path / "model.onnx")


def test_an_op_without_an_ort_gradient_is_named_with_its_layer(tmp_path: Path) -> None:
    gm = swat_fx.transform(_with_block(_Atan()), 0.5)
    with pytest.raises(UnsupportedOpError, match=r"gradient builder.*'Atan'.*layer '1'"):
        swat_fx.export_ort_training(gm, torch.randn(2, 4), tmp_path / "artifacts")
    assert not (tmp_path / "artifacts").exists()


def test_a_dynamic_batch_with_average_pooling_is_refused_before_ort_crashes(tmp_path: Path) -> None:
    gm = swat_fx.transform(AvgPool(), 0.5)
    with pytest.raises(UnsupportedOpError, match=r"AveragePool.*layer 'pool'.*dynamic_batch=False"):
        swat_fx.export_ort_training(gm, torch.randn(2, 2, 6, 6), tmp_path / "artifacts")


@pytest.mark.parametrize(("option", "value", "valid"), [
    ("loss", "hinge", "'cross_entropy', 'mse'"), ("optimizer", "adam", "'adamw', 'sgd'"),
])
def test_unknown_loss_or_optimizer_lists_the_valid_ones(option: str, value: str, valid: str, tmp_path: Path) -> None:
    gm, shape = _transformed("mlp")
    with pytest.raises(ValueError, match=f"unknown {option} '{value}'; valid values are: {valid}"):
        swat_fx.export_ort_training(gm, torch.randn(shape), tmp_path, **{option: value})


def test_a_directory_with_other_files_is_refused_unless_overwrite(tmp_path: Path) -> None:
    gm, shape = _transformed("mlp")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes.txt.*overwrite=True"):
        swat_fx.export_ort_training(gm, torch.randn(shape), tmp_path)
    swat_fx.export_ort_training(gm, torch.randn(shape), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    load_ort_training(tmp_path)
    with pytest.raises(FileExistsError, match=r"not a directory"):
        swat_fx.export_ort_training(gm, torch.randn(shape), tmp_path / "notes.txt", overwrite=True)


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("exports")
    for name in ("mlp", "conv_bn"):
        gm, shape = _transformed(name)
        swat_fx.export_ort_training(gm, torch.randn(shape), root / name)
    return root / "mlp", root / "conv_bn"


def _damaged_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_corrupt_or_mismatched_artifacts_fail_clearly(two_exports: tuple[Path, Path], tmp_path: Path) -> None:
    mlp, conv = two_exports
    truncated = _damaged_copy(mlp, tmp_path / "truncated")
    data = (truncated / "training_model.onnx").read_bytes()
    (truncated / "training_model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"training_model.onnx does not match the manifest"):
        load_ort_training(truncated)
    mixed = _damaged_copy(mlp, tmp_path / "mixed")
    shutil.copyfile(conv / "checkpoint", mixed / "checkpoint")
    with pytest.raises(ArtifactError, match=r"checkpoint does not match the manifest"):
        load_ort_training(mixed)
    missing = _damaged_copy(mlp, tmp_path / "missing")
    (missing / "optimizer_model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"lacks the artifact optimizer_model.onnx"):
        load_ort_training(missing)
    (missing / "swat_fx.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"swat_fx.json is corrupt"):
        load_ort_training(missing)
    with pytest.raises(ArtifactError, match=r"has no swat_fx.json"):
        load_ort_training(tmp_path)


def _replace_checkpoint(source: Path, target: Path, checkpoint: bytes) -> Path:
    """A copy of `source` with another checkpoint, and a manifest forged to match it."""
    import json

    from swat_fx.backends.ort.manifest import sha256

    _damaged_copy(source, target)
    (target / "checkpoint").write_bytes(checkpoint)
    manifest = json.loads((target / "swat_fx.json").read_text())
    manifest["files"]["checkpoint"] = sha256(target / "checkpoint")
    (target / "swat_fx.json").write_text(json.dumps(manifest))
    return target


def test_artifacts_that_fit_a_forged_manifest_still_fail_clearly(two_exports: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    mlp, conv = two_exports
    mixed = _replace_checkpoint(mlp, tmp_path / "mixed", (conv / "checkpoint").read_bytes())
    with pytest.raises(ArtifactError, match=r"checkpoint does not hold the parameters.*different exports"):
        load_ort_training(mixed)
    garbage = _replace_checkpoint(mlp, tmp_path / "garbage", b"\x00" * 64)
    with pytest.raises(ArtifactError, match=r"ONNX Runtime cannot load the checkpoint"):
        load_ort_training(garbage)


def test_a_corrupt_onnx_model_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ArtifactError, match=r"not a readable ONNX model"):
        load_onnx(tmp_path / "model.onnx")
    with pytest.raises(ArtifactError, match=r"no ONNX model at"):
        load_onnx(tmp_path / "absent.onnx")


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"granularity": "kernel"}, ValueError, "granularity 'kernel' is not supported.*'nchw', 'chw', 'hw', 'filter'"),
    ({"period": 4}, ValueError, "period=4.*period=1"),
    ({"sites": {"fw_a", "bw_w"}}, ValueError, "fw_a are not supported"),
])
def test_unsupported_options_are_refused(options: dict, error: type, match: str, tmp_path: Path) -> None:
    gm, shape = _transformed("mlp", **options)
    with pytest.raises(error, match=match):
        swat_fx.export_ort_training(gm, torch.randn(shape), tmp_path / "artifacts")


def test_other_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"swat_fx.transform"):
        swat_fx.export_onnx(nn.Linear(3, 2), torch.randn(1, 3), tmp_path / "model.onnx")
    gm, shape = _transformed("mlp")
    with pytest.raises(TypeError, match=r"example_inputs"):
        swat_fx.export_onnx(gm, [np.zeros(shape)], tmp_path / "model.onnx")

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), self.fc(x).sum(1)

    with pytest.raises(ValueError, match=r"returns 2 outputs"):
        swat_fx.export_ort_training(swat_fx.transform(TwoHeads(), 0.5), torch.randn(2, 4), tmp_path / "a")
