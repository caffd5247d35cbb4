"""What kind of operation an fx node is, for the FLOP and byte conventions of the IR.

Conv/linear nodes are recognised by the `WeightProduct` every one of them carries; `TopK` sites by
their module type; everything else by the name of its module type, function or method, with the
in-place `_` and the `1d/2d/3d` suffix removed (`BatchNorm2d`, `F.batch_norm` and `x.relu_()` all
find their kind). Unknown ops fall back to `elementwise`.
"""

from __future__ import annotations

import re

import torch.fx as fx

from swat_fx.contract import record_of, site_of

GEMM = "gemm"
GEMM_KINDS = frozenset({"conv1d", "conv2d", "conv3d", "linear"})
"""The `op` of the IR nodes of a conv/linear (its `WeightProduct.kind`)."""
NORMS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm"})

_KINDS: dict[str, tuple[str, ...]] = {
    "batch_norm": ("batchnorm", "batch_norm"),
    "layer_norm": ("layernorm", "layer_norm"),
    "group_norm": ("groupnorm", "group_norm"),
    "instance_norm": ("instancenorm", "instance_norm"),
    "relu": ("relu",),
    "max_pool": ("maxpool", "max_pool", "adaptivemaxpool", "adaptive_max_pool"),
    "avg_pool": ("avgpool", "avg_pool", "adaptiveavgpool", "adaptive_avg_pool"),
    "add": ("add", "sub", "iadd", "isub", "rsub"),
    "mul": ("mul", "div", "truediv", "imul", "itruediv"),
    "cat": ("cat", "concat", "concatenate", "stack"),
    "matmul": ("matmul", "mm", "bmm", "linear"),
    "view": (
        "flatten", "unflatten", "view", "view_as", "reshape", "reshape_as", "squeeze", "unsqueeze",
        "permute", "transpose", "t", "contiguous", "expand", "expand_as", "getitem", "getattr",
        "identity", "split", "chunk", "unbind", "clone", "detach", "to", "type_as", "float",
    ),
}
_KIND_OF_NAME = {name: kind for kind, names in _KINDS.items() for name in names}


def _normalised_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        name = type(gm.get_submodule(node.target)).__name__
    elif node.op == "call_method":
        name = node.target
    else:
        name = getattr(node.target, "__name__", str(node.target))
    name = name.lower().rstrip("_")
    return re.sub(r"[123]d$", "", name)


def op_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """`gemm` (a conv/linear with a parameter weight), `topk`, a kind of `_KINDS`, or `elementwise`."""
    if record_of(node) is not None:
        return GEMM
    if site_of(gm, node) is not None:
        return "topk"
    return _KIND_OF_NAME.get(_normalised_name(gm, node), "elementwise")


def pool_window(gm: fx.GraphModule, node: fx.Node, spatial_dims: int) -> int | None:
    """Entries per pooling window from `kernel_size`, or None (adaptive pools: the caller divides
    input by output size)."""
    if node.op == "call_module":
        kernel = getattr(gm.get_submodule(node.target), "kernel_size", None)
    else:
        kernel = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
        if "adaptive" in _normalised_name(gm, node):
            kernel = None
    if kernel is None:
        return None
    sizes = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,) * spatial_dims
    window = 1
    for size in sizes:
        window *= int(size)
    return window
