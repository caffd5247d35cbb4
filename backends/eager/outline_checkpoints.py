"""Eager lowering pass: every `torch.utils.checkpoint` region of the user's model is a checkpoint call again.

The tracers ran checkpointed functions inline and marked their nodes (`swat_fx.checkpoint_regions`),
and the neutral passes put the Top-K sites of an op in its region. Here each region's nodes move into
a sub-graph module, called through non-reentrant `torch.utils.checkpoint.checkpoint`: the forward
keeps only the region's inputs, and the backward recomputes the rest, SWAT sites included (they reuse
the iteration's thresholds, see `swat_fx.schedule`). The sub-graph reads the modules it calls as
arguments, so it owns no parameter, buffer or state of its own: `state_dict()` is unchanged.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import torch.fx as fx
import torch.nn as nn
import torch.utils.checkpoint as torch_checkpoint

from swat_fx.backends.eager.conditions import KERNELS_CHOSEN
from swat_fx.checkpoint_regions import CheckpointRegion, region_of
from swat_fx.contract import REGIONS_ROOT
from swat_fx.passes import Condition, SwatPass
from swat_fx.trace import SwatGraphModule


def checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`torch.utils.checkpoint.checkpoint`, looked up at each call: a library may replace it (ONNX Runtime
    training does) with something that does not pickle, and the graph must keep naming this function."""
    return torch_checkpoint.checkpoint(function, *args, **kwargs)


def call_module(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A module call inside a region, with the module passed in (the region owns no modules)."""
    return module(*args, **kwargs)


def _outline(gm: fx.GraphModule, region: CheckpointRegion, nodes: list[fx.Node]) -> None:
    graph = gm.graph
    inside = set(nodes)
    inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in inside))
    modules = list(dict.fromkeys(n.target for n in nodes if n.op == "call_module"))
    outputs = [n for n in nodes if any(user not in inside for user in n.users)]

    sub = fx.Graph()
    env: dict[fx.Node, fx.Node] = {value: sub.placeholder(value.name) for value in inputs}
    module_args = {target: sub.placeholder(re.sub(r"\W", "_", target) + "_module") for target in modules}
    for node in nodes:
        if node.op == "call_module":
            args = fx.map_arg(node.args, env.__getitem__)
            kwargs = fx.map_arg(node.kwargs, env.__getitem__)
            env[node] = sub.call_function(call_module, (module_args[node.target], *args), kwargs)
            env[node].meta.update(node.meta)
            env[node].name = node.name
        else:
            env[node] = sub.node_copy(node, env.__getitem__)
    sub.output(tuple(env[node] for node in outputs))
    name = f"{REGIONS_ROOT}.region{region.index}"
    gm.add_submodule(name, SwatGraphModule(nn.Module(), sub, "CheckpointRegion"))

    # Nodes of the span outside the region that read its outputs move after the checkpoint call.
    order = list(graph.nodes)
    span = order[order.index(nodes[0]):order.index(nodes[-1])]
    moved: list[fx.Node] = []
    for node in span:
        if node not in inside and any(a in inside or a in moved for a in node.all_input_nodes):
            moved.append(node)
    for node in moved:
        if any(user in inside for user in node.users):
            raise RuntimeError(f"swat_fx: checkpoint region {region.index} cannot be outlined: {node.name!r} "
                               "reads the region's results and feeds it")
    anchor = nodes[-1].next  # everything below goes, in order, between the region's last node and this one
    with graph.inserting_before(anchor):
        function = graph.get_attr(name)
        module_nodes = [graph.get_attr(target) for target in modules]
        call = graph.call_function(
            checkpoint, (function, *inputs, *module_nodes),
            {"use_reentrant": False, "preserve_rng_state": region.preserve_rng_state},
        )
        for index, output in enumerate(outputs):
            result = graph.call_function(operator.getitem, (call, index))
            output.replace_all_uses_with(result, delete_user_cb=lambda user: user not in inside)
    for node in moved:
        anchor.prepend(node)
    for node in reversed(nodes):
        graph.erase_node(node)


def _no_region_nodes(gm: fx.GraphModule) -> str | None:
    left = [n.name for n in gm.graph.nodes if region_of(n) is not None and n.op != "get_attr"]
    return f"node(s) {', '.join(left[:5])} of checkpoint regions were not outlined" if left else None


REGIONS_OUTLINED = Condition("every checkpoint region is called through torch.utils.checkpoint", _no_region_nodes)


class OutlineCheckpointRegions(SwatPass):
    """Move each checkpoint region's nodes into a sub-graph called through `torch.utils.checkpoint`."""

    requires = (KERNELS_CHOSEN,)
    ensures = (KERNELS_CHOSEN, REGIONS_OUTLINED)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        regions: dict[CheckpointRegion, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            region = region_of(node)
            if region is not None and node.op not in ("placeholder", "output", "get_attr"):
                regions.setdefault(region, []).append(node)
        for region, nodes in regions.items():
            _outline(gm, region, nodes)
        gm.recompile()
        return gm
