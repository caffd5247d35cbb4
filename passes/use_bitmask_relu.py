"""Pass: a ReLU whose output feeds a compactly stored X_s saves a 1-bit mask instead of its output.

PyTorch's ReLU keeps its output for the backward; when the only other holder of that activation is a
SWAT op that saves it compressed, the ReLU alone would keep the dense tensor alive. `swat_fx.ops.relu`
keeps 1 bit an entry instead (lossless).

Pre: `choose_kernels` ran. Post: such ReLUs call `swat_fx.ops.relu`. A ReLU is left alone when its
input has other users (an in-place ReLU's effect on them would be lost).
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from swat_fx import ops
from swat_fx.topk import TopK


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _feeds_stored_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    return any(
        user.op == "call_module" and isinstance(gm.get_submodule(user.target), TopK)
        and user.kwargs.get("format", "dense") != "dense"
        for user in node.users
    )


def use_bitmask_relu(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if not (_is_relu(gm, node) and _feeds_stored_input(gm, node)):
            continue
        source = node.args[0]
        if len(source.users) != 1:
            continue
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_function(ops.relu, (source,))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.recompile()
    return gm
