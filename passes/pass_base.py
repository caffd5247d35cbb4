"""What a pass is: a `GraphModule -> GraphModule` function with the conditions it requires and ensures.

In the spirit of `torch.fx.passes.infra.pass_base`: a pass states its contract as `Condition`s, and
the `PassManager` checks them around it, so a broken pass is named where it breaks, not three passes
later inside torch.fx.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch.fx as fx


@dataclass(frozen=True)
class Condition:
    """A property of a graph: `violation(gm)` says how `gm` breaks it, or returns None when it holds."""

    name: str
    violation: Callable[[fx.GraphModule], str | None]

    def __repr__(self) -> str:
        return self.name


class SwatPass(abc.ABC):
    """One transformation of a graph. Subclasses set `requires` / `ensures` and implement `call`."""

    requires: tuple[Condition, ...] = ()
    ensures: tuple[Condition, ...] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Transform `gm` (in place or into a new module) and return the result."""

    def __call__(self, gm: fx.GraphModule) -> fx.GraphModule:
        return self.call(gm)
