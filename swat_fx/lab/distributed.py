"""The lab under `torchrun`: one process group, each rank a slice of every batch, outputs from rank 0.

    torchrun --nproc_per_node 2 -m swat_fx.lab.cli train

`torchrun` sets `WORLD_SIZE`, `RANK` and the rendezvous address; `start()` joins the group (gloo: the
lab trains on the CPU), and the training loop wraps the model in DDP. Every rank shuffles
with the same seed, so a global batch is the same everywhere and each rank takes its equal slice of it.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the number of processes (1, 0 without a process group)."""

    rank: int = 0
    world: int = 1
    joined_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def start() -> Ranks:
    """Join the process group `torchrun` describes, if it describes one with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        return Ranks(dist.get_rank(), dist.get_world_size(), joined_here=True)
    return ranks()


def stop(where: Ranks) -> None:
    """Leave the process group `start` joined (one the caller made is left to the caller)."""
    if where.joined_here and dist.is_initialized():
        gc.collect()  # DDP state and its gloo work objects go while the interpreter is fully alive
        dist.barrier()  # no rank tears gloo down while another still talks to it (it aborts at exit otherwise)
        dist.destroy_process_group()


def ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def parallel(model: nn.Module, where: Ranks) -> nn.Module:
    """The module the training step calls: DDP over the group, or the model itself in one process."""
    return nn.parallel.DistributedDataParallel(model) if where.world > 1 else model


def summed(values: list[float], where: Ranks) -> list[float]:
    """Per-rank totals (loss sums, counts) summed over the group."""
    if where.world == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()
