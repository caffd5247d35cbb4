"""`PassManager`: runs passes in order, checking each one's contract and linting the graph after it.

As in `torch.fx.passes.infra.pass_manager`, a failure names the pass: a violated precondition (the
pass was run out of order), a graph left invalid (`Graph.lint`), or a postcondition it did not ensure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

from swat_fx.passes.pass_base import Condition, SwatPass


class PassContractError(RuntimeError):
    """A pass was run on a graph it does not accept, or left one that breaks its contract."""

    def __init__(self, pass_name: str, message: str) -> None:
        super().__init__(f"pass {pass_name}: {message}")
        self.pass_name = pass_name


def _check(swat_pass: SwatPass, conditions: Sequence[Condition], gm: fx.GraphModule, which: str) -> None:
    for condition in conditions:
        violation = condition.violation(gm)
        if violation is not None:
            raise PassContractError(swat_pass.name, f"{which} {condition.name}, but {violation}")


class PassManager:
    """Runs `passes` in order; after each, the graph is linted, recompiled and its `ensures` checked."""

    def __init__(self, passes: Sequence[SwatPass]) -> None:
        self.passes = tuple(passes)

    def __call__(self, gm: fx.GraphModule) -> fx.GraphModule:
        for swat_pass in self.passes:
            _check(swat_pass, swat_pass.requires, gm, "requires")
            gm = swat_pass(gm)
            try:
                gm.graph.lint()
            except Exception as error:
                raise PassContractError(swat_pass.name, f"left an invalid graph: {error}") from error
            gm.recompile()
            _check(swat_pass, swat_pass.ensures, gm, "ensures")
        return gm
