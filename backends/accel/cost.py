"""The cost model: cycles of one training step on a sparse accelerator, SWAT against dense.

Each IR node takes max(compute, memory) cycles: compute is its FLOPs (products reduced by the zeros
the datapath skips) over 2 · MACs per cycle; memory is the bytes it reads and writes (sparse tensors
in the accelerator's format, with its overhead) over DRAM bytes per cycle. The dense baseline is the
same IR without the `sparsify` nodes, every tensor dense: exactly the IR of `algorithm="dense"`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from swat_fx.backends.accel.classify import GEMM_KINDS, NORMS
from swat_fx.backends.accel.flops import MAC_FLOPS
from swat_fx.backends.accel.formats import FORMATS
from swat_fx.backends.accel.report import format_report

SKIP_MODES: tuple[str, ...] = ("none", "one", "both")
BACKWARD_PHASES = frozenset({"bwd_input", "bwd_weight"})


@dataclass(frozen=True)
class Accelerator:
    """A sparse training accelerator.

    `skip`: which zeros of a product the datapath skips: `none` (dense datapath), `one` (the sparser
    operand's) or `both` (only pairs of non-zeros are multiplied); `skip_efficiency` is the fraction
    of that ideal saving it realises. `format`: how sparse tensors are kept in DRAM; `format_overhead`:
    extra memory time per byte of a compressed tensor (decoding, index traffic), as a fraction.
    `fuse_topk`: a Top-K reads its dense input on chip as the producer writes it (the update for W,
    the op before for X), so its reads cost no DRAM traffic; otherwise it reads the input back.
    """

    name: str = "custom"
    macs_per_cycle: float = 1024.0
    dram_bytes_per_cycle: float = 64.0
    clock_ghz: float = 1.0
    skip: str = "one"
    skip_efficiency: float = 1.0
    format: str = "bitmap"
    format_overhead: float = 0.0
    fuse_topk: bool = False

    def __post_init__(self) -> None:
        for rate in ("macs_per_cycle", "dram_bytes_per_cycle", "clock_ghz"):
            value = getattr(self, rate)
            if not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
                raise ValueError(f"Accelerator.{rate} must be a positive number, got {value!r}")
        if self.skip not in SKIP_MODES:
            raise ValueError(f"Accelerator.skip must be one of {', '.join(SKIP_MODES)}, got {self.skip!r}")
        if self.format not in FORMATS:
            raise ValueError(f"Accelerator.format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0.0 <= self.skip_efficiency <= 1.0:
            raise ValueError(f"Accelerator.skip_efficiency must lie in [0, 1], got {self.skip_efficiency!r}")
        if not self.format_overhead >= 0.0:
            raise ValueError(f"Accelerator.format_overhead must be >= 0, got {self.format_overhead!r}")

    def product_fraction(self, density_a: float, density_b: float) -> float:
        """The fraction of a product's dense MACs this datapath spends."""
        kept = {"none": 1.0, "one": min(density_a, density_b), "both": density_a * density_b}[self.skip]
        return 1.0 - self.skip_efficiency * (1.0 - kept)

    def replace(self, **changes: Any) -> Accelerator:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Accelerator] = {
    "ideal": Accelerator("ideal", dram_bytes_per_cycle=math.inf, skip="both"),
    "balanced": Accelerator("balanced", macs_per_cycle=1024, dram_bytes_per_cycle=128, skip="one",
                            skip_efficiency=0.9, format_overhead=0.05, fuse_topk=True),
    "bandwidth_limited": Accelerator("bandwidth_limited", macs_per_cycle=4096, dram_bytes_per_cycle=16,
                                     skip="one", skip_efficiency=0.9, format_overhead=0.05, fuse_topk=True),
}
"""`ideal`: memory is free and both operands' zeros are skipped, so time is proportional to effective
FLOPs. `balanced`: a 32×32 MAC array with 128 GB/s at 1 GHz. `bandwidth_limited`: a 64×64 array fed
by 16 GB/s (one LPDDR4 channel), where most nodes wait on DRAM."""


def resolve_accelerator(spec: str | Accelerator) -> Accelerator:
    """An `Accelerator`, or the preset of that name."""
    if isinstance(spec, Accelerator):
        return spec
    if spec not in PRESETS:
        raise ValueError(f"unknown accelerator preset {spec!r}; presets are: {', '.join(PRESETS)}")
    return PRESETS[spec]


@dataclass(frozen=True)
class Comparison:
    """One quantity for the dense baseline and for SWAT on the same accelerator."""

    dense: float
    swat: float

    @property
    def reduction(self) -> float:
        """1 − swat/dense: the fraction SWAT removes (0 when both are 0)."""
        return 1.0 - self.swat / self.dense if self.dense else 0.0

    @property
    def factor(self) -> float:
        """dense/swat: how many times smaller SWAT's is."""
        return self.dense / self.swat if self.swat else math.inf

    def as_dict(self) -> dict[str, float]:
        return {"dense": self.dense, "swat": self.swat, "reduction": self.reduction, "factor": self.factor}


