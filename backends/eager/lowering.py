"""The eager lowering: a SWAT graph becomes a PyTorch module with SWAT autograd kernels.

It owns every eager storage choice: the kernel of each op and the formats its sites hand over
(`ChooseKernels`), and bit-mask ReLUs and index-only max-pools in front of compressed activations
(`StoreActivationsCompactly`), BatchNorms after compact convs on the kept channels only
(`NormalizeKeptChannels`), one scratch workspace for the operands the kernels rebuild
(`ShareWorkspace`), and it calls the user's `torch.utils.checkpoint` regions through
checkpoint again (`OutlineCheckpointRegions`). The neutral
graph the module was lowered from stays in `meta[SWAT_GRAPH_META]`, and every module it names stays
reachable, so the other backends read the same SWAT graph whatever was chosen here.
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx.backends.eager.choose_kernels import ChooseKernels
from swat_fx.backends.eager.formats import Kernel
from swat_fx.backends.eager.normalize_kept_channels import NormalizeKeptChannels
from swat_fx.backends.eager.outline_checkpoints import OutlineCheckpointRegions
from swat_fx.backends.eager.share_workspace import ShareWorkspace
from swat_fx.backends.eager.store_activations_compactly import StoreActivationsCompactly
from swat_fx.contract import SWAT_GRAPH_META, record_of, weight_product_nodes
from swat_fx.passes import PassManager
from swat_fx.trace import copy_graph


def lower(swat_gm: fx.GraphModule, kernel: str | Kernel = Kernel.AUTO) -> fx.GraphModule:
    """Lower the SWAT graph `swat_gm` in place for eager PyTorch; `kernel` is the storage choice
    (`"auto"`, `"masked"`, `"compressed"` or `"compact"`, or a `Kernel`)."""
    kernel = Kernel.parse(kernel)
    granularities = {record_of(node).granularity for node in weight_product_nodes(swat_gm)}
    if kernel is Kernel.COMPACT and granularities - {"filter"}:
        raise ValueError("kernel='compact' computes on whole kept filters and channels: it needs "
                         f"granularity='filter', got {', '.join(sorted(map(repr, granularities)))}")
    swat_gm.meta[SWAT_GRAPH_META] = copy_graph(swat_gm.graph)
    manager = PassManager([ChooseKernels(kernel), StoreActivationsCompactly(), NormalizeKeptChannels(),
                           ShareWorkspace(), OutlineCheckpointRegions()])
    return manager(swat_gm)
