"""Eager lowering pass: a BatchNorm right after a compact conv normalises the kept channels only.

A compact conv computes its kept filters alone and leaves the other output channels zero; a
BatchNorm of a zero channel has batch mean and variance 0 and one output value, so `kernels.batch_norm`
computes statistics and outputs on the kept channels and fills in the rest (bit-identical to the
module: the docstring there says how). At 90 % filter sparsity that is a tenth of the BatchNorm
forward.

Every `call_module` to a plain `BatchNorm1d/2d/3d` whose input is the output of a `compact` conv
without bias, whose forward takes the kept filters of a site, and which is that output's only user
(an in-place op on it could make its zero channels non-zero), calls `kernels.batch_norm` instead,
with the module (a `get_attr`, so its mode, parameters and buffers are read at each call) and the
site's kept filters. The module stays where it is: state_dict, the neutral graph and the other
backends see the same BatchNorm.
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.conditions import KERNELS_CHOSEN, NEUTRAL_GRAPH_RESOLVES
from swat_fx.backends.eager.formats import Format, Kernel
from swat_fx.checkpoint_regions import copy_region
from swat_fx.passes import Condition, SwatPass


def _kept_filters(conv: fx.Node) -> fx.Node | None:
    """The site node handing the kept filters to a compact conv without bias, else None."""
    if not (conv.op == "call_function" and conv.target is kernels.conv and conv.kwargs.get("kernel") is Kernel.COMPACT
            and len(conv.args) > 2 and conv.args[2] is None):
        return None
    site = conv.kwargs.get("weight_fwd")
    if isinstance(site, fx.Node) and site.kwargs.get("format") is Format.FILTERS:
        return site
    return None


def _fusable_batch_norms(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(BatchNorm call, kept-filters site) pairs the pass rewrites."""
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or type(gm.get_submodule(node.target)) not in kernels.PLAIN_BATCH_NORMS:
            continue
        conv = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        # the BatchNorm alone reads the conv's output: no in-place op can change its zero channels first
        if isinstance(conv, fx.Node) and len(conv.users) == 1:
            site = _kept_filters(conv)
            if site is not None:
                pairs.append((node, site))
    return pairs


def _unfused(gm: fx.GraphModule) -> str | None:
    pairs = _fusable_batch_norms(gm)
    return f"BatchNorm node {pairs[0][0].name!r} still runs on every channel" if pairs else None


BATCH_NORMS_ON_KEPT_CHANNELS = Condition("every BatchNorm after a compact conv normalises the kept channels only",
                                         _unfused)


class NormalizeKeptChannels(SwatPass):
    """BatchNorms after compact convs call `kernels.batch_norm` with the conv's kept filters."""

    requires = (KERNELS_CHOSEN,)
    ensures = (KERNELS_CHOSEN, NEUTRAL_GRAPH_RESOLVES, BATCH_NORMS_ON_KEPT_CHANNELS)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        for node, site in _fusable_batch_norms(gm):
            with gm.graph.inserting_before(node):
                module = gm.graph.get_attr(node.target)
                replacement = gm.graph.call_function(kernels.batch_norm, (node.args[0], module), {"kept": site})
            copy_region(node, module, replacement)
            node.replace_all_uses_with(replacement)
            gm.graph.erase_node(node)
        return gm

