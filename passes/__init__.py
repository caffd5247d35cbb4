"""Backend-neutral FX passes that turn a traced model into a SWAT graph (SPEC §5).

Each pass is a `SwatPass` that states what it requires and ensures; `neutral_passes` is the pipeline
`transform` runs, under a `PassManager` that checks every contract and lints the graph after each pass.
Passes never import a backend.
"""

from swat_fx.config import SwatConfig
from swat_fx.passes.assign_budgets import AssignBudgets, erk_densities
from swat_fx.passes.find_weight_products import FindWeightProducts
from swat_fx.passes.insert_sparsification import InsertSparsification
from swat_fx.passes.pass_base import Condition, SwatPass
from swat_fx.passes.pass_manager import PassContractError, PassManager
from swat_fx.passes.share_sparsified_inputs import ShareSparsifiedInputs


def neutral_passes(config: SwatConfig) -> PassManager:
    """find weight products -> assign budgets -> insert sparsification -> share sparsified inputs."""
    return PassManager([FindWeightProducts(), AssignBudgets(config), InsertSparsification(config.sync_thresholds),
                        ShareSparsifiedInputs()])


__all__ = [
    "AssignBudgets",
    "Condition",
    "FindWeightProducts",
    "InsertSparsification",
    "PassContractError",
    "PassManager",
    "ShareSparsifiedInputs",
    "SwatPass",
    "erk_densities",
    "neutral_passes",
]
