"""ONNX graph passes that put SWAT's sparsification sites (SPEC §2) into exported models.

`locate` finds each sparsified op in the forward part of a model (the exported dense forward, or the
eval or training model ORT generated from it): the Conv / Gemm / MatMul node that reads its weight
(directly or through a Transpose; the `call_index`-th such node for a weight used at several call
sites), its input X, its output Y (after a separate bias Add) and their types and shapes.

`sparsify_forward` rewires the forward node to read W_s (site `fw_w`); it applies to inference, eval
and training models alike. `sparsify_backward` rewrites the gradient graph that ORT's artifact
generator built for the *dense* model. ORT names every gradient node `<forward node>_Grad/<Op>_<i>`
and the gradient of a tensor T `T_grad`, so an op's gradient nodes are found by name:

    ConvGrad(G, X, W)                 -> dX, dW, db     (one node: dX reads only W, dW only X)
    Gemm / MatMul / FusedMatMul(G, W) -> dX             (linear: W or its Transpose)
    Gemm(X, G) (after Reshapes)       -> dW
    ReduceSum(G)                      -> db

In those nodes the weight operand becomes W_s (`bw_w`), X becomes X_s (`bw_a`) and `Y_grad` becomes
G_s (`bw_g`, which also reaches db). The parameter's gradient output is untouched, so dW stays the
gradient of the dense W; forward and backward share one W_s subgraph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from swat_fx.backends.ort.builder import NodeBuilder
from swat_fx.backends.ort.errors import UnsupportedOpError
from swat_fx.backends.ort.graph import GraphView, TensorInfo, attribute, replace_inputs, sort_topologically
from swat_fx.backends.ort.plan import SparseOp
from swat_fx.backends.ort.topk_nodes import sparsify

_CORE_OPS = ("Conv", "Gemm", "MatMul")
_WEIGHT_VIEWS = ("Transpose", "Identity")
SWAT_PREFIX = "/swat"


@dataclass(frozen=True)
class OpNodes:
    """Where a `SparseOp` lives in a model: its forward nodes (the core Conv/Gemm/MatMul first) and
    tensors. `transposed`: the core reads the weight as [in, out], so the [out, in] weight that the
    mask groups is the transpose of `operand`; `w_info` describes that [out, in, ...] weight."""

    op: SparseOp
    nodes: tuple[str, ...]
    operand: str
    transposed: bool
    x: str
    y: str
    x_info: TensorInfo
    y_info: TensorInfo
    w_info: TensorInfo

    @property
    def core(self) -> str:
        return self.nodes[0]


def is_gradient_node(node: onnx.NodeProto) -> bool:
    """Whether ORT's gradient builder made `node` (it names them `<forward node>_Grad/<Op>_<i>`)."""
    return "_Grad/" in node.name


def _cores(view: GraphView, weight: str) -> list[tuple[onnx.NodeProto, str, int]]:
    """(core node, weight operand it reads, Transposes between weight and operand) for every forward
    conv/linear node reading `weight`, in graph order."""
    found, frontier = [], [(weight, 0)]
    while frontier:
        tensor, flips = frontier.pop()
        for user in view.users(tensor):
            if is_gradient_node(user):
                continue
            if user.op_type in _WEIGHT_VIEWS:
                frontier.append((user.output[0], flips + (user.op_type == "Transpose")))
            elif user.op_type in _CORE_OPS and list(user.input).index(tensor) == 1:
                found.append((user, tensor, flips))
    order = {name: i for i, name in enumerate(view.nodes)}
    return sorted(found, key=lambda item: order[item[0].name])


def _output(view: GraphView, op: SparseOp, core: onnx.NodeProto) -> tuple[str, ...]:
    """The op's forward nodes: the core, and the Add of the bias when a MatMul carries none."""
    if core.op_type != "MatMul" or not op.has_bias:
        return (core.name,)
    users = view.users(core.output[0])
    if len(users) != 1 or users[0].op_type != "Add":
        raise UnsupportedOpError(f"layer {op.name!r}: expected the bias Add after ONNX node {core.name!r}")
    return core.name, users[0].name


def _info(infos: dict[str, TensorInfo], tensor: str, op: SparseOp) -> TensorInfo:
    if tensor not in infos:
        raise UnsupportedOpError(f"layer {op.name!r}: ONNX shape inference found no shape for tensor {tensor!r}")
    return infos[tensor]


def _logical_weight(weight: TensorInfo, flips: int, transposed: bool, op: SparseOp) -> TensorInfo:
    """The [out, in, ...] weight the mask groups: W, transposed once per Transpose on the way to the
    core and once more when the core reads it as [in, out]."""
    if (flips + transposed) % 2 == 0:
        return weight
    if len(weight.shape) != 2:
        raise UnsupportedOpError(f"layer {op.name!r}: its {len(weight.shape)}-D weight is transposed before use")
    return TensorInfo(weight.dtype, tuple(reversed(weight.shape)))


