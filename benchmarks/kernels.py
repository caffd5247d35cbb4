"""The CPU kernels one at a time, against the torch ops they replace, on one activation-sized tensor.

    python benchmarks/kernels.py                 # a 64x64x32x32 float32 tensor (ResNet-18-CIFAR's largest)
    python benchmarks/kernels.py --shape 4 256 56 56

Each row is the median of `--repeats` calls on the same data, in milliseconds, measured in this run; the
ratio is torch's time over the kernel's. `normal` data are N(0, 1); `relu` data are their positive part
(half the entries are zeros, as a ReLU's output), at the density that gives a threshold above zero
(0.3) and at one that gives a threshold of zero (0.7); "last threshold 0.2 % away" rows select with the
bracket of the previous step's threshold (one pass). The BatchNorm row runs on a tensor whose other
channels are zeros, as a compact conv leaves them.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from swat_fx import selection
from swat_fx.backends.eager.kernels import batch_norm
from swat_fx.backends.eager.kernels import relu as bitmask_relu
from swat_fx.backends.eager.operands import CompressedTensor, KeptFilters
from swat_fx.masks import keep_count


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _torch_kth(groups: torch.Tensor, k: int) -> torch.Tensor:
    magnitudes = torch.nan_to_num(groups.abs(), nan=math.inf, posinf=math.inf)
    return magnitudes.kthvalue(groups.shape[1] - k + 1, dim=1).values


def _bracketed_row(t: torch.Tensor, name: str, density: float, repeats: int) -> tuple[str, float, float]:
    """The select given the last step's threshold (a `selection.Bracket` primed on `t`) on data 0.2 %
    larger, as a training step moves it: one pass; each call starts from a copy of the primed bracket."""
    groups, k = t.view(1, -1), keep_count(density, t.numel())
    primed = selection.Bracket()
    selection.kth_largest_magnitude(groups, k, primed)
    moved = groups * 1.002
    assert torch.equal(selection.kth_largest_magnitude(moved, k, copy.deepcopy(primed)), _torch_kth(moved, k))
    return (f"exact k-th largest |v|, {name}, density {density}, last threshold 0.2 % away",
            _median_ms(lambda: selection.kth_largest_magnitude(moved, k, copy.deepcopy(primed)), repeats),
            _median_ms(lambda: _torch_kth(moved, k), repeats))


def rows(shape: tuple[int, ...], repeats: int) -> list[tuple[str, float, float]]:
    """(what, kernel ms, torch ms) for each kernel."""
    torch.manual_seed(0)
    normal = torch.randn(shape)
    data = {"normal": normal, "relu": normal.relu()}
    out = []
    for name, density in (("normal", 0.3), ("relu", 0.3), ("relu", 0.7)):
        t = data[name]
        groups, k = t.view(1, -1), keep_count(density, t.numel())
        assert torch.equal(selection.kth_largest_magnitude(groups, k), _torch_kth(groups, k))
        out.append((f"exact k-th largest |v|, {name}, density {density}",
                    _median_ms(lambda g=groups, k=k: selection.kth_largest_magnitude(g, k), repeats),
                    _median_ms(lambda g=groups, k=k: _torch_kth(g, k), repeats)))
    for name in ("normal", "relu"):
        out.append(_bracketed_row(data[name], name, 0.3, repeats))
    t = data["relu"]
    tau = selection.kth_largest_magnitude(t.view(1, -1), keep_count(0.3, t.numel())).reshape(1)
    out.append(("threshold and count, relu, density 0.3",
                _median_ms(lambda: selection.threshold_and_count(t, tau), repeats),
                _median_ms(lambda: (t * (t.abs() >= tau), torch.count_nonzero(~(t.abs() < tau))), repeats)))
    keep = ~(t.abs() < tau)
    compressed = CompressedTensor.compress(t, keep)
    out.append(("compress (kept values + bit mask)",
                _median_ms(lambda: CompressedTensor.compress(t, keep), repeats),
                _median_ms(lambda: (t.masked_select(keep), np.packbits(keep.numpy(), bitorder="little")), repeats)))
    out.append(("decompress",
                _median_ms(compressed.to_dense, repeats),
                _median_ms(lambda: torch.zeros_like(t).masked_scatter_(keep, compressed.values), repeats)))
    x, grad = normal.clone().requires_grad_(), torch.randn(shape)
    plain = normal.clone().requires_grad_()
    out.append(("ReLU forward + backward, 1 bit an entry held",
                _median_ms(lambda: bitmask_relu(x).backward(grad), repeats),
                _median_ms(lambda: torch.relu(plain).backward(grad), repeats)))
    out.append(_batch_norm_row(shape, repeats))
    return out


def _batch_norm_row(shape: tuple[int, ...], repeats: int) -> tuple[str, float, float]:
    """BatchNorm forward (training mode) of a compact conv's output keeping one channel in ten."""
    channels = shape[1]
    kept = torch.arange(0, channels, 10)
    y = torch.zeros(shape)
    y[:, kept] = torch.randn(shape[0], len(kept), *shape[2:])
    bn, plain = torch.nn.BatchNorm2d(channels), torch.nn.BatchNorm2d(channels)
    operand = KeptFilters(torch.zeros(channels, 1, 1, 1), kept)
    assert torch.equal(batch_norm(y, bn, operand), plain(y))
    return ("BatchNorm forward, 1 channel in 10 kept",
            _median_ms(lambda: batch_norm(y, bn, operand), repeats), _median_ms(lambda: plain(y), repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 64, 32, 32])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not selection.available(torch.zeros(1)):
        print("numba is not installed: the kernels are not available", file=sys.stderr)
        return 1
    shape = tuple(args.shape)
    print(f"tensor {'x'.join(map(str, shape))} float32, {args.threads} torch threads, median of {args.repeats}")
    print(f"{'kernel':70s} {'swat_fx ms':>10s} {'torch ms':>9s} {'torch/swat_fx':>13s}")
    for what, ours, theirs in rows(shape, args.repeats):
        print(f"{what:70s} {ours:10.2f} {theirs:9.2f} {theirs / ours:12.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
