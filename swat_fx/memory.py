"""What a training step holds in memory for its backward pass, measured rather than estimated."""

from __future__ import annotations

import torch
import torch.nn as nn


def saved_tensor_bytes(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of the unique storages autograd holds at the end of `model(*inputs)`, parameters excluded.

    Every tensor an autograd node saves passes `saved_tensors_hooks`; storages shared by several
    nodes (an activation saved by a ReLU and the next conv) count once, and masks, indices and sparse
    values count like any tensor. Parameters are resident anyway and are left out. The forward runs
    in the model's current mode (a SWAT model in training mode advances its Top-K step counters).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return sum(storages.values())
