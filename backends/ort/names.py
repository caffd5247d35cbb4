"""Option values and file names of the ORT backend, importable without onnx or onnxruntime
(the CLI builds its `--help` from them; `import swat_fx` must stay light)."""

from __future__ import annotations

LOSSES: tuple[str, ...] = ("cross_entropy", "mse")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT = (
    "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"
)
ARTIFACTS: tuple[str, ...] = (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT)
MANIFEST = "swat_fx.json"
