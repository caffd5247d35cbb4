"""What two eager-lowering choices buy: SWAT steps with and without each, against dense, same run.

    python benchmarks/ablations.py            # every setup, a few minutes on 2 cores
    python benchmarks/ablations.py --quick    # tiny sizes (run by the tests)

- `workspace`: the kernels' scratch workspace, against the model's `swat_workspace` set to None
  (every rebuilt W_s / X_s is then a fresh tensor); unstructured SWAT, period 20. ResNet-50 at
  2×32×32 is the setup where the weights (23.5 M, rebuilt twice a step) dominate the rebuilds.
- `batch_norm`: BatchNorm on the kept channels after compact convs (`granularity="filter"`), against
  the same model whose BatchNorms carry a no-op forward pre-hook, with which `kernels.batch_norm`
  calls the module itself, on every channel.

Steps of dense PyTorch, SWAT with the choice and SWAT without it alternate one by one, so the drift
of a shared machine hits all three alike; each ratio is the median of the per-round ratios against
the dense step of the same round.
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
from swat_fx.backends.eager import kernels


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return functools.partial(train_step._step, model, optimizer, x, y)


def _without_workspace(model: nn.Module) -> nn.Module:
    model.swat_workspace = None  # the kernels then rebuild into fresh tensors
    return model


def _batch_norms_on_every_channel(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if type(module) in kernels.PLAIN_BATCH_NORMS:
            module.register_forward_pre_hook(lambda module, args: None)
    return model


ABLATIONS = {  # name: (transform options, what turns the choice off)
    "workspace": ({}, _without_workspace),
    "batch_norm": ({"granularity": "filter"}, _batch_norms_on_every_channel),
}


def compare(ablation: str, name: str, shape: tuple[int, ...], sparsity: float, period: int,
            rounds: int) -> list[str]:
    options, turn_off = ABLATIONS[ablation]
    torch.manual_seed(0)
    net = models.build(name, num_classes=10)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    with_choice = swat_fx.transform(net, sparsity, period=period, **options)
    without_choice = turn_off(swat_fx.transform(net, sparsity, period=period, **options))
    steps = {"dense PyTorch": _stepper(net, x, y), f"SWAT, {ablation}": _stepper(with_choice, x, y),
             f"SWAT, no {ablation}": _stepper(without_choice, x, y)}
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
    if ablation == "workspace":
        lines.append(f"| | | | scratch held | {with_choice.swat_workspace.nbytes / 2**20:.1f} MiB | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(ABLATIONS), default=None, help="one ablation")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setups = [("workspace", "resnet50", (2, 3, 32, 32), 0.8, 20, 4 if args.quick else 30),
              ("batch_norm", "resnet18_cifar", (8, 3, 32, 32) if args.quick else (64, 3, 32, 32), 0.9, 20,
               4 if args.quick else 24)]
    if not args.quick:
        setups += [("workspace", "resnet18_cifar", (64, 3, 32, 32), 0.7, 20, 10),
                   ("workspace", "resnet50", (4, 3, 224, 224), 0.8, 20, 10),
                   ("batch_norm", "resnet18_cifar", (64, 3, 32, 32), 0.7, 20, 10)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model, input | sparsity | period | variant | median step ms | vs dense (median of paired ratios) |")
    print("|---|---|---|---|---|---|")
    for ablation, *setup in setups:
        if args.only in (None, ablation):
            print("\n".join(compare(ablation, *setup)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
