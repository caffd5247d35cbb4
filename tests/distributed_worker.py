"""One rank of the distributed tests (run by `torchrun`, see test_distributed.py; not a test module).

Trains a small BatchNorm-free SWAT model on a fixed sequence of global batches, each rank on its slice
of every batch, once per configuration given on the command line, and saves rank 0's final state dicts
(full tensors) to the output file.

    torchrun --nproc_per_node 2 tests/distributed_worker.py OUT.pt ddp:chw:3 fsdp:chw:1 ...
"""

from __future__ import annotations

import gc
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import swat_fx

STEPS = 6
GLOBAL_BATCH = 8


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


def batches(steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=generator),
             torch.randint(0, 10, (GLOBAL_BATCH,), generator=generator)) for _ in range(steps)]


def train(model: nn.Module, steps: list[tuple[torch.Tensor, torch.Tensor]], rank: int = 0, world: int = 1) -> None:
    """SGD on each rank's slice of every global batch (the mean loss of equal slices averages like DDP)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in steps:
        optimizer.zero_grad()
        F.cross_entropy(model(x.tensor_split(world)[rank]), y.tensor_split(world)[rank]).backward()
        optimizer.step()


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {key: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
            for key, value in state.items()}


def run(spec: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """`wrapper:granularity:period[:nosync][:half]`, wrapper `ddp` or `fsdp`; `half` stops after half
    the steps (a checkpoint to resume from)."""
    wrapper, granularity, period, *flags = spec.split(":")
    steps = batches()[:STEPS // 2] if "half" in flags else batches()
    model = swat_fx.transform(net(), 0.7, granularity=granularity, period=int(period),
                              sync_thresholds="nosync" not in flags)
    if wrapper == "ddp":
        trained = nn.parallel.DistributedDataParallel(model)
        train(trained, steps, rank, world)
        return {key.removeprefix("module."): value for key, value in full_state(trained).items()}
    from torch.distributed.fsdp import fully_shard

    fully_shard(model)
    train(model, steps, rank, world)
    return full_state(model)


def main(out: str, specs: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {spec: run(spec, rank, world) for spec in specs}
    if rank == 0:
        torch.save(results, out)
    del results
    gc.collect()  # DDP/FSDP state and its gloo work objects go while the interpreter is fully alive
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
