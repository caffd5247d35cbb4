"""`swat-fx sensitivity`: sparsify one site at a time and see what each costs (Fig. 2a/b)."""

from __future__ import annotations

from typing import Any

from swat_fx.config import SITES
from swat_fx.lab import cli_options, experiments


def register(commands: Any) -> None:
    cli_options.grid_command(commands, "sensitivity", experiments.sensitivity, "sites", SITES,
                             base_options=("granularity",),
                             help="accuracy change when one site (fw_w, fw_a, bw_w, bw_a, bw_g) is sparsified")
