"""`swat-fx granularity`: the Top-K granularities nchw, chw, hw, kernel and filter compared (Fig. 3)."""

from __future__ import annotations

from typing import Any

from swat_fx.config import GRANULARITIES
from swat_fx.lab import cli_options, experiments


def register(commands: Any) -> None:
    cli_options.grid_command(commands, "granularity", experiments.granularity, "granularities", GRANULARITIES,
                             base_options=("algorithm",), help="accuracy of each Top-K granularity")
