"""Options shared by the `swat-fx` experiment commands: data, model, training, SWAT, outputs.

It lives outside `swat_fx.lab.commands` because every module there is a subcommand.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from swat_fx import models
from swat_fx.config import ALGORITHMS, GRANULARITIES, SwatConfig
from swat_fx.lab import plotting
from swat_fx.lab.data import DATASETS, Dataset, load_dataset
from swat_fx.lab.experiments import Settings

INTERRUPTED = 130  # the shell's exit status after Ctrl-C


def add_run_options(parser: argparse.ArgumentParser, epochs: int = 30) -> None:
    """--dataset, --model and the training options of `experiments.Settings`."""
    group = parser.add_argument_group("data and training")
    group.add_argument("--dataset", default="digits", metavar="NAME|FILE.npz",
                       help=f"{' or '.join(DATASETS)} (no download), or an .npz file with arrays x "
                            "[N, C, H, W] / [N, F] and y (integer labels) (default: %(default)s)")
    group.add_argument("--num-classes", type=int, default=None,
                       help="classes of synthetic data / of an .npz (default: 10 / max label + 1)")
    group.add_argument("--max-samples", type=int, default=None,
                       help="use at most this many training and test samples (quick runs)")
    group.add_argument("--model", default="small_cnn", choices=sorted(models.MODELS), metavar="MODEL",
                       help="a model of swat_fx.models, sized to the data (default: %(default)s)")
    group.add_argument("--epochs", type=int, default=epochs, help="epochs per run (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def add_swat_options(parser: argparse.ArgumentParser, sparsity: float = 0.7, period: bool = True) -> None:
    """--algorithm, --sparsity, --granularity (and --period) of the SWAT configuration."""
    group = parser.add_argument_group("SWAT")
    group.add_argument("--algorithm", default="swat", choices=sorted(ALGORITHMS))
    group.add_argument("--sparsity", type=float, default=sparsity, help="fraction dropped (default: %(default)s)")
    group.add_argument("--granularity", default="nchw", choices=GRANULARITIES)
    if period:
        group.add_argument("--period", type=int, default=1, help="steps between exact Top-K (default: 1)")
    _add_dense_last(group)


def _add_dense_last(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--dense-last, for `SwatConfig.sparsify_last`."""
    parser.add_argument("--dense-last", action="store_true",
                        help="keep the last layer dense (sparsify_last=False), e.g. for structured granularities, "
                             "which would otherwise drop whole classes of the classifier")


def add_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--csv and --plot, checked before any training starts."""
    group = parser.add_argument_group("outputs")
    group.add_argument("--csv", default=None, metavar="FILE.csv", help=f"write {what} to this CSV")
    group.add_argument("--plot", default=None, metavar="FILE.png", help="draw the figure to this PNG (or .pdf, .svg)")


def settings(args: argparse.Namespace) -> Settings:
    """How each run trains, from --model, --epochs, --batch-size, --lr, --seed, --quiet."""
    if args.epochs < 1 or args.batch_size < 1:
        raise ValueError(f"--epochs and --batch-size must be >= 1, got {args.epochs} and {args.batch_size}")
    return Settings(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, progress=not args.quiet)


def config_from_args(args: argparse.Namespace) -> SwatConfig:
    """The SWAT configuration of `add_swat_options` (validated: a bad value fails before training)."""
    return SwatConfig(sparsity=args.sparsity, algorithm=args.algorithm, granularity=args.granularity,
                      period=getattr(args, "period", 1), sparsify_last=not args.dense_last)


def dataset(args: argparse.Namespace) -> Dataset:
    """The data of --dataset (validated on loading: a bad file fails before training)."""
    return load_dataset(args.dataset, seed=args.seed, num_classes=args.num_classes, max_samples=args.max_samples)


def interruptible(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Ctrl-C ends the command with a message (and exit status 130) instead of a traceback; the CSV
    keeps the rows written so far, since they are flushed one by one."""
    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except KeyboardInterrupt:
            kept = f"; {args.csv} keeps the rows written so far" if getattr(args, "csv", None) else ""
            print(f"\nswat-fx: interrupted{kept}", file=sys.stderr)
            return INTERRUPTED
    return wrapper


def default(function: Callable[..., object], parameter: str) -> Any:
    """The default of one parameter of an experiment function: the CLI shows the same defaults."""
    return inspect.signature(function).parameters[parameter].default


def format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of experiment rows (floats as percentages where they are fractions)."""
    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if column == "seconds" else f"{value:.2%}"
        return str(value)

    table = [list(columns), *([cell(c, row[c]) for c in columns] for row in rows)]
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]

    def line(cells: list[str]) -> str:  # the first column left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(cells) for cells in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def grid_command(
    commands: Any,
    name: str,
    experiment: Callable[..., list[dict[str, Any]]],
    option: str,
    choices: Sequence[str],
    base_options: Sequence[str],
    help: str,
) -> None:
    """Register a command that runs an `experiments.accuracy_grid` experiment (sweep, sensitivity,
    granularity): `--<option>` picks the labels, `--sparsities` the sparsities, `base_options` (of
    "algorithm", "granularity") configure what the labels do not vary."""
    parser = commands.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}: trains the dense "
                                 "baseline, then each choice at each sparsity, and reports the final test accuracies.")
    add_run_options(parser)
    parser.add_argument(f"--{option}", nargs="+", choices=choices, default=list(default(experiment, option)),
                        help="(default: %(default)s)")
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(default(experiment, "sparsities")),
                        help="(default: %(default)s)")
    if "algorithm" in base_options:
        parser.add_argument("--algorithm", default="swat", choices=sorted(ALGORITHMS))
    if "granularity" in base_options:
        parser.add_argument("--granularity", default="nchw", choices=GRANULARITIES)
    _add_dense_last(parser)
    add_output_options(parser, "one row per run (accuracy, change from dense, achieved sparsity)")

    @interruptible
    def run(args: argparse.Namespace) -> int:
        base = SwatConfig(algorithm=getattr(args, "algorithm", None), granularity=getattr(args, "granularity", "nchw"),
                          sparsify_last=not args.dense_last)
        rows = experiment(dataset(args), settings(args), getattr(args, option), args.sparsities, base=base,
                          csv=args.csv, png=args.plot)
        print(format_rows(rows, plotting.COLUMNS[name]))
        print_outputs(args)
        return 0

    parser.set_defaults(run=run, trains=True)


def print_outputs(args: argparse.Namespace, **more: str | None) -> None:
    """Where the results went."""
    for what, path in {"CSV": args.csv, "plot": args.plot, **more}.items():
        if path is not None:
            print(f"{what}: {path}")
