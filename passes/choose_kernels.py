"""Pass: choose the kernel of each SWAT op, and the format its Top-K sites hand over.

Pre: `insert_sparsification` ran. Post: every `swat_fx.ops` call has its `kernel` keyword set, and the
`TopK` nodes feeding its backward operands a matching `format` keyword:

| kernel       | operands                                   | chosen by `kernel="auto"` for      |
|--------------|--------------------------------------------|------------------------------------|
| `dense`      | none sparse (meProp's G_s, fw_a's X_s are applied around the op) | those ops |
| `compact`    | `KeptUnits`: products on the kept filters/channels only | `granularity="filter"`, groups=1 |
| `masked`     | X_s zero-filled, W_s as W + threshold      | every other op                     |
| `compressed` | X_s as kept values + bitmap, W_s as W + threshold (less memory, some time) | never |

A configured kernel (`SwatConfig.kernel`) overrides the choice; `compact` falls back to `masked` for
grouped convolutions.
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx import ops
from swat_fx.config import SwatConfig

_SPARSE_OPERANDS = ("weight_fwd", "weight_bwd", "input_bwd")
_FORMATS = {  # kernel: (weight format, activation format)
    "masked": ("thresholded", "dense"),
    "compressed": ("thresholded", "compressed"),
    "compact": ("units", "units"),
}


def choose_kernel(node: fx.Node, config: SwatConfig) -> str:
    if all(node.kwargs.get(key) is None for key in _SPARSE_OPERANDS):
        return "dense"
    groups = node.kwargs.get("groups", 1)
    kernel = config.kernel
    if kernel == "auto":
        kernel = "compact" if config.granularity == "filter" else "masked"
    return "masked" if kernel == "compact" and groups != 1 else kernel


def choose_kernels(gm: fx.GraphModule, config: SwatConfig) -> fx.GraphModule:
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in ops.SWAT_OPS:
            continue
        kernel = choose_kernel(node, config)
        node.update_kwarg("kernel", kernel)
        if kernel == "dense":
            continue
        weight_format, input_format = _FORMATS[kernel]
        for key, format in (("weight_fwd", weight_format), ("weight_bwd", weight_format), ("input_bwd", input_format)):
            site = node.kwargs.get(key)
            if site is not None and format != "dense":
                site.update_kwarg("format", format)
    gm.recompile()
    return gm
