"""The sparse-accelerator backend: an IR of one whole training step, and a cost model (SPEC §5).

    ir = swat_fx.to_accel_ir(swat_model, example_inputs)        # networkx.DiGraph
    swat_fx.save_ir(ir, "step.json")                             # or .graphml, .dot
    print(swat_fx.estimate_cost(swat_model, example_inputs, accelerator="balanced"))

The counting conventions (what a FLOP is for each op, which bytes are counted) are in the README,
section "Sparse-accelerator cost model", and in `swat_fx.backends.accel.flops` / `.formats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx
import torch
import torch.fx as fx

from swat_fx.backends.accel.cost import PRESETS, Accelerator, Comparison, CostReport, estimate, resolve_accelerator
from swat_fx.backends.accel.densities import DENSITY_SOURCES
from swat_fx.backends.accel.export import save_ir
from swat_fx.backends.accel.formats import FORMATS
from swat_fx.backends.accel.ir import PHASES, to_accel_ir
from swat_fx.backends.accel.report import format_sweep
from swat_fx.shapes import ShapePropagationError

__all__ = [
    "DENSITY_SOURCES",
    "FORMATS",
    "PHASES",
    "PRESETS",
    "Accelerator",
    "Comparison",
    "CostReport",
    "ShapePropagationError",
    "estimate_cost",
    "format_sweep",
    "save_ir",
    "to_accel_ir",
]


def estimate_cost(
    transformed_or_ir: fx.GraphModule | nx.DiGraph,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    accelerator: str | Accelerator = "ideal",
    **ir_options: Any,
) -> CostReport:
    """Dense vs SWAT cost of one training step on `accelerator` (a preset name of `PRESETS` or an
    `Accelerator`). Give a transformed model with `example_inputs` (and `to_accel_ir` options), or an
    IR built before."""
    acc = resolve_accelerator(accelerator)
    if isinstance(transformed_or_ir, nx.DiGraph):
        if example_inputs is not None or ir_options:
            raise ValueError("estimate_cost takes example_inputs and IR options only with a model, not an IR")
        return estimate(transformed_or_ir, acc)
    if example_inputs is None:
        raise ValueError("estimate_cost needs example_inputs to propagate the model's shapes")
    return estimate(to_accel_ir(transformed_or_ir, example_inputs, **ir_options), acc)
