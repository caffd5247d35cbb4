"""`swat-fx export`: a model of `swat_fx.models`, transformed, as ONNX or as ORT training artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from swat_fx import models
from swat_fx.backends.ort.names import LOSSES, OPTIMIZERS
from swat_fx.introspect import layers
from swat_fx.lab import cli_options
from swat_fx.transform import transform

FORMATS = ("onnx", "ort")


def run(args: argparse.Namespace) -> int:
    from swat_fx import export  # onnx and onnxruntime load only when this command runs

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = transform(models.build(args.model, **kwargs), args.sparsity, algorithm=args.algorithm,
                      granularity=args.granularity)
    shape = models.default_input_shape(args.model)
    example = torch.randn(args.batch_size, *shape[1:])
    out = Path(args.out)
    if args.format == "onnx":
        path = out / f"{args.model}.onnx"
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        export.export_onnx(model, [example], path, dynamic_batch=not args.static_batch)
        batch = args.batch_size if args.static_batch else "batch"
        print(f"wrote {path} (input 'input' [{batch}, {', '.join(map(str, shape[1:]))}], output 'output')")
    else:
        export.export_ort_training(model, [example], out, loss=args.loss, optimizer=args.optimizer,
                                   overwrite=args.overwrite, dynamic_batch=not args.static_batch)
        print(f"wrote ORT training artifacts to {out}: {', '.join(export.ARTIFACTS)} and {export.MANIFEST}")
    for info in layers(model):
        sites = ", ".join(sorted(info.sites)) or "dense"
        print(f"  {info.name:<28} {info.kind:<7} sparsity {info.sparsity:.2f}  ({sites})")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "export", help="export a SWAT model to ONNX or to ONNX Runtime training artifacts",
        description="Transform a model of swat_fx.models with SWAT and write it as an ONNX inference model "
                    "(--format onnx: OUT/MODEL.onnx) or as ONNX Runtime on-device training artifacts "
                    "(--format ort: training_model.onnx, eval_model.onnx, optimizer_model.onnx, checkpoint "
                    "in OUT). Needs the [ort] extra: onnx and onnxruntime-training.")
    parser.add_argument("--model", required=True, choices=sorted(models.MODELS), metavar="MODEL",
                        help=f"one of: {', '.join(sorted(models.MODELS))}")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    cli_options.add_swat_options(parser, period=False)
    parser.add_argument("--loss", default="cross_entropy", choices=LOSSES,
                        help="training loss (--format ort; default: %(default)s)")
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                        help="optimizer (--format ort; default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes of the model's head")
    parser.add_argument("--batch-size", type=int, default=2,
                        help="batch of the example input used for tracing (default: %(default)s)")
    parser.add_argument("--static-batch", action="store_true",
                        help="fix the batch dim to --batch-size instead of a dynamic one (needed for AvgPool layers)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing artifacts in DIR")
    parser.set_defaults(run=run)
