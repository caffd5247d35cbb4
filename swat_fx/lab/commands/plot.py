"""`swat-fx plot`: re-draw the figure of any experiment from its CSV."""

from __future__ import annotations

import argparse
from typing import Any

from swat_fx.lab import experiments, plotting


def run(args: argparse.Namespace) -> int:
    png = experiments.check_output(args.output, "plot", plotting.FORMATS)
    print(f"plot: {experiments.plot(args.csv, png)}")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "plot", help="re-draw an experiment's figure from its CSV",
        description="Re-draw the figure of a CSV written by train (--csv or --monitor), sweep, sensitivity, "
                    "granularity, periodic or angle; the kind is recognised from the columns.")
    parser.add_argument("csv", help="the CSV file")
    parser.add_argument("-o", "--output", default=None, metavar="FILE.png",
                        help="the figure (default: the CSV's name with .png)")
    parser.set_defaults(run=run)
