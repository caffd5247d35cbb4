"""Eager lowering pass: the model's masked and compressed kernels rebuild W_s / X_s into one `Workspace`.

The workspace is a submodule of the lowered model (`swat_workspace`), read once at the top of the
graph and handed to every such kernel call, so `gm.code` shows it (`workspace = swat_workspace`). It
holds no state: `state_dict()` is unchanged, a copy starts empty. Kernels inside a checkpoint region
get it as an argument of the region like any other value.
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.conditions import KERNELS_CHOSEN
from swat_fx.backends.eager.formats import Kernel
from swat_fx.backends.eager.workspace import Workspace
from swat_fx.contract import checkpoint_regions
from swat_fx.passes import Condition, SwatPass

WORKSPACE = "swat_workspace"
"""The lowered model's submodule that holds the kernels' scratch buffers."""
_REBUILDING = (Kernel.MASKED, Kernel.COMPRESSED)


def _rebuilding_kernel_nodes(graph: fx.Graph) -> list[fx.Node]:
    return [node for node in graph.nodes if node.op == "call_function"
            and node.target in (kernels.conv, kernels.linear) and node.kwargs.get("kernel") in _REBUILDING]


def _workspace_shared(gm: fx.GraphModule) -> str | None:
    """Every rebuilding kernel of the model's graph reads the one `Workspace` get_attr; those of
    checkpoint regions (outlined afterwards) read it as a region input."""
    sources = {node.kwargs.get("workspace") for node in _rebuilding_kernel_nodes(gm.graph)}
    for source in sources:
        if not (isinstance(source, fx.Node) and source.op == "get_attr" and source.target == WORKSPACE
                and isinstance(getattr(gm, WORKSPACE, None), Workspace)):
            return f"a {_REBUILDING[0].value} or {_REBUILDING[1].value} kernel does not read {WORKSPACE!r}: {source!r}"
    for region in checkpoint_regions(gm):
        for node in _rebuilding_kernel_nodes(region.graph):
            if not isinstance(node.kwargs.get("workspace"), fx.Node):
                return f"node {node.name!r} of a checkpoint region runs without the model's workspace"
    return None


WORKSPACE_SHARED = Condition("every masked or compressed kernel rebuilds into the model's workspace", _workspace_shared)


class ShareWorkspace(SwatPass):
    """Give every masked and compressed kernel call the model's one `Workspace`."""

    requires = (KERNELS_CHOSEN,)
    ensures = (KERNELS_CHOSEN, WORKSPACE_SHARED)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes = _rebuilding_kernel_nodes(gm.graph)
        if not nodes:
            return gm
        gm.add_submodule(WORKSPACE, Workspace())
        placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
        anchor = placeholders[-1].next if placeholders else next(iter(gm.graph.nodes))
        with gm.graph.inserting_before(anchor):
            workspace = gm.graph.get_attr(WORKSPACE)
        for node in nodes:
            node.update_kwarg("workspace", workspace)
        return gm
