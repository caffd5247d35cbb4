"""Subcommands of `swat-fx`: each module here defines `register(subparsers)` and is found by `swat_fx.lab.cli`.

Modules import heavy optional dependencies (onnx, matplotlib) inside their run functions, so that
`swat-fx --help` stays fast and works without them.
"""
