"""Pass: rewrite each sparsified op into explicit Top-K nodes feeding a `swat_fx.ops` call.

Pre: `assign_budgets` ran. Post: every op with sparsity > 0 and at least one active site is replaced by

    {layer}_w_s = self.swat.{layer}.w_topk(weight)   # W_s, for fw_w / bw_w
    {layer}_x_s = self.swat.{layer}.x_topk(x)        # X_s, for bw_a (or the op's input itself, for fw_a)
    y = swat_fx.ops.conv(x, weight, bias, ..., weight_fwd=..., weight_bwd=..., input_bwd=...)
    {layer}_g_s = self.swat.{layer}.g_topk(y)        # G_s in the backward, for bw_g

The `TopK` modules live under the `swat` submodule, mirroring the layer's qualified name, so their
state is in `state_dict()` as `swat.<layer>.<w|x|g>_topk.{step,threshold,density}`. Parameters keep
their original names: the rewritten op reads them with `get_attr`.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F

from swat_fx import ops
from swat_fx.config import SwatConfig
from swat_fx.passes.find_sparsifiable_ops import META_KEY, SparsifiableOp, is_transpose, sparsifiable_nodes
from swat_fx.topk import TopK

STATE_ROOT = "swat"


def state_path(op: SparsifiableOp) -> str:
    """Where an op's `TopK` modules live: `swat.<layer qualified name>`."""
    return f"{STATE_ROOT}.{op.name}"


def _node_name(op: SparsifiableOp, suffix: str) -> str:
    return op.name.replace(".", "_").replace("@", "_call") + suffix


def _operand(graph: fx.Graph, value: fx.Node | str | None) -> fx.Node | None:
    return graph.get_attr(value) if isinstance(value, str) else value


def _sparsify(
    gm: fx.GraphModule, op: SparsifiableOp, config: SwatConfig, slot: str, value: fx.Node, **mode: bool
) -> fx.Node:
    role = {"w": "weight", "x": "input", "g": "grad"}[slot]
    site = TopK(op.sparsity, config.granularity, role, op.layer, config.period, **mode)
    site.to(gm.get_parameter(op.weight_param).device)
    target = f"{state_path(op)}.{slot}_topk"
    gm.add_submodule(target, site)
    return gm.graph.create_node("call_module", target, (value,), name=_node_name(op, f"_{slot}_s"))


def _rewrite(gm: fx.GraphModule, node: fx.Node, op: SparsifiableOp, config: SwatConfig, x: fx.Node) -> fx.Node:
    """Replace `node` (whose input is now `x`) by its SWAT form; return the node that replaces it."""
    sites = config.active_sites
    graph = gm.graph
    with graph.inserting_before(node):
        if op.pad_mode is not None:
            mode, pad = op.pad_mode
            x = graph.call_function(F.pad, (x, pad), {"mode": mode})
        weight = _operand(graph, op.weight)
        if op.transpose_weight:
            weight = graph.call_method("t", (weight,))
        bias = _operand(graph, op.bias)
        kwargs: dict = {}
        if sites & {"fw_w", "bw_w"}:
            w_s = _sparsify(gm, op, config, "w", weight, backward_only="fw_w" not in sites)
            kwargs["weight_fwd"] = w_s if "fw_w" in sites else None
            kwargs["weight_bwd"] = w_s if "bw_w" in sites else None
        if "fw_a" in sites:
            x = _sparsify(gm, op, config, "x", x, differentiable=True)
        elif "bw_a" in sites:
            kwargs["input_bwd"] = _sparsify(gm, op, config, "x", x, backward_only=True)
        target = ops.linear if op.kind == "linear" else ops.conv
        result = graph.create_node("call_function", target, (x, weight, bias),
                                   {**op.conv, **kwargs, "kernel": "masked"}, name=_node_name(op, "_y"))
        result.meta[META_KEY] = op
    if "bw_g" in sites:
        with graph.inserting_after(result):
            output = _sparsify(gm, op, config, "g", result)
    else:
        output = result
    node.replace_all_uses_with(output)
    graph.erase_node(node)
    return output


def _erase_dead_transposes(graph: fx.Graph) -> None:
    """`W.T` nodes that fed a rewritten matmul are no longer used."""
    for node in reversed(graph.nodes):
        if not node.users and is_transpose(node):
            graph.erase_node(node)


def insert_sparsification(gm: fx.GraphModule, config: SwatConfig) -> fx.GraphModule:
    """Replace every op with sparsity > 0 by its SWAT form (nothing changes for `algorithm="dense"`)."""
    if not config.active_sites:
        return gm
    replaced: dict[fx.Node, fx.Node] = {}  # an op's recorded input may be an op rewritten before it
    for node in sparsifiable_nodes(gm):
        op = node.meta[META_KEY]
        if op.sparsity > 0.0:
            replaced[node] = _rewrite(gm, node, op, config, replaced.get(op.input, op.input))
    _erase_dead_transposes(gm.graph)
    gm.recompile()
    return gm
