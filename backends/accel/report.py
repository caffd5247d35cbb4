"""Plain-text tables of a `CostReport`, and the Fig. 8 rows of a sparsity sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from swat_fx.backends.accel.ir import PHASES

if TYPE_CHECKING:
    from swat_fx.backends.accel.cost import Accelerator, Comparison, CostReport

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"))


def si(value: float, unit: str = "") -> str:
    """`value` with an SI prefix, three significant digits: 24.6 GFLOP, 1.05 MB, 2.81 ms."""
    if not math.isfinite(value):
        return "unlimited"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def describe_accelerator(acc: Accelerator) -> str:
    skip = {"none": "no zero skipping", "one": "skips the sparser operand's zeros",
            "both": "skips zeros of both operands"}[acc.skip]
    efficiency = f" at {acc.skip_efficiency:.0%}" if acc.skip != "none" and acc.skip_efficiency < 1 else ""
    overhead = f" (+{acc.format_overhead:.0%} time)" if acc.format_overhead else ""
    fused = ", Top-K fused with its producer" if acc.fuse_topk else ""
    dram = f"{si(acc.dram_bytes_per_cycle, 'B')}/cycle" if math.isfinite(acc.dram_bytes_per_cycle) else "unlimited"
    return (f"{acc.name}: {acc.macs_per_cycle:g} MACs/cycle, DRAM {dram}, "
            f"{acc.clock_ghz:g} GHz, {skip}{efficiency}, {acc.format} format{overhead}{fused}")


def _row(label: str, pair: Comparison, unit: str = "") -> str:
    reduction = f"{pair.reduction:8.1%}  ({pair.factor:.2f}x)" if pair.dense else f"{'-':>8}"
    return f"{label:<36} {si(pair.dense, unit):>12} {si(pair.swat, unit):>12} {reduction}"


def format_report(report: CostReport, top: int = 10) -> str:
    """The totals, per phase, and the `top` layers by dense training FLOPs."""
    setup = report.setup
    lines = [
        f"algorithm {setup.get('algorithm')} (sites {setup.get('sites') or 'none'}), sparsity "
        f"{setup.get('sparsity', 0):.0%}, granularity {setup.get('granularity')}, period {setup.get('period')}, "
        f"densities from {setup.get('densities')}, batch {setup.get('batch_size')}",
        f"accelerator {describe_accelerator(report.accelerator)}",
        "",
        f"{'one training step':<36} {'dense':>12} {'swat':>12} {'reduction':>8}",
        _row("training FLOPs", report.flops, "FLOP"),
    ]
    lines += [_row(f"  {phase}", report.flops_by_phase[phase], "FLOP") for phase in PHASES
              if phase in report.flops_by_phase]
    lines += [
        _row(f"DRAM traffic ({report.accelerator.format})", report.dram_bytes, "B"),
        _row("parameter bytes read by backward", report.param_bytes_bwd, "B"),
        _row("activations kept for backward/sample", report.activation_bytes_per_sample, "B"),
        _row("cycles", report.cycles),
        _row("time", report.seconds, "s"),
        f"{'speedup':<36} {'':>12} {report.speedup:>11.2f}x",
        "",
        f"top {top} layers by dense training FLOPs (forward + backward + Top-K + update):",
        f"{'layer':<36} {'dense':>12} {'swat':>12} {'reduction':>8}",
    ]
    lines += [_row(layer, pair, "FLOP") for layer, pair in list(report.flops_by_layer.items())[:top]]
    return "\n".join(lines)


def format_sweep(reports: Sequence[CostReport]) -> str:
    """One row per sparsity: the paper's Fig. 8 quantities, with FLOPs and speedup beside them."""
    header = (f"{'sparsity':>8} {'FLOPs reduction':>16} {'param access reduction (bwd)':>29} "
              f"{'activation compression':>23} {'speedup':>8}")
    rows = [header, "-" * len(header)]
    for report in reports:
        rows.append(
            f"{report.setup.get('sparsity', 0):>8.0%} {report.flops.factor:>15.2f}x "
            f"{report.param_bytes_bwd.factor:>28.2f}x {report.activation_bytes_per_sample.factor:>22.2f}x "
            f"{report.speedup:>7.2f}x"
        )
    return "\n".join(rows)
