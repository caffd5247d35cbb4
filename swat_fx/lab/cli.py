"""The `swat-fx` command line: one subcommand per module of `swat_fx.lab.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from swat_fx.lab import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swat-fx", description="Sparse Weight Activation Training for PyTorch.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError) as error:
        print(f"swat-fx: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
