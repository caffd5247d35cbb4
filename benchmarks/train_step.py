"""Train-step time and memory held for the backward pass: swat_fx against dense PyTorch, same run.

    python benchmarks/train_step.py            # the full table (about 20 minutes on 2 cores)
    python benchmarks/train_step.py --quick    # every row, tiny sizes (about 2 minutes; torch.compile
                                               # rows for ResNet-18 only)

Step time: SGD steps on random data (forward, backward, update) after warm-up. With a Top-K period P
the exact threshold is computed at one step in P, so a SWAT step is the amortised
`(t_refresh + (P - 1) · t_reuse) / P`, from each round's step between refreshes and the refresh steps
(timed in every other round, each against its round's dense step, the median taken). A torch.compile
row's refresh steps run the graph compiled for the first step (no stored threshold yet).
Memory: the unique storages autograd holds at the end of the forward (`saved_tensors_hooks`), masks,
indices and sparse values included, parameters excluded (they are resident in any case).
Scratch: the eager kernels' workspace, one buffer a slot that every layer rebuilds its W_s / X_s into
(resident between steps, not held for the backward).
Ratios are against dense PyTorch measured in the same run: time < 1 is faster, memory < 1 is smaller.
The time ratio of each row is the median of per-round ratios: each round times one dense step and
then one SWAT step (and, for P > 1, every other round a refresh step), so the drift of a shared
machine, which moves step times by tens of percent within minutes, hits both sides of each ratio
alike. `step ms` and `dense ms` are the medians of the row's own rounds. The dense row pairs a copy
of the dense model with itself: how far its ratio is from 1 is the noise the pairing leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

import swat_fx
from swat_fx import masks, models
from swat_fx.memory import saved_tensor_bytes
from swat_fx.syncs import HostSyncCounter


@dataclass
class Row:
    model: str
    variant: str
    sparsity: float | None
    step_ms: float
    dense_ms: float
    """The median dense step of this row's rounds (see `time_ratio`)."""
    time_ratio: float
    saved_mb: float
    memory_ratio: float
    syncs: str = "0 / 0"
    """Host synchronisations in one step: at a refresh / between refreshes."""
    scratch_mb: float = 0.0
    """The eager kernels' workspace after the steps (resident scratch for rebuilt W_s / X_s, not held
    for the backward)."""


VARIANTS = {  # name: (transform options, period, naive top-k)
    "naive torch.topk, period 1": ({"kernel": "masked"}, 1, True),
    "unstructured, period 1": ({"kernel": "masked"}, 1, False),
    "unstructured, period 1, compressed": ({"kernel": "compressed"}, 1, False),
    "unstructured, period 20": ({"kernel": "masked"}, 20, False),
    "unstructured, period 20, compressed": ({"kernel": "compressed"}, 20, False),
    "filter (compact kernels), period 20": ({"granularity": "filter"}, 20, False),
}
ROUNDS = 7
"""Timed rounds a row in the full run."""
BATCHES = 4
"""Random batches a model's steps cycle through: a round's dense and SWAT steps take the same one, and
the thresholds SWAT selects see new data each step, as in training."""
Batches = list[tuple[torch.Tensor, torch.Tensor]]

COMPILED = {  # name: period; torch.compile(fullgraph=True) of the default SWAT, at one sparsity a model
    "unstructured, period 1, torch.compile": 1,
    "unstructured, period 20, torch.compile": 20,
}


def _naive_kth_largest(groups: torch.Tensor, k: int, needed: torch.Tensor | None = None,
                       bracket: object = None) -> torch.Tensor:
    """What a straightforward implementation does: a full per-step torch.topk of the magnitudes."""
    return groups.detach().abs().topk(k, dim=1).values[:, -1]


@contextlib.contextmanager
def _topk_implementation(naive: bool) -> Iterator[None]:
    if not naive:
        yield
        return
    with mock.patch.object(masks, "kth_largest_magnitude", _naive_kth_largest):
        yield


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


@dataclass
class Timing:
    step_s: float
    """The median amortised SWAT step."""
    dense_s: float
    """The median dense step of the same rounds."""
    ratio: float
    """The median of the per-round ratios SWAT / dense."""


def paired_step_times(model: nn.Module, dense: nn.Module, batches: Batches, period: int,
                      rounds: int, warmup: int, sites: nn.Module | None = None) -> Timing:
    """SWAT steps (amortised over `period`, see the module docstring) against dense steps, one of each
    a round, both on the round's batch; `sites`: the module holding the Top-K sites, when `model`
    wraps it (torch.compile)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dense_optimizer = torch.optim.SGD(dense.parameters(), lr=1e-3, momentum=0.9)
    for step in range(warmup):
        _step(dense, dense_optimizer, *batches[step % len(batches)])
        _step(model, optimizer, *batches[step % len(batches)])
    site_list = [site for _, site in swat_fx.contract.site_modules(model if sites is None else sites)]
    dense_times, swat_times, refresh_times, refresh_ratios = [], [], [], []
    for round_index in range(rounds):
        x, y = batches[(warmup + round_index) % len(batches)]
        dense_times.append(_step(dense, dense_optimizer, x, y))
        swat_times.append(_step(model, optimizer, x, y))  # at P = 1 every step refreshes
        if period > 1 and round_index % 2 == 0:
            for site in site_list:  # make the next step a refresh step
                site.reset()
            refresh_times.append(_step(model, optimizer, x, y))
            refresh_ratios.append(refresh_times[-1] / dense_times[-1])
    ratios = [t / d for t, d in zip(swat_times, dense_times, strict=True)]
    step = statistics.median(swat_times)
    if period > 1:
        ratios = [(statistics.median(refresh_ratios) + (period - 1) * r) / period for r in ratios]
        step = (statistics.median(refresh_times) + (period - 1) * step) / period
    return Timing(step, statistics.median(dense_times), statistics.median(ratios))


def host_syncs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, period: int) -> str:
    """Host synchronisations of a refresh step and of the step after it ("refresh / between")."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _, site in swat_fx.contract.site_modules(model):
        site.reset()
    counts = []
    for _ in range(2 if period > 1 else 1):
        with HostSyncCounter() as counter:
            _step(model, optimizer, x, y)
        counts.append(counter.count)
    return " / ".join(map(str, counts if period > 1 else counts * 2))


