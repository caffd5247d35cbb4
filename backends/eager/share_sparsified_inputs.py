"""Eager lowering pass: ops that sparsify the same activation the same way share one X_s.

A ResNet block's first conv and its downsample conv both read the block input; with the same
sparsity, granularity and format their X_s are equal, so one Top-K computes it and the backward holds
one (compressed) copy instead of two. The later site's module path is kept, as another name of the
first site (so the neutral graph and `state_dict()` are the same whatever the lowering shared).
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx.backends.eager.conditions import KERNELS_CHOSEN, NEUTRAL_GRAPH_RESOLVES
from swat_fx.contract import same_mask_key
from swat_fx.passes import SwatPass


def _signature(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    key = same_mask_key(gm, node)
    return None if key is None else (*key, node.kwargs.get("format"))


class ShareSparsifiedInputs(SwatPass):
    """Of any group of equivalent input `TopK` nodes only the first runs; the others' users read it."""

    requires = (KERNELS_CHOSEN,)
    ensures = (NEUTRAL_GRAPH_RESOLVES,)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
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
            gm.add_submodule(node.target, gm.get_submodule(first[signature].target))
        return gm
