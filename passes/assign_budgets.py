"""Pass: give each weight product its sparsity and SWAT plan (SPEC §4).

Order of rules: the distribution (uniform or ERK) over the layers that are sparsified, the first and
last layer rules, then per-layer overrides, which win over everything. Each record is replaced by one
with `sparsity`, `sites`, `granularity` and `period` set; the graph is unchanged.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch.fx as fx

from swat_fx.config import SwatConfig
from swat_fx.contract import OP_META, DenseReason, WeightProduct, record_of, weight_product_nodes
from swat_fx.passes.conditions import BUDGETS_ASSIGNED, PRODUCTS_RECORDED
from swat_fx.passes.pass_base import SwatPass


def erk_densities(shapes: Sequence[Sequence[int]], density: float,
                  copies: Sequence[int] | None = None) -> list[float]:
    """Erdős–Rényi-Kernel densities (as in RigL): proportional to sum(dims)/prod(dims), scaled so the
    kept weights total `density` × all weights, with layers that would exceed 1 capped at 1. A layer of
    `copies[i]` weights of `shapes[i]` (a batched linear: its matrices) weighs as many."""
    copies = [1] * len(shapes) if copies is None else copies
    sizes = [math.prod(shape) * n for shape, n in zip(shapes, copies, strict=True)]
    raw = [sum(shape) / math.prod(shape) for shape in shapes]
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


class Budget(NamedTuple):
    """The sparsity of one op, and the user's rule that makes it 0 where it is."""

    sparsity: float
    dense_reason: DenseReason | None = None


def budgets(ops: list[WeightProduct], config: SwatConfig) -> dict[str, Budget]:
    """The budget of every op, by name, under `config`'s rules."""
    _check_overrides(ops, dict(config.layer_sparsity))
    excluded: dict[str, DenseReason] = {}
    if ops and not config.sparsify_last:
        excluded[ops[-1].name] = DenseReason.LAST_LAYER
    if ops and not config.sparsify_first:
        excluded[ops[0].name] = DenseReason.FIRST_LAYER

    def override(op: WeightProduct) -> float | None:
        return config.layer_sparsity.get(op.name, config.layer_sparsity.get(op.name.split("@")[0]))

    free = [op for op in ops if op.name not in excluded and override(op) is None]
    if config.distribution == "erk":
        matrices = [op.layer == "linear" and len(op.weight_shape) > 2 for op in free]  # batched: [..., O, I]
        densities = erk_densities([op.weight_shape[-2:] if batched else op.weight_shape
                                   for op, batched in zip(free, matrices, strict=True)], 1.0 - config.sparsity,
                                  [math.prod(op.weight_shape[:-2]) if batched else 1
                                   for op, batched in zip(free, matrices, strict=True)])
        dense_reason = DenseReason.ERK_DENSE
        budget = {op.name: max(0.0, 1.0 - d) for op, d in zip(free, densities, strict=True)}
    else:
        dense_reason = DenseReason.ZERO_SPARSITY
        budget = {op.name: config.sparsity for op in free}
    result = {}
    for op in ops:
        if override(op) is not None:
            result[op.name] = Budget(override(op), DenseReason.OVERRIDE if override(op) == 0 else None)
        elif op.name in excluded:
            result[op.name] = Budget(0.0, excluded[op.name])
        else:
            result[op.name] = Budget(budget[op.name], dense_reason if budget[op.name] == 0 else None)
    return result


class AssignBudgets(SwatPass):
    """Set sparsity, sites, granularity and period on every `WeightProduct` according to `config`."""

    requires = (PRODUCTS_RECORDED,)
    ensures = (BUDGETS_ASSIGNED,)

    def __init__(self, config: SwatConfig) -> None:
        self.config = config

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes = weight_product_nodes(gm)
        plan = budgets([record_of(node) for node in nodes], self.config)
        for node in nodes:
            record = record_of(node)
            sparsity, reason = plan[record.name]
            sites = self.config.active_sites if sparsity > 0 else frozenset()
            if sparsity > 0 and not sites:
                reason = DenseReason.NO_SITES
            node.meta[OP_META] = record.replace(
                sparsity=sparsity, sites=sites, granularity=self.config.granularity, period=self.config.period,
                dense_reason=reason,
            )
        return gm