def scratch_bytes(model: nn.Module) -> int:
    """What the eager kernels' workspace holds (0 for a model without one)."""
    workspace = getattr(model, "swat_workspace", None)
    return 0 if workspace is None else workspace.nbytes


def _compiled_rows(name: str, net: nn.Module, sparsity: float, batches: Batches, dense_bytes: int,
                   steps: int) -> list[Row]:
    """The default SWAT under `torch.compile(fullgraph=True)`: compiled during the warm-up steps (host
    syncs are not counted: a dispatch mode cannot run inside a compiled graph)."""
    rows = []
    for variant, period in COMPILED.items():
        torch._dynamo.reset()
        model = swat_fx.transform(net, sparsity, period=period)
        compiled = torch.compile(model, fullgraph=True)
        timing = paired_step_times(compiled, net, batches, period, steps, warmup=2, sites=model)  # compiles
        held = saved_tensor_bytes(compiled, batches[0][0])
        rows.append(Row(name, variant, sparsity, timing.step_s * 1e3, timing.dense_s * 1e3, timing.ratio,
                        held / 2**20, held / dense_bytes, "- / -"))
        del model, compiled
        gc.collect()
        print(_format([rows[-1]], header=False), flush=True)
    return rows


def run(quick: bool) -> list[Row]:
    torch.manual_seed(0)
    setups = {  # model: (input shape, sparsities, timed rounds, warm-up steps)
        "resnet18_cifar": ((16 if quick else 64, 3, 32, 32), (0.7,) if quick else (0.5, 0.7, 0.9),
                           2 if quick else ROUNDS, 1 if quick else 2),
        "resnet50": ((2, 3, 64, 64) if quick else (4, 3, 224, 224), (0.8,) if quick else (0.5, 0.7, 0.8, 0.9),
                     2 if quick else ROUNDS, 1),
    }
    rows: list[Row] = []
    for name, (shape, sparsities, steps, warmup) in setups.items():
        net = models.build(name, num_classes=10)
        batches = [(torch.randn(shape), torch.randint(0, 10, (shape[0],))) for _ in range(BATCHES)]
        x, y = batches[0]
        headline = sparsities[-2] if len(sparsities) > 1 else sparsities[0]  # 0.7 and 0.8 in the full run
        # a copy of the dense model against itself: the ratio shows how far the pairing leaves noise
        timing = paired_step_times(copy.deepcopy(net), net, batches, 1, steps, warmup)
        dense_bytes = saved_tensor_bytes(net, x)
        rows.append(Row(name, "dense PyTorch", None, timing.step_s * 1e3, timing.dense_s * 1e3, timing.ratio,
                        dense_bytes / 2**20, 1.0))
        print(_format([rows[-1]], header=len(rows) == 1), flush=True)
        for sparsity in sparsities:
            for variant, (options, period, naive) in VARIANTS.items():
                if naive and sparsity != headline:  # its many slow steps show one thing: once is enough
                    continue
                model = swat_fx.transform(net, sparsity, period=period, **options)
                with _topk_implementation(naive):
                    timing = paired_step_times(model, net, batches, period, steps, warmup)
                    syncs = host_syncs(model, x, y, period)
                    held = saved_tensor_bytes(model, x)
                rows.append(Row(name, variant, sparsity, timing.step_s * 1e3, timing.dense_s * 1e3, timing.ratio,
                                held / 2**20, held / dense_bytes, syncs, scratch_bytes(model) / 2**20))
                del model
                gc.collect()  # a GraphModule and its graph reference each other: free it before the next
                print(_format([rows[-1]], header=False), flush=True)
        if not quick or name == "resnet18_cifar":  # compiling ResNet-50 takes minutes: full run only
            rows += _compiled_rows(name, net, headline, batches, dense_bytes, steps)
    return rows


def _format(rows: list[Row], header: bool = True) -> str:
    lines = []
    if header:
        lines += ["| model | variant | sparsity | step ms | dense ms | time vs dense | saved MiB | memory vs dense | "
                  "scratch MiB | host syncs (refresh / between) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sparsity = "-" if r.sparsity is None else f"{r.sparsity:.1f}"
        lines.append(f"| {r.model} | {r.variant} | {sparsity} | {r.step_ms:.0f} | {r.dense_ms:.0f} | "
                     f"{r.time_ratio:.2f}× | {r.saved_mb:.1f} | {r.memory_ratio:.2f}× | {r.scratch_mb:.1f} | "
                     f"{r.syncs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every row (compiled: ResNet-18 only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'quick' if args.quick else 'full'} run\n")
    rows = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
