"""Where a training step spends its time: torch.profiler over dense and SWAT steps, same run.

    python benchmarks/profile_step.py --sparsity 0.7 --granularity filter --period 20
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import swat_fx
from swat_fx import models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--granularity", default="nchw")
    parser.add_argument("--kernel", default="auto")
    parser.add_argument("--period", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=14)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = models.build(args.model, num_classes=10)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    swat = swat_fx.transform(net, args.sparsity, granularity=args.granularity, kernel=args.kernel,
                             period=args.period)
    for label, model in (("dense PyTorch", net), (f"swat_fx {swat_fx.config_of(swat)}", swat)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        print(f"\n{label}, {args.steps} steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
