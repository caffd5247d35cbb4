"""Pass: rewrite each sparsified weight product into explicit Top-K nodes feeding a `swat_fx.ops` call.

Every op with sparsity > 0 and at least one site is replaced by

    {layer}_w_s = self.swat.{layer}.w_topk(weight)   # W_s, for fw_w / bw_w
    {layer}_x_s = self.swat.{layer}.x_topk(x)        # X_s, for bw_a (or the op's input itself, for fw_a)
    y = swat_fx.ops.conv(x, weight, bias, ..., weight_fwd=..., weight_bwd=..., input_bwd=...)
    {layer}_g_s = self.swat.{layer}.g_topk(y)        # G_s in the backward, for bw_g

(`W @ x`, a weight on the left, reads `x.transpose(-2, -1)` and returns its result transposed back.)

Every node added for an op inside a `torch.utils.checkpoint` region joins that region. The `TopK`
modules live under the `swat` submodule, mirroring the layer's qualified name
(`contract.site_target`), so their state is in `state_dict()`. Parameters keep their original names:
the rewritten op reads them with `get_attr`. Nothing here is specific to a backend.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from swat_fx import ops
from swat_fx.checkpoint_regions import copy_region
from swat_fx.contract import Slot, WeightProduct, record_of, site_target, weight_product_nodes
from swat_fx.passes.conditions import BACKEND_NEUTRAL, BUDGETS_ASSIGNED, SITES_INSERTED
from swat_fx.passes.find_weight_products import operands_of, transposed_weight
from swat_fx.passes.pass_base import SwatPass
from swat_fx.schedule import IterationClock
from swat_fx.topk import TopK


def _node_name(op: WeightProduct, suffix: str) -> str:
    return op.name.replace(".", "_").replace("@", "_call") + suffix


def _operand(graph: fx.Graph, value: fx.Node | str | None) -> fx.Node | None:
    return graph.get_attr(value) if isinstance(value, str) else value


def _sparsify(gm: fx.GraphModule, op: WeightProduct, slot: Slot, value: fx.Node, **mode: Any) -> fx.Node:
    site = TopK(op.sparsity, op.granularity, slot.role, op.layer, op.period, **mode)
    site.to(gm.get_parameter(op.weight).device)
    target = site_target(op.name, slot)
    gm.add_submodule(target, site)
    return gm.graph.create_node("call_module", target, (value,), name=_node_name(op, f"_{slot.value}_s"))


def _rewrite(gm: fx.GraphModule, node: fx.Node, op: WeightProduct, **common: Any) -> None:
    """Replace `node` by its SWAT form (its users read the new op, or G_s's site after it)."""
    sites = op.sites
    graph = gm.graph
    before = set(graph.nodes)
    operands = operands_of(gm, node)
    x = operands.input
    with graph.inserting_before(node):
        if op.weight_left:  # W @ x = (xᵀ Wᵀ)ᵀ: features last, as a linear reads them
            x = graph.call_method("transpose", (x, -2, -1))
        if op.pad_mode is not None:
            mode, pad = op.pad_mode
            x = graph.call_function(F.pad, (x, pad), {"mode": mode})
        weight = _operand(graph, operands.weight)
        if op.transpose_weight:  # the op takes [..., out, in]
            swap = ("t", (weight,)) if len(op.weight_shape) == 2 else ("transpose", (weight, -2, -1))
            weight = graph.call_method(*swap)
        bias = _operand(graph, operands.bias)
        kwargs: dict = {}
        if sites & {"fw_w", "bw_w"}:
            w_s = _sparsify(gm, op, Slot.WEIGHT, weight, backward_only="fw_w" not in sites, **common)
            kwargs["weight_fwd"] = w_s if "fw_w" in sites else None
            kwargs["weight_bwd"] = w_s if "bw_w" in sites else None
        if "fw_a" in sites:
            x = _sparsify(gm, op, Slot.INPUT, x, differentiable=True, **common)
        elif "bw_a" in sites:
            kwargs["input_bwd"] = _sparsify(gm, op, Slot.INPUT, x, backward_only=True, **common)
        target = ops.linear if op.kind == "linear" else ops.conv
        conv = op.conv.as_kwargs() if op.conv is not None else {}
        result = graph.create_node("call_function", target, (x, weight, bias), {**conv, **kwargs},
                                   name=_node_name(op, "_y"))
        result.meta.update(node.meta)
        if op.weight_left and isinstance(node.meta.get("val"), torch.Tensor):  # export's example value
            result.meta["val"] = node.meta["val"].transpose(-2, -1)
    output = result
    if "bw_g" in sites:
        with graph.inserting_after(output):
            output = _sparsify(gm, op, Slot.GRAD, output, **common)
    if op.weight_left:
        with graph.inserting_after(output):
            output = graph.call_method("transpose", (output, -2, -1))
        if "val" in node.meta:  # what later passes read of the value the users see
            output.meta["val"] = node.meta["val"]
    copy_region(node, *(n for n in graph.nodes if n not in before and n.op != "get_attr"))
    node.replace_all_uses_with(output)
    graph.erase_node(node)


def _erase_dead_transposes(gm: fx.GraphModule) -> None:
    """`W.T` nodes that fed a rewritten matmul are no longer used."""
    for node in reversed(gm.graph.nodes):
        if not node.users and transposed_weight(gm, node) is not None:
            gm.graph.erase_node(node)


class InsertSparsification(SwatPass):
    """Replace every sparsified weight product by its SWAT form (nothing changes for `algorithm="dense"`).

    All sites share one `IterationClock`; `sync_thresholds` averages stored activation and gradient
    thresholds over the ranks of a process group at each refresh.
    """

    requires = (BUDGETS_ASSIGNED,)
    ensures = (SITES_INSERTED, BACKEND_NEUTRAL)

    def __init__(self, sync_thresholds: bool = True) -> None:
        self.sync_thresholds = sync_thresholds

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        common = {"clock": IterationClock(), "sync_thresholds": self.sync_thresholds}
        for node in weight_product_nodes(gm):
            op = record_of(node)
            if op.sparsified:
                _rewrite(gm, node, op, **common)
        _erase_dead_transposes(gm)
        return gm