@dataclass(frozen=True)
class CostReport:
    """Dense vs SWAT for one training step: FLOPs (total, per phase, per layer), DRAM traffic,
    parameter bytes the backward pass reads, activation bytes kept for the backward per sample, and
    cycles. `setup` holds the IR's algorithm, sparsity, densities...; `speedup` = dense / SWAT cycles."""

    accelerator: Accelerator
    setup: Mapping[str, Any]
    flops: Comparison
    flops_by_phase: dict[str, Comparison]
    flops_by_layer: dict[str, Comparison]
    dram_bytes: Comparison
    param_bytes_bwd: Comparison
    activation_bytes_per_sample: Comparison
    cycles: Comparison

    @property
    def speedup(self) -> float:
        return self.cycles.factor

    @property
    def seconds(self) -> Comparison:
        hz = self.accelerator.clock_ghz * 1e9
        return Comparison(self.cycles.dense / hz, self.cycles.swat / hz)

    def as_dict(self) -> dict[str, Any]:
        pairs = ("flops", "dram_bytes", "param_bytes_bwd", "activation_bytes_per_sample", "cycles", "seconds")
        return {
            "accelerator": dataclasses.asdict(self.accelerator),
            "setup": dict(self.setup),
            **{name: getattr(self, name).as_dict() for name in pairs},
            "speedup": self.speedup,
            "flops_by_phase": {k: v.as_dict() for k, v in self.flops_by_phase.items()},
            "flops_by_layer": {k: v.as_dict() for k, v in self.flops_by_layer.items()},
        }

    def __str__(self) -> str:
        return format_report(self)


def _dram_refs(attrs: Mapping[str, Any], acc: Accelerator) -> list[Mapping[str, Any]]:
    """The tensors a node moves through DRAM in the SWAT run."""
    if acc.fuse_topk and attrs["op"] == "topk":
        return list(attrs["writes"])
    return [*attrs["reads"], *attrs["writes"]]


def _traffic(attrs: Mapping[str, Any], acc: Accelerator, sparse: bool) -> float:
    if not sparse:
        return attrs["bytes_read_dense"] + attrs["bytes_written_dense"]
    return sum(ref[f"bytes_{acc.format}"] for ref in _dram_refs(attrs, acc))


def _node_cycles(attrs: Mapping[str, Any], acc: Accelerator, sparse: bool) -> float:
    """max(compute, memory) cycles of one node, as SWAT runs it or (sparse=False) as dense training does;
    compressed tensors take `format_overhead` more memory time per byte."""
    work = attrs["flops_dense"]
    memory = _traffic(attrs, acc, sparse)
    if sparse:
        fraction = acc.product_fraction(attrs["density_a"], attrs["density_b"])
        work -= MAC_FLOPS * attrs["macs"] * (1.0 - fraction)
        if acc.format != "dense":
            memory += acc.format_overhead * sum(ref[f"bytes_{acc.format}"] for ref in _dram_refs(attrs, acc)
                                                if ref["density"] < 1.0)
    return max(work / (MAC_FLOPS * acc.macs_per_cycle), memory / acc.dram_bytes_per_cycle)


def _saved_activations(nodes: list[Mapping[str, Any]], fmt: str, sparse: bool) -> float:
    """Bytes of the forward activations that conv/linear and normalisation backward nodes read: each
    tensor once (a dense run keeps the dense tensor a sparse one was cut from)."""
    kept: dict[str, float] = {}
    for attrs in nodes:
        if attrs["phase"] in BACKWARD_PHASES and (attrs["op"] in GEMM_KINDS or attrs["op"] in NORMS):
            for ref in attrs["reads"]:
                if ref["saved"] and ref["kind"] == "activation":
                    key = ref["name"] if sparse else ref["origin"]
                    kept[key] = ref[f"bytes_{fmt if sparse else 'dense'}"]
    return sum(kept.values())


def _param_reads_bwd(nodes: list[Mapping[str, Any]], fmt: str, sparse: bool) -> float:
    return sum(ref[f"bytes_{fmt if sparse else 'dense'}"] for attrs in nodes if attrs["phase"] in BACKWARD_PHASES
               for ref in attrs["reads"] if ref["kind"] == "param")


def estimate(ir: nx.DiGraph, acc: Accelerator) -> CostReport:
    """The CostReport of an IR built by `to_accel_ir`."""
    nodes = [attrs for _, attrs in ir.nodes(data=True)]
    dense_nodes = [attrs for attrs in nodes if attrs["phase"] != "sparsify"]
    by_phase: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_layer: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for attrs in nodes:
        dense = 0.0 if attrs["phase"] == "sparsify" else attrs["flops_dense"]
        for table, key in ((by_phase, attrs["phase"]), (by_layer, attrs["layer"])):
            table[key][0] += dense
            table[key][1] += attrs["flops_effective"]
    batch = max(1, int(ir.graph.get("batch_size", 1)))
    return CostReport(
        accelerator=acc,
        setup=dict(ir.graph),
        flops=Comparison(sum(a["flops_dense"] for a in dense_nodes), sum(a["flops_effective"] for a in nodes)),
        flops_by_phase={k: Comparison(*v) for k, v in by_phase.items()},
        flops_by_layer={k: Comparison(*v) for k, v in sorted(by_layer.items(), key=lambda kv: -kv[1][0])},
        dram_bytes=Comparison(sum(_traffic(a, acc, False) for a in dense_nodes),
                              sum(_traffic(a, acc, True) for a in nodes)),
        param_bytes_bwd=Comparison(_param_reads_bwd(nodes, acc.format, False),
                                   _param_reads_bwd(nodes, acc.format, True)),
        activation_bytes_per_sample=Comparison(_saved_activations(nodes, acc.format, False) / batch,
                                               _saved_activations(nodes, acc.format, True) / batch),
        cycles=Comparison(sum(_node_cycles(a, acc, False) for a in dense_nodes),
                          sum(_node_cycles(a, acc, True) for a in nodes)),
    )
