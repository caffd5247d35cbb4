"""Loaders for exported models that fail with a clear `ArtifactError`, not a crash inside ORT.

A training directory is checked against its manifest first (every artifact present, SHA-256 as
written at export), so a truncated file or a checkpoint from another export is reported by name
before ORT parses anything; ORT's own load errors are wrapped as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import onnx
from google.protobuf.message import DecodeError

from swat_fx.backends.ort.checks import check_model
from swat_fx.backends.ort.errors import ArtifactError
from swat_fx.backends.ort.manifest import read_manifest
from swat_fx.backends.ort.names import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL

T = TypeVar("T")


@dataclass
class TrainingArtifacts:
    """ORT's `CheckpointState`, training `Module` and `Optimizer`, and the export's manifest."""

    state: Any
    module: Any
    optimizer: Any
    manifest: dict[str, Any]


def _ort(what: str, load: Callable[[], T]) -> T:
    try:
        return load()
    except Exception as error:  # ORT raises its own pybind exception types for bad files
        raise ArtifactError(f"ONNX Runtime cannot load the {what}: {error}") from error


def _check_parameters(state: Any, manifest: dict[str, Any], out_dir: Path) -> None:
    """ORT accepts a checkpoint whose parameters do not fit the training model (and fails later, in the
    optimizer): compare names and shapes with those recorded at export."""
    found = {name: list(parameter.data.shape) for name, parameter in state.parameters}
    expected = manifest.get("parameters", {})
    if found != expected:
        differing = sorted(set(found).symmetric_difference(expected)) or sorted(
            name for name in found if found[name] != expected[name])
        raise ArtifactError(
            f"{out_dir / CHECKPOINT} does not hold the parameters the training model expects "
            f"(differing: {', '.join(differing[:5])}): the artifacts come from different exports"
        )


def load_training(out_dir: Path) -> TrainingArtifacts:
    """Check an artifact directory and open it with `onnxruntime.training.api`."""
    from onnxruntime.training import api

    manifest = read_manifest(out_dir)
    state = _ort(CHECKPOINT, lambda: api.CheckpointState.load_checkpoint(str(out_dir / CHECKPOINT)))
    _check_parameters(state, manifest, out_dir)
    module = _ort("training and eval models", lambda: api.Module(
        str(out_dir / TRAINING_MODEL), state, str(out_dir / EVAL_MODEL)))
    optimizer = _ort(OPTIMIZER_MODEL, lambda: api.Optimizer(str(out_dir / OPTIMIZER_MODEL), module))
    return TrainingArtifacts(state, module, optimizer, manifest)


def load_inference(path: Path) -> Any:
    """An `onnxruntime.InferenceSession` of an exported ONNX model, after checking the file."""
    import onnxruntime

    if not path.is_file():
        raise ArtifactError(f"no ONNX model at {path}")
    try:
        model = onnx.load(path)
    except (DecodeError, ValueError, OSError) as error:
        raise ArtifactError(f"{path} is not a readable ONNX model ({error}); export it again") from error
    check_model(model, f"ONNX model {path}")
    return _ort(f"ONNX model {path}", lambda: onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]))
