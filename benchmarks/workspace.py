"""What the eager kernels' scratch workspace buys: SWAT steps with and without it, against dense, same run.

    python benchmarks/workspace.py            # three setups, about 2 minutes on 2 cores
    python benchmarks/workspace.py --quick    # tiny sizes (run by the tests)

Steps of dense PyTorch, SWAT with the workspace and SWAT without it (the model's `swat_workspace`
set to None: every rebuilt W_s / X_s is a fresh tensor) alternate one by one, so the drift of a
shared machine hits all three alike; each ratio is the median of the per-round ratios against the
dense step of the same round. ResNet-50 at 2×32×32 is the setup where the weights (23.5 M, rebuilt
twice a step) dominate the rebuilds.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn as nn
import train_step  # this folder's train-step benchmark: its timed SGD step

import swat_fx
from swat_fx import models


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return functools.partial(train_step._step, model, optimizer, x, y)


def compare(name: str, shape: tuple[int, ...], sparsity: float, period: int, rounds: int) -> list[str]:
    torch.manual_seed(0)
    net = models.build(name, num_classes=10)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    with_workspace = swat_fx.transform(net, sparsity, period=period)
    without_workspace = swat_fx.transform(net, sparsity, period=period)
    without_workspace.swat_workspace = None  # the kernels then rebuild into fresh tensors
    steps = {"dense PyTorch": _stepper(net, x, y), "SWAT, workspace": _stepper(with_workspace, x, y),
             "SWAT, no workspace": _stepper(without_workspace, x, y)}
    for step in steps.values():
        step(), step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            times[label].append(step())
    dense = times["dense PyTorch"]
    lines = []
    for label, seconds in times.items():
        ratio = statistics.median(t / d for t, d in zip(seconds, dense, strict=True))
        lines.append(f"| {name} {'x'.join(map(str, shape))} | {sparsity:.1f} | {period} | {label} | "
                     f"{statistics.median(seconds) * 1e3:.1f} | {ratio:.3f}× |")
    lines.append(f"| | | | scratch held | {with_workspace.swat_workspace.nbytes / 2**20:.1f} MiB | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setups = [("resnet50", (2, 3, 32, 32), 0.8, 20, 4 if args.quick else 30)]
    if not args.quick:
        setups += [("resnet18_cifar", (64, 3, 32, 32), 0.7, 20, 10), ("resnet50", (4, 3, 224, 224), 0.8, 20, 10)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model, input | sparsity | period | variant | median step ms | vs dense (median of paired ratios) |")
    print("|---|---|---|---|---|---|")
    for setup in setups:
        print("\n".join(compare(*setup)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
