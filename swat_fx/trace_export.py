"""The `torch.export` tracer: for models symbolic tracing cannot follow (HuggingFace transformers,
`*args/**kwargs` forwards, shapes and dtypes used as Python values).

`torch.export` (non-strict, training IR) runs the model on example inputs and records ATen ops,
keeping the parameter and buffer names. The exported graph is fixed to the mode it was traced in;
`follow_training_mode` makes its dropout and batch-norm ops read `self.training` again, so
`model.eval()` and `model.train()` work as on the original model.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.export import Dim

from swat_fx.checkpoint_regions import collect_regions, tagging_checkpoint_regions

aten = torch.ops.aten

_TRAIN_FLAG_ARG = {
    aten.dropout.default: 2,
    aten.feature_dropout.default: 2,
    aten.alpha_dropout.default: 2,
    aten.feature_alpha_dropout.default: 2,
    aten.batch_norm.default: 5,
}
"""Ops whose `train`/`training` flag the exported graph fixes, and its position."""


def _when_training(value: Any, training: bool) -> Any:
    """`value` in training mode, 0 otherwise (the dropout probability of attention)."""
    return value if training else 0.0


def _count_batch(num_batches_tracked: torch.Tensor, training: bool) -> torch.Tensor:
    """BatchNorm's `num_batches_tracked += 1`, which happens in training mode only."""
    return num_batches_tracked.add_(1) if training else num_batches_tracked


def follow_training_mode(gm: fx.GraphModule) -> None:
    """Make the ops that behave differently in training read `self.training` instead of the mode at export."""
    graph = gm.graph
    first = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
    with graph.inserting_before(first):
        training = graph.create_node("get_attr", "training")  # the module's mode flag, read at each call
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        position = _TRAIN_FLAG_ARG.get(node.target)
        if position is not None and len(node.args) > position and node.args[position] is True:
            if node.target is aten.batch_norm.default and node.args[3] is None:
                continue  # no running statistics: batch statistics in both modes
            node.update_arg(position, training)
        elif node.target is aten.scaled_dot_product_attention.default:
            p = node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0)
            if p:
                with graph.inserting_before(node):
                    dropout = graph.call_function(_when_training, (p, training))
                if len(node.args) > 4:
                    node.update_arg(4, dropout)
                else:
                    node.update_kwarg("dropout_p", dropout)
        elif node.target is aten.add_.Tensor and _is_batch_counter(gm, node):
            node.target = _count_batch
            node.args = (node.args[0], training)


def drop_example_values(graph: fx.Graph) -> None:
    """Forget the fake example values `torch.export` leaves in the node metadata: the passes have read
    them, and they hold the tracing session (they neither pickle nor mean anything at run time)."""
    for node in graph.nodes:
        node.meta.pop("val", None)
        node.meta.pop("tensor_meta", None)


def _is_batch_counter(gm: fx.GraphModule, node: fx.Node) -> bool:
    counter = node.args[0]
    return (isinstance(counter, fx.Node) and counter.op == "get_attr"
            and str(counter.target).endswith("num_batches_tracked") and node.args[1] == 1)


def _batch_dynamic(model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`dynamic_shapes` that let dimension 0 of every tensor input vary (specialised where the model
    needs it fixed), keyed by the forward's argument names."""
    bound = inspect.signature(model.forward).bind(*args, **kwargs)

    def spec(value: Any) -> Any:
        return {0: Dim.AUTO} if isinstance(value, torch.Tensor) and value.dim() > 0 else None

    return {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def export_trace(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    example_kwargs: Mapping[str, Any],
    dynamic_shapes: Any = None,
) -> fx.GraphModule:
    """Export a deep copy of `model` in training mode on the example inputs; the ATen graph module keeps
    the original parameter and buffer names. Raises what `torch.export` raises."""
    root = copy.deepcopy(model).train()  # exported as it trains; `follow_training_mode` restores eval
    kwargs = dict(example_kwargs)
    if dynamic_shapes is None:
        dynamic_shapes = _batch_dynamic(root, example_inputs, kwargs)
    with tagging_checkpoint_regions(annotate_nodes=True):
        program = torch.export.export(root, example_inputs, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    gm = program.module(check_guards=False)  # its guard function does not pickle; ops check shapes anyway
    collect_regions(gm.graph)
    gm.graph.eliminate_dead_code()  # what the outputs do not need (e.g. a pooler whose output is unused)
    follow_training_mode(gm)
    gm.recompile()
    return gm
