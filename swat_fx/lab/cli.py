"""The `swat-fx` command line: one subcommand per module of `swat_fx.lab.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import swat_fx
from swat_fx import backends, passes
from swat_fx.lab import commands, distributed

_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_OWN_CODE = tuple(os.path.join(os.path.realpath(folder), "") for package in (swat_fx, passes, backends)
                  for folder in package.__path__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swat-fx", description="Sparse Weight Activation Training for PyTorch.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(subparsers)
    for command in subparsers.choices.values():  # `trains`: every rank of a process group runs it
        command.set_defaults(trains=command.get_default("trains") or False)
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


def _as_follower(args: argparse.Namespace) -> None:
    """A rank other than 0 trains its share and writes nothing: no files, no progress bar."""
    for output in ("csv", "plot", "monitor"):
        setattr(args, output, None)
    args.quiet = True


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user error is one line on stderr and exit status 2. Under `torchrun`,
    every rank runs it on its share of each batch, and rank 0 alone prints and writes."""
    args = build_parser().parse_args(argv)
    where = distributed.start()
    try:
        if where.main:
            return args.run(args)
        if not args.trains:  # a command that trains nothing runs once, on rank 0
            return 0
        _as_follower(args)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return args.run(args)
    except (ValueError, *_FILE_ERRORS) as error:
        if not is_user_error(error):
            raise
        print(f"swat-fx: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.stop(where)


if __name__ == "__main__":
    sys.exit(main())
