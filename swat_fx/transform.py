"""`transform`: trace a model and run the SWAT passes over it."""

from __future__ import annotations

import warnings
from typing import Any

import torch.fx as fx
import torch.nn as nn

from swat_fx.config import SwatConfig
from swat_fx.passes import (
    assign_budgets,
    choose_kernels,
    find_sparsifiable_ops,
    insert_sparsification,
    share_sparsified_inputs,
    sparsifiable_nodes,
    store_activations_compactly,
)
from swat_fx.trace import trace

CONFIG_ATTR = "swat_config"


def config_of(model: nn.Module) -> SwatConfig | None:
    """The `SwatConfig` a model was transformed with, or None for any other module.

    It lives in `GraphModule.meta`, which survives `copy.deepcopy` (plain attributes do not); the
    `swat_config` attribute is a convenience on the object `transform` returned.
    """
    meta = getattr(model, "meta", None)
    config = meta.get(CONFIG_ATTR) if isinstance(meta, dict) else None
    return config if isinstance(config, SwatConfig) else None


def transform(model: nn.Module, sparsity: float | None = None, *, config: SwatConfig | None = None,
              **options: Any) -> fx.GraphModule:
    """Return a copy of `model` that trains with SWAT (or SAW, meProp: see `SwatConfig`).

    `sparsity` and `options` are `SwatConfig` fields; `config` gives them all at once (the keyword
    arguments then override it). The input model is not modified; parameters keep their names.
    """
    if sparsity is not None:
        options["sparsity"] = sparsity
    config = SwatConfig(**options) if config is None else config.replace(**options)
    gm = trace(model, config.leaf_modules, config.concrete_args)
    gm = find_sparsifiable_ops(gm)
    if not sparsifiable_nodes(gm):
        warnings.warn(
            f"swat_fx found no sparsifiable op (conv/linear with a parameter weight) in "
            f"{type(model).__name__}; the model is returned unchanged and trains densely. "
            "If its layers are inside leaf modules, remove them from leaf_modules.",
            stacklevel=2,
        )
    gm = assign_budgets(gm, config)
    gm = insert_sparsification(gm, config)
    gm = choose_kernels(gm, config)
    gm = share_sparsified_inputs(gm)
    gm = store_activations_compactly(gm)
    gm.graph.lint()
    gm.meta[CONFIG_ATTR] = config
    setattr(gm, CONFIG_ATTR, config)
    return gm.train(model.training)
