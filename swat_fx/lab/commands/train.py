"""`swat-fx train`: train on digits densely and with SWAT, and compare (the main job).

Any dataset, model and SWAT configuration can be chosen; `--csv`/`--plot` log the validation curve and
`--monitor` records every SWAT site at every step (thresholds, densities, angles).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from swat_fx.introspect import format_layers, layers
from swat_fx.lab import cli_options, distributed, experiments


@cli_options.interruptible
def run(args: argparse.Namespace) -> int:
    config = cli_options.config_from_args(args)
    settings = cli_options.settings(args)
    data = cli_options.dataset(args)
    world = distributed.ranks().world
    processes = f", {world} processes" if world > 1 else ""
    print(f"{data.name}: {len(data.y_train)} train / {len(data.y_test)} test images, model {args.model}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads{processes}")
    runs = experiments.train(data, settings, config, dense=not args.no_dense, csv=args.csv, png=args.plot,
                             monitor_csv=args.monitor, angle=args.angle)
    print()
    for done in runs:
        print(f"{done.label:<14} test accuracy {done.result.accuracy:6.2%}   ({done.seconds:.1f} s)")
    print(f"\nper-layer sparsity of the {config.name} model (kept = density achieved at the last step):")
    print(format_layers(layers(runs[-1].model, [data.x_test[:2]])))
    cli_options.print_outputs(args, monitor=args.monitor)
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train", help="train a model densely and with SWAT, and compare",
        description="Train on scikit-learn's digits (no download) or other data, densely and with SWAT; "
                    "print both accuracies and the per-layer sparsity achieved.")
    cli_options.add_run_options(parser)
    cli_options.add_swat_options(parser)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline (one run)")
    cli_options.add_output_options(parser, "one row per run and epoch (loss, accuracies, achieved sparsity)")
    parser.add_argument("--monitor", "--monitor-csv", dest="monitor", default=None, metavar="FILE.csv",
                        help="record the SWAT run's sites at every step (density, Top-K threshold) to this CSV "
                             "(under torchrun, write --monitor-csv: torchrun reads --monitor as its own option)")
    parser.add_argument("--angle", action="store_true", help="with --monitor: also the sparsification angle")
    parser.set_defaults(run=run, trains=True)
