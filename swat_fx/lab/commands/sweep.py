"""`swat-fx sweep`: accuracy vs sparsity for SWAT, SAW and meProp against the dense baseline (Fig. 4)."""

from __future__ import annotations

from typing import Any

from swat_fx.config import ALGORITHMS
from swat_fx.lab import cli_options, experiments


def register(commands: Any) -> None:
    cli_options.grid_command(commands, "sweep", experiments.sweep, "algorithms", sorted(ALGORITHMS),
                             base_options=("granularity",), help="accuracy vs sparsity for several algorithms")
