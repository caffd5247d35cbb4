"""Pass: give each sparsifiable op its sparsity (SPEC §4).

Pre: `find_sparsifiable_ops` ran. Post: every `SparsifiableOp.sparsity` is set; the graph is unchanged.
Order of rules: the distribution (uniform or ERK) over the layers that are sparsified, the first and
last layer rules, then per-layer overrides, which win over everything.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch.fx as fx

from swat_fx.config import SwatConfig
from swat_fx.passes.find_sparsifiable_ops import META_KEY, SparsifiableOp, sparsifiable_nodes


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Erdős–Rényi-Kernel densities (as in RigL): proportional to sum(dims)/prod(dims), scaled so the
    kept weights total `density` × all weights, with layers that would exceed 1 capped at 1."""
    sizes = [math.prod(shape) for shape in shapes]
    raw = [sum(shape) / size for shape, size in zip(shapes, sizes, strict=True)]
    target = density * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        budget = target - sum(sizes[i] for i in dense)
        scale = budget / sum(raw[i] * sizes[i] for i in free) if free else 0.0
        capped = {i for i in free if scale * raw[i] > 1.0}
        if not capped:
            return [1.0 if i in dense else scale * raw[i] for i in range(len(shapes))]
        dense |= capped


def _check_overrides(ops: list[SparsifiableOp], overrides: dict[str, float]) -> None:
    names = {op.name for op in ops} | {op.name.split("@")[0] for op in ops}
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=5, cutoff=0.4)
            hint = f"close matches: {', '.join(close)}" if close else f"layers: {', '.join(sorted(names)[:20])}"
            raise KeyError(f"layer_sparsity names no sparsifiable layer: {key!r} ({hint})")


def assign_budgets(gm: fx.GraphModule, config: SwatConfig) -> fx.GraphModule:
    """Set `sparsity` on every annotated op according to `config`."""
    ops = [node.meta[META_KEY] for node in sparsifiable_nodes(gm)]
    _check_overrides(ops, dict(config.layer_sparsity))
    excluded = set()
    if ops and not config.sparsify_first:
        excluded.add(ops[0].name)
    if ops and not config.sparsify_last:
        excluded.add(ops[-1].name)

    def override(op: SparsifiableOp) -> float | None:
        return config.layer_sparsity.get(op.name, config.layer_sparsity.get(op.name.split("@")[0]))

    free = [op for op in ops if op.name not in excluded and override(op) is None]
    if config.distribution == "erk":
        densities = erk_densities([op.weight_shape for op in free], 1.0 - config.sparsity)
        budget = {op.name: max(0.0, 1.0 - d) for op, d in zip(free, densities, strict=True)}
    else:
        budget = {op.name: config.sparsity for op in free}
    for op in ops:
        op.sparsity = override(op) if override(op) is not None else budget.get(op.name, 0.0)
    return gm