def locate(model: onnx.ModelProto, ops: Sequence[SparseOp], infos: dict[str, TensorInfo]) -> list[OpNodes]:
    """Find every sparsified op in the forward part of `model` (an exported forward, or the eval or
    training model ORT generated from it, whose optimisations may have merged or renamed nodes).
    `infos` are the tensor types and shapes of the exported forward (`graph.tensor_infos`)."""
    view = GraphView(model.graph)
    located = []
    for op in ops:
        cores = _cores(view, op.weight)
        if len(cores) != op.call_count:
            kinds = ", ".join(node.op_type for node, _, _ in cores) or "none"
            raise UnsupportedOpError(
                f"layer {op.name!r}: expected {op.call_count} Conv/Gemm/MatMul node(s) reading {op.weight!r} in "
                f"the ONNX graph, found {len(cores)} ({kinds}); the ORT backend cannot place its Top-K"
            )
        core, operand, flips = cores[op.call_index]
        if core.op_type == "Gemm" and attribute(core, "transA", 0):
            raise UnsupportedOpError(f"layer {op.name!r}: Gemm node {core.name!r} transposes its input")
        transposed = core.op_type == "MatMul" or (core.op_type == "Gemm" and not attribute(core, "transB", 0))
        nodes = _output(view, op, core)
        y = view.node(nodes[-1]).output[0]
        located.append(OpNodes(
            op=op, nodes=nodes, operand=operand, transposed=transposed, x=core.input[0], y=y,
            x_info=_info(infos, core.input[0], op), y_info=_info(infos, y, op),
            w_info=_logical_weight(_info(infos, op.weight, op), flips, transposed, op),
        ))
    return located


def _sparsify(b: NodeBuilder, site: OpNodes, tensor: str, info: TensorInfo, role: str) -> str:
    op = site.op
    return sparsify(b, tensor, info, role, op.layer, op.granularity, op.density)


def _sparse_weight(b: NodeBuilder, site: OpNodes) -> str:
    """W_s in the layout the core node reads (Top-K grouped on the [out, in, ...] weight)."""
    if not site.transposed:
        return _sparsify(b, site, site.operand, site.w_info, "weight")
    logical = b.one("Transpose", site.operand, perm=[1, 0])
    return b.one("Transpose", _sparsify(b, site, logical, site.w_info, "weight"), perm=[1, 0])


def _insert(graph: onnx.GraphProto, site: OpNodes, what: str, build: Callable[[NodeBuilder], str]) -> str:
    """Append the nodes `build` adds, named `/swat/<layer>/<what>/...`; return the tensor it computes."""
    b = NodeBuilder(f"{SWAT_PREFIX}/{site.op.name}/{what}")
    result = build(b)
    b.emit(graph)
    return result


def _weight_site(graph: onnx.GraphProto, site: OpNodes) -> str:
    return _insert(graph, site, "w_s", lambda b: _sparse_weight(b, site))


def sparsify_forward(model: onnx.ModelProto, sites: Sequence[OpNodes]) -> onnx.ModelProto:
    """Site `fw_w`: every sparsified op's forward node reads W_s (inference and eval models)."""
    view = GraphView(model.graph)
    for site in sites:
        if "fw_w" in site.op.sites:
            view.node(site.core).input[1] = _weight_site(model.graph, site)
    sort_topologically(model.graph)
    return model


def gradient_nodes(graph: onnx.GraphProto, forward_nodes: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes ORT's gradient builder generated for `forward_nodes` (named `<node>_Grad/...`)."""
    prefixes = tuple(f"{name}_Grad/" for name in forward_nodes)
    return [node for node in graph.node if node.name.startswith(prefixes)]


def _rewire(grads: list[onnx.NodeProto], old: str, new: str, site: OpNodes, what: str) -> None:
    if not replace_inputs(grads, old, new):
        raise UnsupportedOpError(
            f"layer {site.op.name!r}: no gradient node of ONNX node(s) {', '.join(site.nodes)} reads {old!r}, "
            f"so the {what} cannot be sparsified; ORT's gradient graph has an unexpected form"
        )


def sparsify_backward(model: onnx.ModelProto, sites: Sequence[OpNodes]) -> onnx.ModelProto:
    """All sites of every sparsified op in an ORT training model (forward part and gradient graph)."""
    graph, view = model.graph, GraphView(model.graph)
    for site in sites:
        on = site.op.sites
        grads = gradient_nodes(graph, site.nodes)
        if not grads:
            raise UnsupportedOpError(f"layer {site.op.name!r}: ORT generated no gradient for ONNX node {site.core!r}")
        if on & {"fw_w", "bw_w"}:
            w_s = _weight_site(graph, site)
            if "fw_w" in on:
                view.node(site.core).input[1] = w_s
            if "bw_w" in on:
                replace_inputs(grads, site.operand, w_s)  # no node reads W when dX is not needed
        if "bw_a" in on:
            x_s = _insert(graph, site, "x_s", lambda b, s=site: _sparsify(b, s, s.x, s.x_info, "input"))
            _rewire(grads, site.x, x_s, site, "activation X")
        if "bw_g" in on:
            g = f"{site.y}_grad"
            g_s = _insert(graph, site, "g_s", lambda b, s=site, g=g: _sparsify(b, s, g, s.y_info, "grad"))
            _rewire(grads, g, g_s, site, "output gradient G")
    sort_topologically(graph)
    return model
