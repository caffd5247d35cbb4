"""FX passes that turn a traced model into a SWAT graph, in the order `transform` runs them.

Each pass is `GraphModule -> GraphModule` and does one job; its docstring states its pre- and
post-conditions.
"""

from swat_fx.passes.assign_budgets import assign_budgets, erk_densities
from swat_fx.passes.choose_kernels import choose_kernels
from swat_fx.passes.find_sparsifiable_ops import (
    META_KEY,
    SparsifiableOp,
    find_sparsifiable_ops,
    sparsifiable_nodes,
)
from swat_fx.passes.insert_sparsification import STATE_ROOT, insert_sparsification, state_path
from swat_fx.passes.share_sparsified_inputs import share_sparsified_inputs
from swat_fx.passes.store_activations_compactly import store_activations_compactly

__all__ = [
    "META_KEY",
    "STATE_ROOT",
    "SparsifiableOp",
    "assign_budgets",
    "choose_kernels",
    "erk_densities",
    "find_sparsifiable_ops",
    "insert_sparsification",
    "share_sparsified_inputs",
    "sparsifiable_nodes",
    "state_path",
    "store_activations_compactly",
]
