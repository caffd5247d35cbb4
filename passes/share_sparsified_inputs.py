"""Pass: ops that sparsify the same activation the same way share one X_s site.

A ResNet block's first conv and its downsample conv both read the block input; with the same sparsity,
granularity and period their X_s are equal, so one Top-K computes it, the backward can hold one copy,
and one site keeps its state. The later site's node and module are removed.
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx.checkpoint_regions import region_of
from swat_fx.contract import site_of
from swat_fx.passes.conditions import BACKEND_NEUTRAL, SITES_INSERTED
from swat_fx.passes.pass_base import Condition, SwatPass


def same_mask_key(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """What decides a backward-only input site's X_s (None for any other node): two sites with the
    same key compute the same X_s. Sites in different checkpoint regions are not shared: each region
    recomputes its own."""
    site = site_of(gm, node)
    if site is None or site.role != "input" or site.differentiable:
        return None
    return (node.args[0], site.sparsity, site.granularity, site.layer, site.period, region_of(node))


def _one_site_per_activation(gm: fx.GraphModule) -> str | None:
    seen: dict[tuple, fx.Node] = {}
    for node in gm.graph.nodes:
        key = same_mask_key(gm, node)
        if key is not None and key in seen:
            return f"sites {seen[key].name!r} and {node.name!r} compute the same X_s"
        if key is not None:
            seen[key] = node
    return None


ONE_SITE_PER_ACTIVATION = Condition("one X_s site per activation and Top-K setting", _one_site_per_activation)


class ShareSparsifiedInputs(SwatPass):
    """Of any group of equivalent input sites only the first remains; the others' users read it."""

    requires = (SITES_INSERTED,)
    ensures = (SITES_INSERTED, BACKEND_NEUTRAL, ONE_SITE_PER_ACTIVATION)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        first: dict[tuple, fx.Node] = {}
        for node in list(gm.graph.nodes):
            key = same_mask_key(gm, node)
            if key is None:
                continue
            if key not in first:
                first[key] = node
                continue
            node.replace_all_uses_with(first[key])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
        return gm
