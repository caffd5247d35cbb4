"""`transform`: trace a model, run the neutral SWAT passes over it, and lower it for eager PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch.fx as fx
import torch.nn as nn

from swat_fx.backends.eager.formats import Kernel
from swat_fx.backends.eager.lowering import lower
from swat_fx.config import SwatConfig
from swat_fx.contract import CONFIG_META, config_of, is_transformed, weight_product_nodes
from swat_fx.passes import neutral_passes
from swat_fx.trace import Tracer, trace


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
    if not weight_product_nodes(gm):
        warnings.warn(
            f"swat_fx found no sparsifiable op (conv/linear with a parameter weight) in "
            f"{type(model).__name__}; the model is returned unchanged and trains densely. "
            "If its layers are inside leaf modules, remove them from leaf_modules.",
            stacklevel=2,
        )
    gm.meta[CONFIG_META] = config
    gm.drive_clocks()
    return gm.train(model.training)
