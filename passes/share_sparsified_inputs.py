"""Pass: let ops that sparsify the same activation the same way share one X_s.

A ResNet block's first conv and its downsample conv both read the block input; with the same
sparsity, granularity and format their X_s are equal, so one Top-K computes it and the backward holds
one (compressed) copy instead of two.

Pre: `choose_kernels` ran. Post: of any group of equivalent input `TopK` nodes, only the first remains
(the others' users read it, and their modules are removed from `swat`).
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx.topk import TopK


def _signature(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    if node.op != "call_module":
        return None
    site = gm.get_submodule(node.target)
    if not isinstance(site, TopK) or site.role != "input" or site.differentiable:
        return None
    return (node.args[0], site.sparsity, site.granularity, site.layer, site.period, node.kwargs.get("format"))


def share_sparsified_inputs(gm: fx.GraphModule) -> fx.GraphModule:
    first: dict[tuple, fx.Node] = {}
    for node in list(gm.graph.nodes):
        signature = _signature(gm, node)
        if signature is None:
            continue
        if signature not in first:
            first[signature] = node
            continue
        node.replace_all_uses_with(first[signature])
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
    gm.recompile()
    return gm
