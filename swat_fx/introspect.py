"""`layers`: what a transformed model sparsifies, with targets and the densities achieved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from swat_fx.passes import META_KEY, SparsifiableOp, sparsifiable_nodes
from swat_fx.topk import TopK
from swat_fx.transform import config_of

_ROLES = ("weight", "input", "grad")


@dataclass(frozen=True)
class LayerInfo:
    """One conv/linear call site of a transformed model.

    `achieved` maps "weight", "input", "grad" to the density kept at the last training step (1.0
    before the first one), for the tensors this layer sparsifies.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    sites: frozenset[str]
    sparsity: float
    weight_sparsity: float
    activation_sparsity: float
    grad_sparsity: float
    achieved: dict[str, float]

    @property
    def sparsified(self) -> bool:
        return bool(self.sites) and self.sparsity > 0.0


def _shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    """Annotate every node with its tensor shape by running the model once, without changing state."""
    was_training = gm.training
    try:
        with torch.no_grad():
            ShapeProp(gm.eval()).propagate(*example_inputs)
    finally:
        gm.train(was_training)


def _shape(node: object) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _sites_of(model: fx.GraphModule, node: fx.Node) -> list[TopK]:
    """The `TopK` modules that feed (or, for gradients, follow) the op at `node`."""
    candidates = [*node.kwargs.values(), *node.args, *node.users]
    return [
        model.get_submodule(c.target) for c in dict.fromkeys(candidates)
        if isinstance(c, fx.Node) and c.op == "call_module" and isinstance(model.get_submodule(c.target), TopK)
    ]


def layers(model: fx.GraphModule, example_inputs: Sequence[torch.Tensor] | None = None) -> list[LayerInfo]:
    """Every sparsifiable op of a `swat_fx.transform`-ed model, in graph order (dense ones included,
    with empty `sites`). Pass `example_inputs` to fill in input and output shapes."""
    config = config_of(model)
    if config is None:
        raise TypeError("swat_fx.layers expects a model returned by swat_fx.transform")
    if example_inputs is not None:
        _shapes(model, example_inputs)
    result = []
    for node in sparsifiable_nodes(model):
        op: SparsifiableOp = node.meta[META_KEY]
        sites = config.active_sites if op.sparsity > 0 else frozenset()
        achieved = {site.role: float(site.density) for site in _sites_of(model, node)}

        def target(*on: str, sites: frozenset[str] = sites, s: float = op.sparsity) -> float:
            return s if sites.intersection(on) else 0.0

        result.append(LayerInfo(
            name=op.name, kind=op.kind, weight_shape=op.weight_shape,
            input_shape=_shape(node.args[0]), output_shape=_shape(node), sites=sites,
            sparsity=op.sparsity if sites else 0.0, weight_sparsity=target("fw_w", "bw_w"),
            activation_sparsity=target("fw_a", "bw_a"), grad_sparsity=target("bw_g"), achieved=achieved,
        ))
    return result


def format_layers(infos: Sequence[LayerInfo]) -> str:
    """A plain-text table of `layers(...)`."""
    header = f"{'layer':<28} {'kind':<7} {'weight':<16} {'sparsity':>8} {'kept W':>7} {'kept X':>7} {'kept G':>7}"
    rows = [header, "-" * len(header)]
    for info in infos:
        kept = [f"{info.achieved[r]:7.3f}" if r in info.achieved else f"{'-':>7}" for r in _ROLES]
        rows.append(
            f"{info.name:<28} {info.kind:<7} {'x'.join(map(str, info.weight_shape)):<16} "
            f"{info.sparsity:8.2f} {' '.join(kept)}"
        )
    return "\n".join(rows)
