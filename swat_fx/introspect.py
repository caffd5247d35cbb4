"""`layers`: what a transformed model sparsifies, with targets and the densities achieved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx

from swat_fx.backends.eager.formats import Kernel
from swat_fx.contract import (
    LOWERING_META,
    DenseReason,
    dense_product_of,
    record_of,
    require_transformed,
    site_of,
    swat_graph,
    weight_product_nodes,
)
from swat_fx.shapes import TensorSpec, propagate
from swat_fx.topk import TopK

_ROLES = ("weight", "input", "grad")


@dataclass(frozen=True)
class LayerInfo:
    """One conv/linear call site of a transformed model.

    `achieved` maps "weight", "input", "grad" to the density kept at the last training step (1.0
    before the first one), for the tensors this layer sparsifies. `kernel` is the eager backend's
    kernel for a sparsified layer (`Kernel.DENSE` for one whose only site is meProp's G_s or fw_a's
    X_s; None for a layer left dense), and `note` says why it is not the one asked for, where it is not.
    A layer left dense has its `dense_reason` (and `note`): one of the user's rules (first layer,
    overrides...) or something SWAT could not reach (a leaf module, an unsupported op: then `kind` is
    the op the graph calls and `name` the parameter or leaf module).
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
    kernel: Kernel | None = None
    note: str | None = None
    dense_reason: DenseReason | None = None

    @property
    def sparsified(self) -> bool:
        return bool(self.sites) and self.sparsity > 0.0


def _sites_of(model: fx.GraphModule, node: fx.Node) -> list[TopK]:
    """The `TopK` modules that feed (or, for gradients, follow) the op at `node`."""
    candidates = dict.fromkeys([*node.kwargs.values(), *node.args, *node.users])
    return [site for site in (site_of(model, c) for c in candidates) if site is not None]


def layers(model: fx.GraphModule, example_inputs: Sequence[torch.Tensor] | None = None) -> list[LayerInfo]:
    """Every conv/linear-like product with a parameter of a `swat_fx.transform`-ed model, in graph order:
    the sparsified ones, and those left dense with empty `sites` and their `dense_reason`. Pass
    `example_inputs` to fill in input and output shapes (the model's state
    and graph are not changed)."""
    require_transformed(model, "swat_fx.layers")
    graph = swat_graph(model)
    specs = propagate(graph, example_inputs) if example_inputs is not None else {}
    lowerings = {record_of(node).name: node.meta.get(LOWERING_META) for node in weight_product_nodes(model)}

    def shape(node: object) -> tuple[int, ...] | None:
        spec = specs.get(node)
        return spec.shape if isinstance(spec, TensorSpec) else None

    result = []
    for node in graph.graph.nodes:
        dense = dense_product_of(node)
        if dense is not None:
            result.append(LayerInfo(
                name=dense.name, kind=dense.op, weight_shape=dense.weight_shape, input_shape=None,
                output_shape=shape(node), sites=frozenset(), sparsity=0.0, weight_sparsity=0.0,
                activation_sparsity=0.0, grad_sparsity=0.0, achieved={}, dense_reason=dense.reason,
                note=f"{dense.reason.value}: {dense.detail}" if dense.detail else dense.reason.value,
            ))
        op = record_of(node)
        if op is None:
            continue
        sites = op.sites if op.sparsified else frozenset()
        achieved = {site.role: float(site.density) for site in _sites_of(graph, node)}

        def target(*on: str, sites: frozenset[str] = sites, s: float = op.sparsity) -> float:
            return s if sites.intersection(on) else 0.0

        lowering = lowerings.get(op.name)
        result.append(LayerInfo(
            name=op.name, kind=op.kind, weight_shape=op.weight_shape,
            input_shape=shape(node.args[0]), output_shape=shape(node), sites=sites,
            sparsity=op.sparsity if sites else 0.0, weight_sparsity=target("fw_w", "bw_w"),
            activation_sparsity=target("fw_a", "bw_a"), grad_sparsity=target("bw_g"), achieved=achieved,
            kernel=lowering.choice if lowering is not None else None,
            note=lowering.reason if lowering is not None else op.dense_reason and op.dense_reason.value,
            dense_reason=op.dense_reason,
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
