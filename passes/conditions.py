"""The conditions the neutral passes require and ensure (see `pass_base.Condition`)."""

from __future__ import annotations

import torch.fx as fx

from swat_fx import ops
from swat_fx.contract import record_of, site_nodes, weight_product_nodes
from swat_fx.passes.pass_base import Condition


def _no_swat_nodes(gm: fx.GraphModule) -> str | None:
    found = site_nodes(gm) + [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ops.SWAT_OPS]
    if found:
        return f"the graph already has SWAT nodes ({', '.join(n.name for n in found[:3])}): it was transformed before"
    return None


def _records_name_parameters(gm: fx.GraphModule) -> str | None:
    for node in weight_product_nodes(gm):
        record = record_of(node)
        try:
            shape = tuple(gm.get_parameter(record.weight).shape)
        except AttributeError:
            return f"node {node.name!r} records weight {record.weight!r}, which is no parameter of the model"
        if record.used_shape(shape) != record.weight_shape:
            return f"node {node.name!r} records weight shape {record.weight_shape}, the parameter is {shape}"
    return None


def _budgets_assigned(gm: fx.GraphModule) -> str | None:
    missing = [node.name for node in weight_product_nodes(gm) if record_of(node).sparsity is None]
    return f"node(s) {', '.join(missing[:5])} have no sparsity" if missing else None


def _sites_inserted(gm: fx.GraphModule) -> str | None:
    for node in weight_product_nodes(gm):
        record = record_of(node)
        is_swat_op = node.op == "call_function" and node.target in ops.SWAT_OPS
        if record.sparsified != is_swat_op:
            state = "sparsified" if record.sparsified else "dense"
            return f"the {state} layer {record.name!r} is the node {node.format_node()}"
    unrecorded = [n.name for n in gm.graph.nodes
                  if n.op == "call_function" and n.target in ops.SWAT_OPS and record_of(n) is None]
    return f"SWAT op node(s) {', '.join(unrecorded)} carry no WeightProduct" if unrecorded else None


def _backend_neutral(gm: fx.GraphModule) -> str | None:
    for node in site_nodes(gm):
        if node.kwargs:
            return f"Top-K site {node.name!r} has backend arguments {dict(node.kwargs)}"
    for node in gm.graph.nodes:
        module = getattr(node.target, "__module__", "") or ""
        if node.op == "call_function" and module.startswith("swat_fx.backends"):
            return f"node {node.name!r} calls the backend function {module}.{node.target.__name__}"
    return None


NOT_TRANSFORMED = Condition("a graph without SWAT nodes", _no_swat_nodes)
PRODUCTS_RECORDED = Condition("WeightProduct records that name parameters of the model", _records_name_parameters)
BUDGETS_ASSIGNED = Condition("a sparsity on every WeightProduct", _budgets_assigned)
SITES_INSERTED = Condition("a SWAT op for exactly the sparsified layers", _sites_inserted)
BACKEND_NEUTRAL = Condition("a backend-neutral graph (no storage formats, kernels or backend calls)", _backend_neutral)
