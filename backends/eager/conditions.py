"""The conditions the eager lowering's passes require and ensure."""

from __future__ import annotations

import operator

import torch.fx as fx

from swat_fx import ops
from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.formats import Kernel
from swat_fx.contract import SWAT_GRAPH_META
from swat_fx.passes import Condition


def _kernels_chosen(gm: fx.GraphModule) -> str | None:
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in ops.SWAT_OPS:
            return f"node {node.name!r} still calls the neutral {node.target.__name__}"
        if node.target in (kernels.conv, kernels.linear):
            kernel = node.kwargs.get("kernel")
            if not isinstance(kernel, Kernel) or kernel is Kernel.AUTO:
                return f"node {node.name!r} has kernel {kernel!r}, not a concrete Kernel"
    return None


def _resolves(gm: fx.GraphModule, target: str) -> bool:
    try:
        operator.attrgetter(target)(gm)
    except AttributeError:
        return False
    return True


def _neutral_graph_resolves(gm: fx.GraphModule) -> str | None:
    graph = gm.meta.get(SWAT_GRAPH_META)
    if graph is None:
        return "the module holds no neutral SWAT graph"
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and not _resolves(gm, node.target):
            return f"the neutral graph's {node.op} target {node.target!r} is not in the lowered module"
    return None


KERNELS_CHOSEN = Condition("a concrete eager kernel on every SWAT op", _kernels_chosen)
NEUTRAL_GRAPH_RESOLVES = Condition("every target of the neutral SWAT graph in the lowered module",
                                   _neutral_graph_resolves)
