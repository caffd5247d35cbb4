"""`swat-fx cost`: estimated training cost of a model on a sparse accelerator, dense vs SWAT."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from swat_fx import models
from swat_fx.accel import PRESETS, CostReport, estimate_cost, format_sweep, save_ir, to_accel_ir
from swat_fx.backends.accel.cost import resolve_accelerator
from swat_fx.backends.accel.export import write_json
from swat_fx.backends.accel.formats import FORMATS
from swat_fx.backends.accel.report import format_report
from swat_fx.config import ALGORITHMS, GRANULARITIES
from swat_fx.transform import transform


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated {kind.__name__}s, got {text!r}") from None


def _plot(reports: Sequence[CostReport], path: str) -> None:
    """The paper's Fig. 8 curves (and the FLOP reduction) against sparsity, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparsity = [100 * r.setup["sparsity"] for r in reports]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in (
        ("training FLOPs", [r.flops.factor for r in reports]),
        ("parameter access in backward", [r.param_bytes_bwd.factor for r in reports]),
        ("activations kept for backward", [r.activation_bytes_per_sample.factor for r in reports]),
        (f"speedup ({reports[0].accelerator.name})", [r.speedup for r in reports]),
    ):
        ax.plot(sparsity, values, marker="o", label=label)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("reduction (dense / SWAT, x)")
    ax.set_title(f"{reports[0].setup.get('model', 'model')}: {reports[0].setup['algorithm']} vs dense")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    sparsities = _numbers(args.sparsity, float, "--sparsity")
    shape = tuple(_numbers(args.input_shape, int, "--input-shape")) if args.input_shape else \
        models.default_input_shape(args.model)
    if args.ir and len(sparsities) != 1:
        raise ValueError("--ir writes the IR of one sparsity; give a single --sparsity with it")
    acc = resolve_accelerator(args.accelerator)
    if args.format:
        acc = acc.replace(format=args.format)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reports = []
    for sparsity in sparsities:
        model = transform(models.build(args.model), sparsity=sparsity, algorithm=args.algorithm,
                          granularity=args.granularity, period=args.period)
        ir = to_accel_ir(model, example)
        ir.graph["model"] = args.model
        if args.ir:
            print(f"IR ({ir.number_of_nodes()} nodes, {ir.number_of_edges()} edges) written to {save_ir(ir, args.ir)}")
        reports.append(estimate_cost(ir, accelerator=acc))
    print(f"swat-fx cost: {args.model}, input {'x'.join(map(str, shape))}")
    print(format_report(reports[0], top=args.top) if len(reports) == 1 else format_sweep(reports))
    if args.json:
        write_json([r.as_dict() for r in reports] if len(reports) > 1 else reports[0].as_dict(), args.json)
        print(f"report written to {args.json}")
    if args.plot:
        _plot(reports, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "cost", help="estimate training FLOPs, memory traffic and speedup on a sparse accelerator",
        description="Build the IR of one training step (forward, backward, Top-K, update) and estimate "
                    "its cost dense vs SWAT on an accelerator model. Several comma-separated sparsities "
                    "print the paper's Fig. 8 rows (parameter-access reduction, activation compression).")
    parser.add_argument("--model", default="resnet50", choices=sorted(models.MODELS))
    parser.add_argument("--sparsity", default="0.8", help="one sparsity, or a comma-separated sweep: 0.5,0.7,0.8,0.9")
    parser.add_argument("--algorithm", default="swat", choices=sorted(ALGORITHMS))
    parser.add_argument("--granularity", default="nchw", choices=GRANULARITIES)
    parser.add_argument("--period", type=int, default=1, help="steps between exact Top-K computations")
    parser.add_argument("--input-shape", default=None,
                        help="comma-separated input shape, batch first (default: the model's, e.g. 1,3,224,224)")
    parser.add_argument("--accelerator", default="ideal", choices=sorted(PRESETS))
    parser.add_argument("--format", default=None, choices=FORMATS,
                        help="how sparse tensors are stored in DRAM (default: the preset's, bitmap)")
    parser.add_argument("--top", type=int, default=10, help="layers in the per-layer list")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the report(s) as JSON")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write a PNG of the reductions vs sparsity")
    parser.add_argument("--ir", default=None, metavar="PATH", help="write the IR (.json, .graphml or .dot)")
    parser.set_defaults(run=run)
