"""ORT training artifacts whose training step computes the SWAT gradients of SPEC §2.

1. export the dense forward in training mode (`export.export_forward`) and locate the sparsified ops;
2. let ORT's artifact generator build the gradient graph, eval model, optimizer model and checkpoint;
3. run the ONNX passes: all sites on the training model, `fw_w` on the eval model;
4. check every model (`onnx.checker` with full shape inference, IR version <= 10 for ORT 1.19), write
   the four artifacts and a manifest (`swat_fx.json`) with their SHA-256 so loaders spot corruption.

The artifacts need only `onnxruntime` (training build) on the device: no swat_fx, no PyTorch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.fx as fx

from swat_fx.backends.ort.batchnorm import expose_running_stats, fix_eval_batchnorm, unbias_running_variance
from swat_fx.backends.ort.checks import check_directory, check_dynamic_batch, check_model
from swat_fx.backends.ort.errors import unsupported_gradient
from swat_fx.backends.ort.export import export_forward, io_names, output_count
from swat_fx.backends.ort.graph import rename_tensor, tensor_infos
from swat_fx.backends.ort.manifest import write_manifest
from swat_fx.backends.ort.names import CHECKPOINT, EVAL_MODEL, LOSSES, OPTIMIZER_MODEL, OPTIMIZERS, TRAINING_MODEL
from swat_fx.backends.ort.passes import locate, sparsify_backward, sparsify_forward
from swat_fx.backends.ort.plan import SparseOp, sparse_ops
from swat_fx.config import check_choice
from swat_fx.contract import config_of, swat_graph

LOSS_OUTPUT = "loss"


def scalar_sgd_flag(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's SGD optimizer model declares its `update_completed` output as [1] while the op returns a
    scalar, so ORT warns on every load: declare it a scalar."""
    flags = {name for node in model.graph.node if node.op_type == "SGDOptimizerV2" for name in node.output}
    for output in model.graph.output:
        if output.name in flags:
            output.type.tensor_type.shape.ClearField("dim")
    return model


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Discard what native code writes to stderr: ORT's artifact generator logs every graph transformer
    at INFO level. Its failures still arrive as exceptions, with their own message."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _generate(
    gm: fx.GraphModule, forward: onnx.ModelProto, params: list[str], running_stats: dict[str, str], loss: str,
    optimizer: str, directory: Path,
) -> None:
    from onnxruntime.training import artifacts

    losses = {"cross_entropy": artifacts.LossType.CrossEntropyLoss, "mse": artifacts.LossType.MSELoss}
    optimizers = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}
    try:
        with _quiet_native_stderr():
            artifacts.generate_artifacts(
                forward, requires_grad=params, frozen_params=list(running_stats.values()), loss=losses[loss],
                optimizer=optimizers[optimizer], artifact_directory=directory,
                additional_output_names=[out.name for out in forward.graph.output] + list(running_stats),
            )
    except RuntimeError as error:
        unsupported = unsupported_gradient(gm, forward, str(error))
        if unsupported is None:
            raise
        raise unsupported from error


def _shapes(gm: fx.GraphModule, names: Sequence[str]) -> dict[str, list[int]]:
    state = gm.state_dict()
    return {name: list(state[name].shape) for name in names}


def _layer_entries(ops: Sequence[SparseOp]) -> list[dict[str, Any]]:
    return [{"name": op.name, "weight": op.weight, "sparsity": op.sparsity, "sites": sorted(op.sites)} for op in ops]


def build_training_artifacts(
    transformed: fx.GraphModule, example_inputs: Sequence[torch.Tensor], out_dir: Path, *,
    loss: str, optimizer: str, overwrite: bool, dynamic_batch: bool = True,
) -> Path:
    """Write the four ORT training artifacts of a SWAT model to `out_dir` (see the module docstring)."""
    gm = swat_graph(transformed, "swat_fx.export_ort_training")
    check_choice("loss", loss, LOSSES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    ops = sparse_ops(gm, training=True)
    if output_count(gm) != 1:
        raise ValueError(f"the model returns {output_count(gm)} outputs; ORT training artifacts need one for the loss")
    check_directory(out_dir, overwrite)
    forward = export_forward(gm, example_inputs, training=True, dynamic_batch=dynamic_batch)
    if dynamic_batch:
        check_dynamic_batch(gm, forward)
    infos = tensor_infos(forward)
    locate(forward, ops, infos)  # fail early, before ORT's generator runs, if an op cannot be placed
    outputs = [out.name for out in forward.graph.output]
    running_stats = expose_running_stats(forward)
    params = dict(gm.named_parameters())
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp)
        _generate(gm, forward, list(params), running_stats, loss, optimizer, generated)
        training = unbias_running_variance(onnx.load(generated / TRAINING_MODEL), running_stats)
        training = sparsify_backward(training, locate(training, ops, infos))
        evaluation = fix_eval_batchnorm(onnx.load(generated / EVAL_MODEL), running_stats)
        evaluation = sparsify_forward(evaluation, locate(evaluation, ops, infos))
        for model in (training, evaluation):  # ORT calls it `onnx::loss::2`
            rename_tensor(model.graph, model.graph.output[0].name, LOSS_OUTPUT)
        models = {TRAINING_MODEL: training, EVAL_MODEL: evaluation,
                  OPTIMIZER_MODEL: scalar_sgd_flag(onnx.load(generated / OPTIMIZER_MODEL))}
        for name, model in models.items():
            check_model(model, name)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, model in models.items():
            onnx.save(model, out_dir / name)
        shutil.copyfile(generated / CHECKPOINT, out_dir / CHECKPOINT)
    config = config_of(gm)
    write_manifest(out_dir, {
        "algorithm": config.name, "granularity": config.granularity, "loss": loss, "optimizer": optimizer,
        "batch": "dynamic" if dynamic_batch else int(example_inputs[0].shape[0]),
        "inputs": io_names("input", len(example_inputs)), "outputs": [LOSS_OUTPUT, *outputs],
        "running_stats": running_stats, "parameters": _shapes(gm, [*params, *running_stats.values()]),
        "layers": _layer_entries(ops),
    })
    return out_dir


def build_inference_model(
    transformed: fx.GraphModule, example_inputs: Sequence[torch.Tensor], path: Path, *, dynamic_batch: bool = True
) -> Path:
    """The eval-mode forward of a SWAT model as ONNX at `path`: the forward node of every sparsified op
    reads W_s, the exact Top-K of the current W (as the eager model computes in eval mode)."""
    gm = swat_graph(transformed, "swat_fx.export_onnx")
    ops = sparse_ops(gm, training=False)
    forward = export_forward(gm, example_inputs, training=False, dynamic_batch=dynamic_batch)
    model = sparsify_forward(forward, locate(forward, ops, tensor_infos(forward)))
    check_model(model, "inference model")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
