"""What the ONNX passes must sparsify: one `SparseOp` per sparsified conv/linear of a SWAT graph.

Read from the neutral SWAT graph (its `SwatConfig` and the `WeightProduct` of every conv/linear node),
so per-layer sparsities already follow the uniform/ERK budgets and the first/last-layer rules.
Everything the ORT backend cannot lower is rejected here, before any export work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from swat_fx.backends.ort.topk_nodes import check_granularity
from swat_fx.contract import WeightProduct, record_of, weight_product_nodes

SUPPORTED_SITES: frozenset[str] = frozenset({"fw_w", "bw_w", "bw_a", "bw_g"})


@dataclass(frozen=True)
class SparseOp:
    """One sparsified call site. `weight` is the parameter's qualified name, which is also the name of
    its ONNX initializer; `call_index` of `call_count` call sites read the same weight (`name@1`..., or
    its slices, in graph order); `weight_shape` is the [..., out, in] weight the op uses."""

    name: str
    layer: str
    weight: str
    weight_shape: tuple[int, ...]
    weight_slice: tuple[int, int, int] | None
    call_index: int
    call_count: int
    has_bias: bool
    sparsity: float
    sites: frozenset[str]
    granularity: str

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity


def check_supported(op: WeightProduct, training: bool) -> None:
    """Raise a clear error for the options of a sparsified op the ORT backend does not lower."""
    unsupported = op.sites - SUPPORTED_SITES
    if unsupported:
        raise ValueError(
            f"site(s) {', '.join(sorted(unsupported))} are not supported by the ONNX / ORT backend; "
            f"supported sites: {', '.join(sorted(SUPPORTED_SITES))} (algorithms swat, saw, meprop, dense)"
        )
    check_granularity(op.granularity)
    if training and op.period != 1:
        raise ValueError(
            f"period={op.period}: ORT training artifacts compute the exact Top-K every step; "
            "transform the model with period=1 to export it for ORT training"
        )


def sparse_ops(gm: fx.GraphModule, training: bool) -> list[SparseOp]:
    """The sparsified ops of the SWAT graph `gm` in graph order (dense layers are left out)."""
    records = [record_of(node) for node in weight_product_nodes(gm)]
    for op in records:
        if op.sparsified:
            check_supported(op, training)
    weights = [(op.weight, op.weight_slice) for op in records]
    return [
        SparseOp(
            name=op.name, layer=op.layer, weight=op.weight, weight_shape=op.weight_shape, weight_slice=op.weight_slice,
            call_index=weights[:i].count(weights[i]), call_count=weights.count(weights[i]), has_bias=op.has_bias,
            sparsity=op.sparsity,
            sites=op.sites, granularity=op.granularity,
        )
        for i, op in enumerate(records) if op.sparsified
    ]
