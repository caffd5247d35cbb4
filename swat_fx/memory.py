"""What a training step holds in memory for its backward pass, measured rather than estimated."""

from __future__ import annotations

import torch
import torch.nn as nn


def saved_tensor_bytes(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of the unique storages autograd holds at the end of `model(*inputs)`, parameters excluded.

    Every tensor an autograd node saves passes `saved_tensors_hooks`; storages shared by several
    nodes (an activation saved by a ReLU and the next conv) count once, and masks, indices and sparse
    values count like any tensor. Parameters are resident anyway and are left out. The forward runs
    in the model's current mode (a SWAT model in training mode advances its Top-K step counters); the
    graph it builds cannot be back-propagated.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    held: list[torch.Tensor] = []  # alive until the count is done, so no address is reused meanwhile

    def pack(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        held.append(t)

    # The graph keeps the hooks, so anything they keep (a returned `t`, `held`) would close a reference
    # cycle through C++ objects that Python's garbage collector cannot free: return None, clear `held`.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        model(*inputs)
    held.clear()
    return sum(storages.values())
