"""Export a SWAT model to ONNX, and to ONNX Runtime on-device training artifacts.

    swat_fx.export_onnx(model, [x], "model.onnx")                       # inference, eval-mode forward
    swat_fx.export_ort_training(model, [x], "artifacts/", loss="cross_entropy", optimizer="adamw")

The training artifacts are the standard four of `onnxruntime.training` (`training_model.onnx`,
`eval_model.onnx`, `optimizer_model.onnx`, `checkpoint`): the stock `CheckpointState`, `Module` and
`Optimizer` train them with no swat_fx and no PyTorch on the device, and each step computes the SWAT
gradients (SPEC §2). This module imports onnx and onnxruntime, so `swat_fx` loads it only on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.fx as fx

from swat_fx.backends.ort.artifacts import build_inference_model, build_training_artifacts
from swat_fx.backends.ort.errors import ArtifactError, UnsupportedOpError
from swat_fx.backends.ort.load import TrainingArtifacts, load_inference, load_training
from swat_fx.backends.ort.names import ARTIFACTS, LOSSES, MANIFEST, OPTIMIZERS

__all__ = [
    "ARTIFACTS",
    "LOSSES",
    "MANIFEST",
    "OPTIMIZERS",
    "ArtifactError",
    "TrainingArtifacts",
    "UnsupportedOpError",
    "export_onnx",
    "export_ort_training",
    "load_onnx",
    "load_ort_training",
]

Inputs = torch.Tensor | Sequence[torch.Tensor]


def _inputs(example_inputs: Inputs) -> list[torch.Tensor]:
    inputs = [example_inputs] if isinstance(example_inputs, torch.Tensor) else list(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_inputs must be a tensor or a non-empty sequence of tensors (one per forward argument)")
    return [t.detach() for t in inputs]


def export_onnx(
    transformed: fx.GraphModule, example_inputs: Inputs, path: str | os.PathLike, *, dynamic_batch: bool = True
) -> Path:
    """Write the inference graph of a `swat_fx.transform`-ed model to `path` as ONNX.

    The forward is the eval-mode one: each sparsified layer uses the exact Top-K of its current
    weight. Inputs are named `input` (`input_0`, ... for several), outputs `output`; dim 0 is a
    dynamic batch unless `dynamic_batch=False`. The model itself is not modified.
    """
    return build_inference_model(transformed, _inputs(example_inputs), Path(path), dynamic_batch=dynamic_batch)


def export_ort_training(
    transformed: fx.GraphModule,
    example_inputs: Inputs,
    out_dir: str | os.PathLike,
    loss: str = "cross_entropy",
    optimizer: str = "adamw",
    overwrite: bool = False,
    *,
    dynamic_batch: bool = True,
) -> Path:
    """Write ORT training artifacts of a `swat_fx.transform`-ed model to `out_dir`; return `out_dir`.

    `loss`: "cross_entropy" (int64 class labels) or "mse" (float targets shaped like the output);
    `optimizer`: "adamw" or "sgd" (the learning rate is set on the device). Every parameter is
    trainable. The training model returns (loss, output); its step computes the SWAT gradients with the
    exact Top-K every step (`period=1`). The batch dim is dynamic unless `dynamic_batch=False` (needed
    for AvgPool layers, whose ORT gradient wants static shapes). An `out_dir` that already holds files is
    refused unless `overwrite=True`. Also written: `swat_fx.json`, a manifest that `load_ort_training`
    verifies.
    """
    return build_training_artifacts(
        transformed, _inputs(example_inputs), Path(out_dir), loss=loss, optimizer=optimizer, overwrite=overwrite,
        dynamic_batch=dynamic_batch,
    )


def load_onnx(path: str | os.PathLike) -> object:
    """An `onnxruntime.InferenceSession` of a model written by `export_onnx` (clear error if corrupt)."""
    return load_inference(Path(path))


def load_ort_training(out_dir: str | os.PathLike) -> TrainingArtifacts:
    """ORT's `CheckpointState`, `Module` and `Optimizer` for a directory written by `export_ort_training`,
    after checking every artifact against the manifest (clear error if missing, corrupt or mismatched)."""
    return load_training(Path(out_dir))
