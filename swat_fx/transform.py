"""`transform`: trace a model, run the neutral SWAT passes over it, and lower it for eager PyTorch."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Mapping
from typing import Any

import torch.fx as fx
import torch.nn as nn

from swat_fx.backends.eager.formats import Kernel
from swat_fx.backends.eager.lowering import lower
from swat_fx.config import SwatConfig
from swat_fx.contract import (
    CONFIG_META,
    SWAT_GRAPH_META,
    checkpoint_regions,
    config_of,
    dense_product_nodes,
    dense_product_of,
    is_transformed,
    record_of,
    weight_product_nodes,
)
from swat_fx.passes import neutral_passes
from swat_fx.trace import Tracer, trace
from swat_fx.trace_export import drop_example_values


class AlreadyTransformedError(TypeError):
    """`transform` was given a model that `transform` returned."""


def transform(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    config: SwatConfig | None = None,
    kernel: str | Kernel = "auto",
    example_inputs: Any = None,
    example_kwargs: Mapping[str, Any] | None = None,
    dynamic_shapes: Any = None,
    tracer: str | Tracer | None = None,
    **options: Any,
) -> fx.GraphModule:
    """Return a copy of `model` that trains with SWAT (or SAW, meProp: see `SwatConfig`).

    `sparsity` and `options` are `SwatConfig` fields; `config` gives them all at once (the keyword
    arguments then override it). `kernel` is the eager backend's storage choice: "auto", "masked",
    "compressed" or "compact" (other backends read the same SWAT graph whatever it is). The input
    model is not modified; parameters and buffers keep their names.

    Tracing: with `example_inputs` (a tuple of positional arguments) and/or `example_kwargs`, the model
    is traced by `torch.export` on them, with the batch dimension dynamic unless `dynamic_shapes` says
    otherwise; without, by `torch.fx` symbolic tracing. `tracer="fx"` or `"export"` forces one.
    """
    if is_transformed(model):
        raise AlreadyTransformedError(
            f"this {type(model).__name__} was already transformed by swat_fx (config: {config_of(model)}); "
            "transform the original model instead, e.g. swat_fx.transform(original, sparsity=...), and load "
            "its state with model.load_state_dict(...) (swat_fx.dense_state_dict strips the SWAT state)"
        )
    if sparsity is not None:
        options["sparsity"] = sparsity
    config = SwatConfig(**options) if config is None else config.replace(**options)
    kernel = Kernel.parse(kernel)
    gm = trace(model, tracer, leaf_modules=config.leaf_modules, concrete_args=config.concrete_args,
               example_inputs=example_inputs, example_kwargs=example_kwargs, dynamic_shapes=dynamic_shapes)
    gm = lower(neutral_passes(config)(gm), kernel)
    _warn_about_dense_products(gm, type(model).__name__)
    for graph in (gm.graph, gm.meta[SWAT_GRAPH_META], *(region.graph for region in checkpoint_regions(gm))):
        drop_example_values(graph)
    gm.meta[CONFIG_META] = config
    gm.drive_clocks()
    return gm.train(model.training)


def _warn_about_dense_products(gm: fx.GraphModule, model_name: str) -> None:
    """One warning for every product left dense for a reason other than the user's own rules."""
    reached = [record_of(node) for node in weight_product_nodes(gm)]
    missed = [dense_product_of(node) for node in dense_product_nodes(gm)]
    if not reached and not missed:
        warnings.warn(f"swat_fx found no conv/linear-like product with a parameter in {model_name}; the model "
                      "is returned unchanged and trains densely.", stacklevel=3)
        return
    if not missed:
        return
    by_reason = collections.Counter(record.reason for record in missed)
    reasons = "; ".join(f"{count} {reason.value}" for reason, count in by_reason.items())
    names = ", ".join(f"{record.name} ({record.op})" for record in missed[:4]) + (", ..." if len(missed) > 4 else "")
    warnings.warn(
        f"swat_fx leaves {len(missed)} of the {len(missed) + len(reached)} weight products of {model_name} dense: "
        f"{reasons}. First: {names}. swat_fx.layers(model) lists each with its reason; a model symbolic tracing "
        "cannot enter is traced whole by torch.export: transform(model, sparsity, example_inputs=(x,)).",
        stacklevel=3,
    )
