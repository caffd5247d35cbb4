"""The density of every sparsification site: its target, its last achieved value, or measured on batches.

`measured` trains a deep copy of the model on the batches (forward and backward, no optimizer step),
exactly as the eager backend would, and averages each site's achieved density over them; the model
itself is not touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from swat_fx.contract import site_modules
from swat_fx.schedule import tensors_in
from swat_fx.topk import TopK

DENSITY_SOURCES: tuple[str, ...] = ("config", "achieved", "measured")
LossFn = Callable[[Any], torch.Tensor]


def half_squared_norm(output: Any) -> torch.Tensor:
    """The default measuring loss, ½‖y‖² over every output tensor: its gradient is the output itself,
    dense and without ties (a plain `sum()` gives a constant gradient that a Top-K cannot rank)."""
    return sum(0.5 * t.float().pow(2).sum() for t in tensors_in(output))


def _sites(model: nn.Module) -> dict[str, TopK]:
    return dict(site_modules(model))


def _as_args(batch: Any) -> Sequence[Any]:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def measure(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None) -> dict[str, float]:
    """Mean achieved density of every site over training steps on `batches` (each a tensor or a tuple
    of forward arguments), run on a copy of `model`."""
    loss_fn = loss_fn or half_squared_norm
    trainee = copy.deepcopy(model).train()
    sites = _sites(trainee)
    totals = dict.fromkeys(sites, 0.0)
    steps = 0
    for batch in batches:
        loss_fn(trainee(*_as_args(batch))).backward()
        for name, site in sites.items():
            totals[name] += float(site.density)
        steps += 1
    if steps == 0:
        raise ValueError("densities='measured' needs at least one batch in `batches`")
    return {name: total / steps for name, total in totals.items()}


def site_densities(
    model: nn.Module, source: str, batches: Iterable[Any] | None = None, loss_fn: LossFn | None = None
) -> dict[str, float]:
    """Density per `TopK` module path: `config` (1 − sparsity), `achieved` (at the model's last
    training step; 1.0 before the first) or `measured` (on `batches`)."""
    if source not in DENSITY_SOURCES:
        raise ValueError(f"unknown densities {source!r}; valid values are: {', '.join(DENSITY_SOURCES)}")
    if (source == "measured") != (batches is not None):
        raise ValueError("pass `batches` exactly when densities='measured'")
    if source == "measured":
        return measure(model, batches, loss_fn)
    if source == "achieved":
        return {name: float(site.density) for name, site in _sites(model).items()}
    return {name: site.target_density for name, site in _sites(model).items()}
