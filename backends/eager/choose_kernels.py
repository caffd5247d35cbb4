"""Eager lowering pass: the kernel of each SWAT op, and the format its Top-K sites hand over.

Every `swat_fx.ops` call becomes a call of the eager kernel with its `Kernel` (see `formats.Kernel`),
and the `TopK` nodes feeding its backward operands get the matching `Format`. The user's choice
applies model-wide (`AUTO` picks `COMPACT` for filter granularity, else `MASKED`); where it cannot
(`COMPACT` needs groups=1, ops sharing an X_s need one format), the op gets `MASKED`: one warning lists
every such op, and the reason is kept in `node.meta[LOWERING_META]` (`swat_fx.layers` reports it).
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import torch.fx as fx

from swat_fx import ops
from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.conditions import KERNELS_CHOSEN
from swat_fx.backends.eager.formats import Kernel
from swat_fx.contract import LOWERING_META, Lowering, WeightProduct, record_of
from swat_fx.passes import SwatPass
from swat_fx.passes.conditions import BACKEND_NEUTRAL, SITES_INSERTED

_EAGER_OPS = {ops.conv: kernels.conv, ops.linear: kernels.linear}


def choose_kernel(node: fx.Node, op: WeightProduct, requested: Kernel) -> Lowering:
    """The kernel for one op, and why it differs from `requested` where it does."""
    if all(node.kwargs.get(key) is None for key in ops.SPARSE_OPERANDS):
        return Lowering(Kernel.DENSE)
    kernel = requested
    if kernel is Kernel.AUTO:
        kernel = Kernel.COMPACT if op.granularity == "filter" else Kernel.MASKED
    if kernel is Kernel.COMPACT and op.layer == "linear" and len(op.weight_shape) > 2:
        return Lowering(Kernel.MASKED, f"compact kernels need a 2-D weight, this one is {list(op.weight_shape)}")
    if kernel is Kernel.COMPACT and node.kwargs.get("groups", 1) != 1:
        groups = node.kwargs["groups"]
        return Lowering(Kernel.MASKED, f"compact kernels need groups=1, this conv has groups={groups}")
    return Lowering(kernel)


def _agree_on_shared_inputs(choices: dict[fx.Node, Lowering]) -> None:
    """Ops that read one X_s site take it in one format: where their kernels disagree, all run masked."""
    readers: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for node in choices:
        if node.kwargs.get("input_bwd") is not None:
            readers[node.kwargs["input_bwd"]].append(node)
    for nodes in readers.values():
        if len({choices[node].choice.formats[1] for node in nodes}) == 1:
            continue
        names = ", ".join(repr(record_of(node).name) for node in nodes)
        for node in nodes:
            if choices[node].choice is not Kernel.MASKED:
                choices[node] = Lowering(Kernel.MASKED, f"it shares its X_s with {names}, which need other kernels")


class ChooseKernels(SwatPass):
    """Lower every SWAT op to an eager kernel; `kernel` is the user's model-wide choice."""

    requires = (SITES_INSERTED, BACKEND_NEUTRAL)
    ensures = (KERNELS_CHOSEN,)

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _EAGER_OPS]
        choices = {node: choose_kernel(node, record_of(node), self.kernel) for node in nodes}
        _agree_on_shared_inputs(choices)
        asked = "kernel='compact'" + (" (chosen by kernel='auto')" if self.kernel is Kernel.AUTO else "")
        fallbacks = [f"layer {record_of(node).name!r} runs the masked kernel instead of {asked}: {lowering.reason}"
                     for node, lowering in choices.items() if lowering.reason is not None]
        if fallbacks:
            warnings.warn("swat_fx: " + "; ".join(fallbacks), stacklevel=6)
        for node, lowering in choices.items():
            kernel = lowering.choice
            node.target = _EAGER_OPS[node.target]
            node.update_kwarg("kernel", kernel)
            node.meta[LOWERING_META] = lowering
            weight_format, input_format = kernel.formats
            for key, format in (("weight_fwd", weight_format), ("weight_bwd", weight_format),
                                ("input_bwd", input_format)):
                site = node.kwargs.get(key)
                if site is not None and format is not None:
                    site.update_kwarg("format", format)
        return gm
