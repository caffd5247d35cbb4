"""What the ONNX passes must sparsify: one `SparseOp` per sparsified conv/linear of a SWAT graph.

Read from the transformed `GraphModule` (its `SwatConfig` and the `SparsifiableOp` of every conv/linear
node), so per-layer sparsities already follow the uniform/ERK budgets and the first/last-layer rules.
Everything the ORT backend cannot lower is rejected here, before any export work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from swat_fx.backends.ort.topk_nodes import check_granularity
from swat_fx.config import SwatConfig
from swat_fx.passes import META_KEY, SparsifiableOp, sparsifiable_nodes
from swat_fx.transform import config_of

SUPPORTED_SITES: frozenset[str] = frozenset({"fw_w", "bw_w", "bw_a", "bw_g"})


@dataclass(frozen=True)
class SparseOp:
    """One sparsified call site. `weight` is the parameter's qualified name, which is also the name of
    its ONNX initializer; `call_index` of `call_count` call sites read the same weight (`name@1`...)."""

    name: str
    layer: str
    weight: str
    call_index: int
    call_count: int
    has_bias: bool
    sparsity: float
    sites: frozenset[str]
    granularity: str

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity


def swat_config(gm: fx.GraphModule) -> SwatConfig:
    """The `SwatConfig` of a `swat_fx.transform` result; a TypeError for anything else."""
    config = config_of(gm)
    if not isinstance(gm, fx.GraphModule) or config is None:
        raise TypeError(
            f"expected a model returned by swat_fx.transform, got {type(gm).__name__}; "
            "transform it first: swat_fx.transform(model, sparsity=...)"
        )
    return config


def check_supported(config: SwatConfig, training: bool) -> None:
    """Raise a clear error for the options the ORT backend does not lower."""
    unsupported = config.active_sites - SUPPORTED_SITES
    if unsupported:
        raise ValueError(
            f"site(s) {', '.join(sorted(unsupported))} are not supported by the ONNX / ORT backend; "
            f"supported sites: {', '.join(sorted(SUPPORTED_SITES))} (algorithms swat, saw, meprop, dense)"
        )
    if config.active_sites:
        check_granularity(config.granularity)
    if training and config.period != 1:
        raise ValueError(
            f"period={config.period}: ORT training artifacts compute the exact Top-K every step; "
            "transform the model with period=1 to export it for ORT training"
        )


def sparse_ops(gm: fx.GraphModule, training: bool) -> list[SparseOp]:
    """The sparsified ops of `gm` in graph order (layers with sparsity 0 are dense and left out)."""
    config = swat_config(gm)
    check_supported(config, training)
    nodes = sparsifiable_nodes(gm)
    weights = [node.meta[META_KEY].weight_param for node in nodes]
    result = []
    for i, node in enumerate(nodes):
        op: SparsifiableOp = node.meta[META_KEY]
        if op.sparsity > 0.0 and config.active_sites:
            result.append(SparseOp(
                name=op.name, layer=op.layer, weight=op.weight_param, call_index=weights[:i].count(op.weight_param),
                call_count=weights.count(op.weight_param), has_bias=op.bias is not None, sparsity=op.sparsity,
                sites=config.active_sites, granularity=config.granularity,
            ))
    return result
