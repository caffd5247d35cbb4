"""When a SWAT training iteration begins and ends (SPEC §3, periodic Top-K).

A step of the Top-K schedule is a training iteration, not a forward call:

- it begins with the first training-mode forward under autograd once the previous one has ended, and
  every site advances its step counter there, once;
- it ends at the next fresh forward of the model (not a recompute inside a backward) after a backward
  reached the model's outputs, or when nothing of the iteration could be back-propagated.

So an activation-checkpoint recompute (reentrant or not, any number of them), a second call of the
model before the backward (siamese inputs, a block used twice) and a forward that never got a backward
belong to the iteration in progress; a forward under `torch.no_grad()` in training mode uses that
iteration's thresholds (or those the next one would use) and changes no state. Micro-batches of a
gradient-accumulation step are one iteration each, unless they run inside `accumulate(model)`. State is
written once per site and iteration, by the site's first call.

All Top-K sites of a transformed model share one `IterationClock`, driven by the model's calls
(`SwatGraphModule.__call__`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn


def _inside_backward() -> bool:
    """Whether autograd is running a backward pass on this thread (a checkpoint recompute runs there)."""
    return torch._C._current_graph_task_id() != -1


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, or tuples, lists and dicts of them, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    return []


class IterationClock:
    """The iteration boundary of one model: `generation` counts the iterations begun in this process."""

    def __init__(self) -> None:
        self.generation = 0
        self.running = False
        self.holds = 0
        self.can_backward = False
        self.backward_seen = False

    def begin(self) -> int:
        """The generation of the iteration in progress, beginning one if none is."""
        if not self.running:
            self.generation += 1
            self.running = True
        return self.generation

    def end(self) -> None:
        """End the iteration in progress (not while `accumulate` holds it)."""
        if self.holds:
            return
        self.running = self.can_backward = self.backward_seen = False

    def before_forward(self) -> None:
        """A call of the model begins: a fresh one ends the iteration in progress once a backward has
        reached the model's outputs, or when nothing of the iteration could be back-propagated."""
        if self.running and not _inside_backward() and (self.backward_seen or not self.can_backward):
            self.end()

    def after_forward(self, output: Any) -> None:
        """A call of the model returned `output`: note when a backward reaches it."""
        if not self.running or _inside_backward() or not torch.is_grad_enabled():
            return
        outputs = [t for t in tensors_in(output) if t.requires_grad]
        if outputs:
            self.can_backward = True
            torch.autograd.graph.register_multi_grad_hook(outputs, self._on_backward, mode="any")

    def _on_backward(self, grad: torch.Tensor) -> None:
        self.backward_seen = True

    def __getstate__(self) -> dict[str, Any]:  # a copy starts between iterations, held by nothing
        return {**self.__dict__, "running": False, "holds": 0, "can_backward": False, "backward_seen": False}


def clocks(model: nn.Module) -> list[IterationClock]:
    """The clocks of a transformed model's sites (one, unless sites of several models were mixed)."""
    from swat_fx.contract import sites

    return list({id(site.clock): site.clock for _, site in sites(model)}.values())


@contextmanager
def accumulate(model: nn.Module) -> Iterator[None]:
    """Every forward and backward inside is one SWAT iteration (the micro-batches of a gradient-
    accumulation step advance the schedule once; at a refresh each computes its exact Top-K and the
    first one's threshold is stored). Nests."""
    held = clocks(model)
    for clock in held:
        clock.holds += 1
    try:
        yield
    finally:
        for clock in held:
            clock.holds -= 1
            clock.end()
