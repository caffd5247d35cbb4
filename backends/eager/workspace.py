"""Scratch memory for the operands a SWAT kernel rebuilds for one product (W_s, X_s).

The masked kernels hold W or X and a threshold, and rebuild the sparse operand in one pass just before
the product that reads it; nothing else reads it afterwards. Rebuilding into a fresh tensor for every
layer costs an allocation and a first write to cold memory each time; one buffer a slot, reused by
every layer of the model, stays in cache between the rebuild and the product. CPU kernels run
synchronously, so a product is done with its buffer before the next rebuild starts. Only the compiled
CPU kernels rebuild into it (`ThresholdedParameter.writes_into_out`); elsewhere (CUDA, other dtypes)
the kernels take nothing from it.
"""

from __future__ import annotations

import enum
import math
import threading
from typing import Any

import torch
import torch.nn as nn


class Slot(enum.Enum):
    """Which rebuilt operand of a product a buffer holds: both of a backward live at once."""

    WEIGHT = "weight"
    INPUT = "input"


class Workspace(nn.Module):
    """One buffer a (slot, dtype, device) for each thread, grown to the largest operand it has held.

    It owns no parameter or buffer (nothing in `state_dict()`); a copy, an unpickled model and a model
    moved with `.to()` start empty. `nbytes` says what the calling thread's buffers hold, `clear()`
    gives back every thread's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def _buffers_here(self) -> dict[tuple[Slot, torch.dtype, torch.device], torch.Tensor]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        return buffers

    def buffer(self, slot: Slot, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of `shape`, valid until the next request for the same slot on this
        thread."""
        buffers = self._buffers_here()
        key = (slot, dtype, device)
        count = math.prod(shape)
        flat = buffers.get(key)
        if flat is None or flat.numel() < count:
            flat = buffers[key] = torch.empty(count, dtype=dtype, device=device)
        return flat[:count].view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes this thread's buffers hold."""
        return sum(b.numel() * b.element_size() for b in self._buffers_here().values())

    def clear(self) -> None:
        """Release the buffers of every thread (the next rebuild allocates again)."""
        self._local = threading.local()

    def _apply(self, fn: Any, recurse: bool = True) -> Workspace:
        """`.to()`, `.double()`, `.cuda()`, ...: buffers of the old dtype or device are of no more use."""
        self.clear()
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"scratch for rebuilt W_s / X_s, {self.nbytes / 2**20:.1f} MiB held"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def __deepcopy__(self, memo: dict[int, Any]) -> Workspace:
        clone = Workspace()
        clone.train(self.training)
        memo[id(self)] = clone
        return clone
