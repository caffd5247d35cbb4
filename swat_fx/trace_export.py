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
import warnings
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
    aten.lstm.input: 6,
    aten.gru.input: 6,
    aten.rnn_tanh.input: 6,
    aten.rnn_relu.input: 6,
}
"""Ops whose `train`/`training` flag the exported graph fixes, and its position."""


def _when_training(value: Any, training: bool) -> Any:
    """`value` in training mode, 0 otherwise (the dropout probability of attention)."""
    return value if training else 0.0


def _count_batch(num_batches_tracked: torch.Tensor, training: bool) -> torch.Tensor:
    """BatchNorm's `num_batches_tracked += 1`, which happens in training mode only."""
    return num_batches_tracked.add_(1) if training else num_batches_tracked


def _dropout_p(node: fx.Node) -> Any:
    return node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0)


_VALUE_PRESERVING = {aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default}


def _ops(gm: fx.GraphModule) -> list[fx.Node]:
    """The calls of a graph that compute something, BatchNorm's batch counters (train mode only) left out."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target not in _VALUE_PRESERVING
            and not _is_batch_counter(gm, n)]


def _constants(node: fx.Node) -> list[Any]:
    return [a for a in (*node.args, *node.kwargs.values()) if not isinstance(a, fx.Node | list | tuple)]


def follow_training_mode(gm: fx.GraphModule, eval_gm: fx.GraphModule) -> list[str]:
    """Make the ops that the two exports (training and eval mode) run differently read `self.training`
    instead of the mode at export: dropout, batch norm (and its batch counter), attention dropout. Returns
    the ops where the two exports differ otherwise (the model's `self.training` decides more than those):
    their training behaviour stays in eval mode."""
    graph = gm.graph
    first = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
    with graph.inserting_before(first):
        training = graph.create_node("get_attr", "training")  # the module's mode flag, read at each call
    for node in list(graph.nodes):
        if node.op == "call_function" and _is_batch_counter(gm, node):
            node.target = _count_batch
            node.args = (node.args[0], training)
    train_ops, eval_ops = _ops(gm), _ops(eval_gm)
    if [n.target for n in train_ops] != [n.target for n in eval_ops]:
        different = {str(n.target) for n in train_ops} ^ {str(n.target) for n in eval_ops}
        return sorted(different) or ["the order of the ops"]
    unexplained = []
    for node, in_eval in zip(train_ops, eval_ops, strict=True):
        position = _TRAIN_FLAG_ARG.get(node.target)
        if position is not None and len(node.args) > position and len(in_eval.args) > position:
            if node.args[position] is True and in_eval.args[position] is False:
                node.update_arg(position, training)
        elif node.target is aten.scaled_dot_product_attention.default:
            if _dropout_p(node) and not _dropout_p(in_eval):
                with graph.inserting_before(node):
                    dropout = graph.call_function(_when_training, (_dropout_p(node), training))
                if len(node.args) > 4:
                    node.update_arg(4, dropout)
                else:
                    node.update_kwarg("dropout_p", dropout)
        elif _constants(node) != _constants(in_eval):
            unexplained.append(str(node.target))
    return sorted(set(unexplained))


def drop_example_values(graph: fx.Graph) -> None:
    """Forget the fake example values `torch.export` leaves in the node metadata: the passes have read
    them, and they hold the tracing session (they neither pickle nor mean anything at run time)."""
    for node in graph.nodes:
        node.meta.pop("val", None)
        node.meta.pop("tensor_meta", None)


def _is_batch_counter(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.target is not aten.add_.Tensor:
        return False
    counter = node.args[0]
    return (isinstance(counter, fx.Node) and counter.op == "get_attr"
            and str(counter.target).endswith("num_batches_tracked") and node.args[1] == 1)


def _batch_dynamic(model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """`dynamic_shapes` that let dimension 0 of every tensor input vary (specialised where the model
    needs it fixed), keyed by the forward's argument names."""
    signature = inspect.signature(model.forward)
    bound = signature.bind(*args, **kwargs)
    variadic = {name for name, p in signature.parameters.items() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if variadic & bound.arguments.keys():
        return None  # torch.export takes no per-name specs inside *args/**kwargs: static sizes, checked at each call

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
    root = copy.deepcopy(model)
    kwargs = dict(example_kwargs)
    if dynamic_shapes is None:
        dynamic_shapes = _batch_dynamic(root, example_inputs, kwargs)

    def export(training: bool) -> fx.GraphModule:
        with tagging_checkpoint_regions(annotate_nodes=True):
            program = torch.export.export(root.train(training), example_inputs, kwargs,
                                          dynamic_shapes=dynamic_shapes, strict=False)
        gm = program.module(check_guards=False)  # its guard function does not pickle: `check_input_sizes`
        gm.graph.eliminate_dead_code()  # what the outputs do not need (e.g. a pooler whose output is unused)
        return gm

    gm = export(training=True)  # exported as it trains; `follow_training_mode` gives eval mode back
    collect_regions(gm.graph)
    differences = follow_training_mode(gm, export(training=False))
    if differences:
        warnings.warn(
            f"{type(model).__name__}'s forward depends on self.training beyond dropout and batch norm "
            f"({', '.join(differences[:5])}): the export-traced model runs these as in training mode, also "
            "after .eval(); evaluate with the original model (load the transformed model's state into it with "
            "swat_fx.dense_state_dict) where that matters.", stacklevel=6)
    check_input_sizes(gm)
    gm.recompile()
    return gm


def _require_size(value: torch.Tensor, dim: int, size: int, name: str) -> None:
    """A check `torch.export` leaves to its guards: a size the graph was specialised to."""
    if value.shape[dim] != size:
        raise ValueError(
            f"input {name!r} has size {value.shape[dim]} in dim {dim}, but the model was exported with that "
            f"dim fixed to {size} (torch.export specialises a dim whose example size is 0 or 1, or that the "
            "model's code fixes); transform it again with another example or with dynamic_shapes")


def check_input_sizes(gm: fx.GraphModule) -> None:
    """Insert a `_require_size` check for every input dim the export made static but our default
    `dynamic_shapes` asked to vary (dim 0): a call with another size would otherwise run the
    specialised graph and compute something else without a word."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return
    with gm.graph.inserting_after(placeholders[-1]):
        for node in reversed(placeholders):
            example = node.meta.get("val")
            if isinstance(example, torch.Tensor) and example.dim() > 0 and isinstance(example.shape[0], int):
                gm.graph.call_function(_require_size, (node, 0, example.shape[0], node.name))
