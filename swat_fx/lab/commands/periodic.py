"""`swat-fx periodic`: how far the achieved sparsity drifts between exact Top-K refreshes (Fig. 10)."""

from __future__ import annotations

import argparse
from typing import Any

from swat_fx.lab import cli_options, experiments


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per period and role: the target and the mean, lowest and highest achieved sparsity over steps."""
    groups: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["period"], row["role"]), []).append(1.0 - row["density"])
    target = 1.0 - rows[0]["target_density"]
    return [{"period": str(period), "role": role, "target": target, "mean": sum(v) / len(v), "lowest": min(v),
             "highest": max(v)} for (period, role), v in groups.items()]


@cli_options.interruptible
def run(args: argparse.Namespace) -> int:
    base = cli_options.config_from_args(args)
    rows = experiments.periodic(cli_options.dataset(args), cli_options.settings(args), periods=args.periods,
                                sparsity=args.sparsity, base=base, every=args.every, csv=args.csv, png=args.plot)
    print("achieved sparsity over the training steps:")
    print(cli_options.format_rows(_summary(rows), ("period", "role", "target", "mean", "lowest", "highest")))
    cli_options.print_outputs(args)
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "periodic", help="achieved sparsity over the steps with periodic Top-K",
        description="Train once per Top-K period and record the sparsity every site achieves at every step: "
                    "between refreshes the stored threshold is reused and the sparsity drifts.")
    cli_options.add_run_options(parser)
    cli_options.add_swat_options(parser, sparsity=cli_options.default(experiments.periodic, "sparsity"), period=False)
    parser.add_argument("--periods", nargs="+", type=int, default=list(cli_options.default(experiments.periodic,
                        "periods")), help="(default: %(default)s)")
    parser.add_argument("--every", type=int, default=1, help="record one step in this many (default: 1)")
    cli_options.add_output_options(parser, "one row per period, step and site")
    parser.set_defaults(run=run, trains=True)
