"""Pass: give each weight product its sparsity and SWAT plan (SPEC §4).

Order of rules: the distribution (uniform or ERK) over the layers that are sparsified, the first and
last layer rules, then per-layer overrides, which win over everything. Each record is replaced by one
with `sparsity`, `sites`, `granularity` and `period` set; the graph is unchanged.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch.fx as fx

from swat_fx.config import SwatConfig
from swat_fx.contract import OP_META, DenseReason, WeightProduct, record_of, weight_product_nodes
from swat_fx.passes.conditions import BUDGETS_ASSIGNED, PRODUCTS_RECORDED
from swat_fx.passes.pass_base import SwatPass


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


def _check_overrides(ops: list[WeightProduct], overrides: dict[str, float]) -> None:
    names = {op.name for op in ops} | {op.name.split("@")[0] for op in ops}
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=5, cutoff=0.4)
            hint = f"close matches: {', '.join(close)}" if close else f"layers: {', '.join(sorted(names)[:20])}"
            raise KeyError(f"layer_sparsity names no sparsifiable layer: {key!r} ({hint})")


def budgets(ops: list[WeightProduct], config: SwatConfig) -> dict[str, float]:
    """The sparsity of every op, by name, under `config`'s rules."""
    _check_overrides(ops, dict(config.layer_sparsity))
    excluded = set()
    if ops and not config.sparsify_first:
        excluded.add(ops[0].name)
    if ops and not config.sparsify_last:
        excluded.add(ops[-1].name)

    def override(op: WeightProduct) -> float | None:
        return config.layer_sparsity.get(op.name, config.layer_sparsity.get(op.name.split("@")[0]))

    free = [op for op in ops if op.name not in excluded and override(op) is None]
    if config.distribution == "erk":
        densities = erk_densities([op.weight_shape for op in free], 1.0 - config.sparsity)
        budget = {op.name: max(0.0, 1.0 - d) for op, d in zip(free, densities, strict=True)}
    else:
        budget = {op.name: config.sparsity for op in free}
    return {op.name: override(op) if override(op) is not None else budget.get(op.name, 0.0) for op in ops}


class AssignBudgets(SwatPass):
    """Set sparsity, sites, granularity and period on every `WeightProduct` according to `config`."""

    requires = (PRODUCTS_RECORDED,)
    ensures = (BUDGETS_ASSIGNED,)

    def __init__(self, config: SwatConfig) -> None:
        self.config = config

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes = weight_product_nodes(gm)
        ops = [record_of(node) for node in nodes]
        sparsity = budgets(ops, self.config)
        for node in nodes:
            record = record_of(node)
            s = sparsity[record.name]
            sites = self.config.active_sites if s > 0 else frozenset()
            node.meta[OP_META] = record.replace(
                sparsity=s, sites=sites, granularity=self.config.granularity, period=self.config.period,
                dense_reason=None if sites else _dense_reason(record, ops, self.config),
            )
        return gm


def _dense_reason(op: WeightProduct, ops: list[WeightProduct], config: SwatConfig) -> DenseReason:
    """Which of the user's rules leaves `op` dense."""
    if not config.active_sites:
        return DenseReason.NO_SITES
    if op.name in config.layer_sparsity or op.name.split("@")[0] in config.layer_sparsity:
        return DenseReason.OVERRIDE
    if op is ops[0] and not config.sparsify_first:
        return DenseReason.FIRST_LAYER
    if op is ops[-1] and not config.sparsify_last:
        return DenseReason.LAST_LAYER
    return DenseReason.ERK_DENSE if config.distribution == "erk" else DenseReason.ZERO_SPARSITY
