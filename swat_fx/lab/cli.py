"""The `swat-fx` command line: one subcommand per module of `swat_fx.lab.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import swat_fx
from swat_fx import backends, passes
from swat_fx.lab import commands

_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_OWN_CODE = tuple(os.path.join(os.path.realpath(folder), "") for package in (swat_fx, passes, backends)
                  for folder in package.__path__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swat-fx", description="Sparse Weight Activation Training for PyTorch.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(subparsers)
    return parser


def is_user_error(error: BaseException) -> bool:
    """A bad argument or file: a file error, or a ValueError that swat_fx itself raised about its input
    (the library's bad-input type). Anything else (a TypeError, a KeyError, a ValueError from inside
    torch) is a bug, and must show its traceback."""
    if isinstance(error, _FILE_ERRORS):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    raised_here = bool(frames) and os.path.realpath(frames[-1].filename).startswith(_OWN_CODE)
    return isinstance(error, ValueError) and raised_here


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user error is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, *_FILE_ERRORS) as error:
        if not is_user_error(error):
            raise
        print(f"swat-fx: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
