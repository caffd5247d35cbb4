"""Pass: choose the eager kernel that runs each SWAT op.

Pre: `insert_sparsification` ran. Post: every `swat_fx.ops` call has its `kernel` keyword set:
`"dense"` where no operand of the product itself is sparse (meProp's G_s and fw_a's X_s are applied
around the op), else the configured kernel (`"auto"` picks `"masked"`).
"""

from __future__ import annotations

import torch.fx as fx

from swat_fx import ops
from swat_fx.config import SwatConfig

_SPARSE_OPERANDS = ("weight_fwd", "weight_bwd", "input_bwd")


def choose_kernel(node: fx.Node, config: SwatConfig) -> str:
    if all(node.kwargs.get(key) is None for key in _SPARSE_OPERANDS):
        return "dense"
    return "masked" if config.kernel == "auto" else config.kernel


def choose_kernels(gm: fx.GraphModule, config: SwatConfig) -> fx.GraphModule:
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in ops.SWAT_OPS:
            node.update_kwarg("kernel", choose_kernel(node, config))
    gm.recompile()
    return gm
