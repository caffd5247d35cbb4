"""Counting host synchronisations: the points where a step waits for the device to hand a value back.

On a GPU each one stalls the stream until the queued kernels finish; under `torch.compile` each is a
graph break. The count is taken below autograd, so the backward's ops are seen too.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SYNCING_OPS = {
    aten._local_scalar_dense.default: "scalar read (.item(), float(), int(), bool())",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "torch.equal",
    aten.is_nonzero.default: "bool() of a one-element tensor",
}


def _is_boolean_indexing(func: object, args: tuple) -> bool:
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class HostSyncCounter(TorchDispatchMode):
    """Counts the ops that read device values on the host while it is active: scalar reads, `nonzero`,
    `masked_select`, `torch.equal` and boolean indexing. `count` is the total, `by_op` says which."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: collections.Counter[str] = collections.Counter()

    @property
    def count(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING_OPS:
            self.by_op[_SYNCING_OPS[func]] += 1
        elif _is_boolean_indexing(func, args):
            self.by_op["boolean indexing"] += 1
        return func(*args, **(kwargs or {}))
