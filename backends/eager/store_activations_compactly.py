"""Eager lowering pass: ReLUs and max-pools in front of compressed X_s stop holding dense activations.

PyTorch's ReLU keeps its output for the backward, and max-pool keeps its input; when the activation
is otherwise held only by SWAT ops that store it compressed, those two alone would keep the dense
tensor alive. The eager `kernels.relu` keeps 1 bit an entry instead, `kernels.max_pool2d` keeps only
its (int32) indices. Both are exact.

Every ReLU whose output feeds a compressed `TopK` input site or a replaced max-pool calls
`kernels.relu`; every `MaxPool2d` fed by such a ReLU calls `kernels.max_pool2d`. A ReLU is left alone
when its input has other users (an in-place ReLU's effect on them would be lost).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.conditions import KERNELS_CHOSEN, NEUTRAL_GRAPH_RESOLVES
from swat_fx.backends.eager.formats import Format
from swat_fx.checkpoint_regions import copy_region
from swat_fx.contract import site_of
from swat_fx.passes import SwatPass


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_) and not node.kwargs.get("inplace", False)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return isinstance(_module(gm, node), nn.ReLU)


def _stores_compactly(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A compressed X_s site: the kernel chosen to save memory (kept units are chosen for speed)."""
    site = site_of(gm, node)
    return site is not None and site.role == "input" and node.kwargs.get("format") is Format.COMPRESSED


def _replace(gm: fx.GraphModule, node: fx.Node, target: object, args: tuple) -> fx.Node:
    with gm.graph.inserting_after(node):
        replacement = gm.graph.call_function(target, args)
    copy_region(node, replacement)
    node.replace_all_uses_with(replacement)
    gm.graph.erase_node(node)
    return replacement


def _pool_args(pool: nn.MaxPool2d) -> tuple:
    return (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)


class StoreActivationsCompactly(SwatPass):
    """Bit-mask ReLUs and index-only max-pools in front of compressed X_s."""

    requires = (KERNELS_CHOSEN,)
    ensures = (NEUTRAL_GRAPH_RESOLVES,)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        if not any(_stores_compactly(gm, node) for node in gm.graph.nodes):
            return gm
        for node in list(gm.graph.nodes):
            pool = _module(gm, node)
            if (isinstance(pool, nn.MaxPool2d) and not pool.return_indices
                    and _is_relu(gm, node.args[0]) and len(node.args[0].users) == 1):
                _replace(gm, node, kernels.max_pool2d, (node.args[0], *_pool_args(pool)))
        for node in list(gm.graph.nodes):
            if not _is_relu(gm, node) or len(node.args[0].users) != 1:
                continue
            if any(_stores_compactly(gm, user) or user.target is kernels.max_pool2d for user in node.users):
                _replace(gm, node, kernels.relu, (node.args[0],))
        return gm
