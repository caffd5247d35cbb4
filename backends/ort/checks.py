"""Checks of the ORT backend: arguments before any work, and every model before it is written.

`onnx.checker` does not know ORT's training ops; those in ORT's `com.microsoft` domain it skips, but
ORT also puts a few in the default domain (`MaxPoolGrad`, ...), which would fail the check. They are
moved to `com.microsoft` in a copy made for the checker only, so full shape inference runs over the rest.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch.fx as fx

from swat_fx.backends.ort.errors import ArtifactError, UnsupportedOpError, fx_nodes_calling

MAX_IR_VERSION = 10  # ORT 1.19 loads IR <= 10
RUNTIME_DOMAIN = "com.microsoft"


def check_directory(out_dir: Path, overwrite: bool) -> None:
    """Refuse an `out_dir` that is a file, or that already holds files unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    if present and not overwrite:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise FileExistsError(
            f"output directory {out_dir} already holds files ({shown}); pass overwrite=True "
            "(--overwrite) to replace the artifacts in it, or choose an empty directory"
        )


def _opaque_runtime_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with ORT's default-domain training ops moved to `com.microsoft` (see the docstring)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            node.domain = RUNTIME_DOMAIN
    if not any(opset.domain == RUNTIME_DOMAIN for opset in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(RUNTIME_DOMAIN, 1))
    return copy


def check_model(model: onnx.ModelProto, what: str) -> None:
    """`onnx.checker` with full shape inference, and an IR version ORT 1.19 can load."""
    if model.ir_version > MAX_IR_VERSION:
        raise ArtifactError(f"the {what} has ONNX IR version {model.ir_version}; ORT 1.19 loads <= {MAX_IR_VERSION}")
    try:
        onnx.checker.check_model(_opaque_runtime_ops(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ArtifactError(f"the {what} fails onnx.checker: {error}") from error


# Ops whose ORT 1.19 gradient kernel needs static shapes: AveragePoolGrad takes the input shape from
# the graph and divides by it, so a symbolic batch crashes the process (SIGFPE) at the first step.
STATIC_SHAPE_GRADIENTS: tuple[str, ...] = ("AveragePool",)


def check_dynamic_batch(gm: fx.GraphModule, forward: onnx.ModelProto) -> None:
    """Refuse, before ORT can crash, a dynamic batch with ops whose gradient needs static shapes."""
    for op_type in STATIC_SHAPE_GRADIENTS:
        nodes = [node.name for node in forward.graph.node if node.op_type == op_type]
        if nodes:
            raise UnsupportedOpError(
                f"ORT's gradient of {op_type} (ONNX node {nodes[0]!r}, from {fx_nodes_calling(gm, op_type)}) "
                "crashes with a dynamic batch; export with dynamic_batch=False (--static-batch): the batch of "
                "example_inputs is then the training batch"
            )
