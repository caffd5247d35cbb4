"""When a SWAT training iteration begins and ends (SPEC §3, periodic Top-K).

A step of the Top-K schedule is a training iteration, not a forward call. An iteration begins with the
first training-mode forward under autograd after the previous one ended, and ends when the backward
pass that follows it has finished (autograd's end-of-backward callback, the hook DDP uses too). So every
forward of one iteration uses the same thresholds: an activation-checkpoint recompute (reentrant or
not), a second forward before the backward. A forward under `torch.no_grad()` in training mode uses
the current iteration's thresholds (or those the next one would use) and changes no state.
Micro-batches of a gradient-accumulation step are one iteration each, unless they run inside
`accumulate(model)`.

All Top-K sites of a transformed model share one `IterationClock`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle


class IterationClock:
    """The iteration boundary of one model: `generation` counts the iterations begun in this process."""

    def __init__(self) -> None:
        self.generation = 0
        self.running = False
        self.held = False
        self._handle: RemovableHandle | None = None

    def begin(self) -> int:
        """The generation of the iteration in progress, beginning one if none is."""
        if not self.running:
            self.generation += 1
            self.running = True
        return self.generation

    def watch(self, t: torch.Tensor) -> None:
        """End the iteration after the backward pass that reaches `t` (the first tensor seen that can)."""
        if self._handle is None and t.requires_grad:
            self._handle = t.register_hook(self._on_backward)

    def _on_backward(self, grad: torch.Tensor) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(self.end)

    def end(self) -> None:
        """End the iteration in progress (not while `held` by `accumulate`)."""
        if self.held:
            return
        self.running = False
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __getstate__(self) -> dict[str, Any]:  # a hook handle does not survive copy or pickle
        return {**self.__dict__, "_handle": None, "running": False}


def clocks(model: nn.Module) -> list[IterationClock]:
    """The clocks of a transformed model's sites (one, unless sites of several models were mixed)."""
    from swat_fx.contract import sites

    return list({id(site.clock): site.clock for _, site in sites(model)}.values())


@contextmanager
def accumulate(model: nn.Module) -> Iterator[None]:
    """Every forward and backward inside is one SWAT iteration (the micro-batches of a gradient-
    accumulation step share their thresholds and advance the schedule once)."""
    held = clocks(model)
    for clock in held:
        clock.held = True
    try:
        yield
    finally:
        for clock in held:
            clock.held = False
            clock.end()
