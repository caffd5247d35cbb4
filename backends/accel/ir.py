"""`to_accel_ir`: the networkx DiGraph of one training step of a SWAT graph.

The fx graph is walked forward once: each op gets its forward node and a closure that lowers its
backward. A softmax cross-entropy loss on the model's outputs seeds the backward, which walks the
graph in reverse; the gradient of a tensor with several consumers is summed in a `grad_sum` node.
Last, every parameter owner gets an SGD update. Edges are tensor dependencies: each tensor a node
reads adds an edge from the node that wrote it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import networkx as nx
import torch
import torch.fx as fx

from swat_fx.backends.accel import flops
from swat_fx.backends.accel.classify import GEMM, op_kind, pool_window
from swat_fx.backends.accel.densities import LossFn, site_densities
from swat_fx.backends.accel.formats import FORMATS
from swat_fx.backends.accel.rules import RULES, OpContext
from swat_fx.backends.accel.tensors import TensorRef
from swat_fx.contract import (
    WeightProduct,
    config_of,
    is_transformed,
    layer_of_site,
    record_of,
    site_of,
    swat_graph,
)
from swat_fx.masks import mask_layout
from swat_fx.shapes import Spec, TensorSpec, propagate

PHASES: tuple[str, ...] = ("fwd", "bwd_input", "bwd_weight", "sparsify", "update")
"""`sparsify` holds every node that exists only because of SWAT (Top-K of W, X or G, and fw_a's
masking of dX); a dense run of the same model is the IR without them."""
LOSS = "<loss>"

Backward = Callable[[TensorRef], None]


def _flat(spec: Spec) -> tuple[tuple[int, ...], int]:
    """Shape and element size of a value; an op with several tensor outputs counts as one flat tensor."""
    if isinstance(spec, TensorSpec):
        return spec.shape, spec.itemsize
    leaves = list(_leaves(spec))
    return (sum(s.numel for s in leaves),), (leaves[0].itemsize if leaves else 4)


def _leaves(spec: Spec) -> Iterable[TensorSpec]:
    if isinstance(spec, TensorSpec):
        yield spec
    elif isinstance(spec, tuple):
        for s in spec:
            yield from _leaves(s)


class _Builder:
    """Lowers one fx graph. `value` maps each tensor node to the TensorRef of its forward value,
    `backward` to the closure that lowers its backward, `grads` to the gradients its consumers send it."""

    def __init__(self, gm: fx.GraphModule, specs: dict[fx.Node, Spec], densities: dict[str, float]) -> None:
        self.gm = gm
        self.specs = specs
        self.densities = densities
        self.ir = nx.DiGraph()
        self.value: dict[fx.Node, TensorRef] = {}
        self.requires_grad: dict[fx.Node, bool] = {}
        self.backward: dict[fx.Node, Backward] = {}
        self.grads: dict[fx.Node, list[TensorRef]] = defaultdict(list)
        self.params: dict[str, TensorRef] = {}
        self.param_grads: dict[str, list[TensorRef]] = defaultdict(list)

    # ------------------------------------------------------------------------------ IR nodes

    def add(self, node_id: str, *, op: str, phase: str, layer: str, fx_node: str, reads: Sequence[TensorRef],
            writes: Sequence[TensorRef], macs: int = 0, flops_other: float = 0.0,
            densities: tuple[float, float] = (1.0, 1.0), role: str = "") -> None:
        """One IR node; `macs` is its product (zeros skippable), `flops_other` everything else."""
        da, db = densities
        attrs: dict[str, Any] = {
            "op": op, "phase": phase, "layer": layer, "fx_node": fx_node, "role": role,
            "macs": macs, "density_a": da, "density_b": db,
            "flops_dense": flops.MAC_FLOPS * macs + flops_other,
            "flops_effective": flops.MAC_FLOPS * macs * da * db + flops_other,
            "reads": [r.as_dict() for r in reads], "writes": [w.as_dict() for w in writes],
        }
        for fmt in FORMATS:
            attrs[f"bytes_read_{fmt}"] = sum(r.nbytes(fmt) for r in reads)
            attrs[f"bytes_written_{fmt}"] = sum(w.nbytes(fmt) for w in writes)
        self.ir.add_node(node_id, **attrs)
        for ref in reads:
            if ref.producer is not None:
                self.ir.add_edge(ref.producer, node_id, tensor=ref.name)

    def output(self, node: fx.Node, producer: str) -> TensorRef:
        shape, itemsize = _flat(self.specs[node])
        return TensorRef(node.name, "Y", "activation", shape, itemsize, producer=producer)

    def grad_of(self, node: fx.Node, producer: str, density: float = 1.0, role: str = "dX") -> TensorRef:
        """The gradient w.r.t. `node`'s value that `producer` writes."""
        value = self.value[node]
        return TensorRef(f"{producer}:d{node.name}", role, "grad", value.shape, value.itemsize, density, producer)

    def param(self, name: str) -> TensorRef:
        if name not in self.params:
            p = self.gm.get_parameter(name)
            self.params[name] = TensorRef(name, "W", "param", tuple(p.shape), p.element_size())
        return self.params[name]

    def param_grad(self, param: TensorRef, producer: str) -> TensorRef:
        grad = TensorRef(f"{producer}:d{param.name}", "dW", "grad", param.shape, param.itemsize, producer=producer)
        self.param_grads[param.name].append(grad)
        return grad

    def trainable(self, name: str) -> bool:
        try:
            return self.gm.get_parameter(name).requires_grad
        except AttributeError:
            return False

    def layer(self, node: fx.Node) -> str:
        op = record_of(node)
        if op is not None:
            return op.name
        if node.op == "call_module":
            return layer_of_site(node.target) if site_of(self.gm, node) is not None else node.target
        return node.name

    # ------------------------------------------------------------------------------ forward walk

    def run(self) -> nx.DiGraph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" and node in self.specs and self.specs[node] is not None:
                shape, itemsize = _flat(self.specs[node])
                self.value[node] = TensorRef(node.name, "X", "activation", shape, itemsize)
                self.requires_grad[node] = False
            elif node.op == "get_attr":
                self._lower_get_attr(node)
            elif node.op == "output":
                self._lower_loss(node)
            elif self._is_tensor_op(node):
                kind = op_kind(self.gm, node)
                lower = {GEMM: self._lower_gemm, "topk": self._lower_topk, "view": self._lower_view,
                         "matmul": self._lower_matmul}.get(kind)
                if lower is None:
                    self._lower_rule(node, kind)
                else:
                    lower(node)
        for node in reversed(self.gm.graph.nodes):
            grad = self._gradient(node)
            if grad is not None and node in self.backward:
                self.backward[node](grad)
        self._lower_updates()
        return self.ir

    def _is_tensor_op(self, node: fx.Node) -> bool:
        """An op on tensors; backward-only Top-K sites return None when shapes are propagated without
        grad, and take their input's shape."""
        if isinstance(self.specs.get(node), (TensorSpec, tuple)):
            return True
        return site_of(self.gm, node) is not None

    def _lower_get_attr(self, node: fx.Node) -> None:
        if not isinstance(self.specs.get(node), TensorSpec):
            return
        if self.trainable(node.target):
            self.value[node] = self.param(node.target)
            self.requires_grad[node] = True
        else:
            shape, itemsize = _flat(self.specs[node])
            self.value[node] = TensorRef(node.target, "buffer", "state", shape, itemsize)
            self.requires_grad[node] = False

    def _tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if n in self.value]

    def _lower_gemm(self, node: fx.Node) -> None:
        """Y = X' * W' (forward), dX = G' * W''ᵀ, dW = X''ᵀ * G' (SPEC §2), with the primed operands
        read from the op's `weight_fwd`, `weight_bwd`, `input_bwd` where SWAT sparsified them."""
        op: WeightProduct = record_of(node)
        x_node = node.args[0] if node.args else node.kwargs["input"]
        x = self.value[x_node]
        weight = self.param(op.weight)
        if op.weight_slice is not None:  # the rows (or columns) it reads; its gradient covers only those
            weight = weight.replace(shape=op.sliced_shape(weight.shape))
        bias = self.param(op.bias) if op.bias else None

        def operand(key: str, dense: TensorRef) -> TensorRef:
            source = node.kwargs.get(key)
            return self.value[source] if isinstance(source, fx.Node) else dense

        w_fwd, w_bwd, x_bwd = operand("weight_fwd", weight), operand("weight_bwd", weight), operand("input_bwd", x)
        fwd = f"{op.name}/fwd"
        y = self.output(node, fwd)
        macs = flops.gemm_macs(y.numel, op.weight_shape, op.layer == "linear")
        bias_flops = y.numel if bias is not None else 0
        common = {"op": op.kind, "layer": op.name, "fx_node": node.name}
        biases = [bias.replace(role="b")] if bias else []
        self.add(fwd, phase="fwd", reads=[x.replace(role="X"), w_fwd.replace(role="W"), *biases],
                 writes=[y], macs=macs, flops_other=bias_flops, densities=(x.density, w_fwd.density), **common)
        self.value[node] = y
        params = [p for p in (weight, bias) if p is not None and self.trainable(p.name)]
        self.requires_grad[node] = self.requires_grad[x_node] or bool(params)

        def backward(g: TensorRef) -> None:
            if self.requires_grad[x_node]:
                bwd = f"{op.name}/bwd_input"
                dx = self.grad_of(x_node, bwd)
                self.add(bwd, phase="bwd_input", reads=[g, w_bwd.replace(role="W")], writes=[dx], macs=macs,
                         densities=(g.density, w_bwd.density), **common)
                self.grads[x_node].append(dx)
            if params:
                bwd = f"{op.name}/bwd_weight"
                self.add(bwd, phase="bwd_weight", reads=[x_bwd.replace(role="X", saved=True), g],
                         writes=[self.param_grad(p, bwd) for p in params],
                         macs=macs if weight in params else 0, flops_other=bias_flops if bias in params else 0,
                         densities=(x_bwd.density, g.density), **common)

        self.backward[node] = backward

    def _lower_topk(self, node: fx.Node) -> None:
        """A weight or activation site is a forward-time node writing the sparse tensor; a gradient
        site (meProp) is the identity in the forward and a Top-K of G in the backward."""
        site = site_of(self.gm, node)
        source = node.args[0]
        dense = self.value[source]
        density = self.densities[node.target]
        layout = mask_layout(site.role, site.layer, site.granularity, len(dense.shape))
        unit = math.prod(dense.shape[d] for d in layout.score_dims)
        cost = flops.topk_flops(dense.numel, dense.numel // unit, bool(layout.score_dims), site.period)
        common = {"op": "topk", "phase": "sparsify", "layer": self.layer(node), "fx_node": node.name,
                  "role": site.role, "flops_other": cost}
        sid = f"{node.target}/sparsify"
        self.requires_grad[node] = self.requires_grad[source] and (site.differentiable or site.role == "grad")
        if site.role == "grad":
            self.value[node] = dense

            def sparsify_grad(g: TensorRef) -> None:
                g_s = self.grad_of(source, sid, density, role="G_s")
                self.add(sid, reads=[g], writes=[g_s], **common)
                self.grads[source].append(g_s)

            self.backward[node] = sparsify_grad
            return
        sparse = dense.replace(name=node.name, density=density, producer=sid, saved=False)
        mask = TensorRef(f"{node.name}.mask", "mask", "activation", dense.shape, 1 / 8, producer=sid, saved=True)
        self.add(sid, reads=[dense], writes=[sparse, *([mask] if site.differentiable else [])], **common)
        self.value[node] = sparse
        if site.differentiable:
            def mask_grad(g: TensorRef) -> None:
                bwd = f"{node.target}/sparsify_bwd"
                dx = self.grad_of(source, bwd, density)
                self.add(bwd, op="mask_grad", phase="sparsify", layer=self.layer(node), fx_node=node.name,
                         role=site.role, reads=[g, mask], writes=[dx], flops_other=flops.ELEMENTWISE * dx.numel)
                self.grads[source].append(dx)

            self.backward[node] = mask_grad

    def _lower_view(self, node: fx.Node) -> None:
        """Views, reshapes and getitems move no data and cost nothing: they alias their input."""
        sources = self._tensor_inputs(node)
        if not sources:  # a factory (`x.new_zeros`...) classified by name: an op without a rule
            self._lower_rule(node, "elementwise")
            return
        source = sources[0]
        shape, _ = _flat(self.specs[node])
        value = self.value[source]
        self.value[node] = value.replace(shape=shape) if math.prod(shape) == value.numel else value.replace(
            name=node.name, shape=shape)
        self.requires_grad[node] = self.requires_grad[source]
        self.backward[node] = lambda g: self.grads[source].append(g.replace(shape=self.value[source].shape))

    def _lower_matmul(self, node: fx.Node) -> None:
        """A product of two activations (attention scores, ...): 1 MAC per output entry and reduced
        index in the forward, the same again per operand that receives a gradient."""
        operands = self._tensor_inputs(node)[:2]
        fwd = f"{node.name}/fwd"
        y = self.output(node, fwd)
        macs = y.numel * self.value[operands[0]].shape[-1]
        common = {"op": "matmul", "layer": self.layer(node), "fx_node": node.name}
        self.add(fwd, phase="fwd", reads=[self.value[n] for n in operands], writes=[y], macs=macs, **common)
        self.value[node] = y
        grad_inputs = [n for n in operands if self.requires_grad[n]]
        self.requires_grad[node] = bool(grad_inputs)

        def backward(g: TensorRef) -> None:
            bwd = f"{node.name}/bwd_input"
            grads = [self.grad_of(n, bwd) for n in grad_inputs]
            self.add(bwd, phase="bwd_input", reads=[g, *(self.value[n].replace(saved=True) for n in operands)],
                     writes=grads, macs=macs * len(grad_inputs), **common)
            for n, grad in zip(grad_inputs, grads, strict=True):
                self.grads[n].append(grad)

        self.backward[node] = backward

    def _module_params(self, node: fx.Node) -> list[TensorRef]:
        if node.op != "call_module":
            return []
        module = self.gm.get_submodule(node.target)
        return [self.param(f"{node.target}.{name}") for name, _ in module.named_parameters()]

    def _lower_rule(self, node: fx.Node, kind: str) -> None:
        rule = RULES[kind]
        operands = self._tensor_inputs(node)
        inputs = [n for n in operands if self.value[n].kind != "param"]
        params = [self.value[n] for n in operands if self.value[n].kind == "param"] + self._module_params(node)
        trainable = [p for p in params if self.trainable(p.name)]
        fwd = f"{node.name}/fwd"
        y = self.output(node, fwd)
        input_refs = [self.value[n] for n in inputs]
        grad_inputs = [n for n in inputs if self.requires_grad[n]]
        window = 1.0
        if kind in ("max_pool", "avg_pool"):
            window = pool_window(self.gm, node, len(input_refs[0].shape) - 2) or input_refs[0].numel / y.numel
        ctx = OpContext(input_refs, params, y, [self.value[n] for n in grad_inputs], window)
        common = {"op": kind, "layer": self.layer(node), "fx_node": node.name}
        self.add(fwd, phase="fwd", reads=[*input_refs, *params], writes=[y], flops_other=rule.fwd(ctx), **common)
        self.value[node] = y
        self.requires_grad[node] = bool(grad_inputs or trainable)

        def backward(g: TensorRef) -> None:
            saved = [ref.replace(saved=True) for ref in rule.saved(ctx)]
            if grad_inputs:
                bwd = f"{node.name}/bwd_input"
                grads = [self.grad_of(n, bwd) for n in grad_inputs]
                self.add(bwd, phase="bwd_input", reads=[g, *saved, *params], writes=grads,
                         flops_other=rule.bwd_input(ctx), **common)
                for n, grad in zip(grad_inputs, grads, strict=True):
                    self.grads[n].append(grad)
            if trainable:
                bwd = f"{node.name}/bwd_weight"
                self.add(bwd, phase="bwd_weight", reads=[g, *saved],
                         writes=[self.param_grad(p, bwd) for p in trainable], flops_other=rule.bwd_weight(ctx),
                         **common)

        self.backward[node] = backward

    # ------------------------------------------------------------------------------ loss, backward, update

    def _lower_loss(self, node: fx.Node) -> None:
        """Softmax cross-entropy over every tensor output (the logits), seeding the backward."""
        outputs = self._tensor_inputs(node)
        if not outputs:
            return
        fwd, bwd = f"{LOSS}/fwd", f"{LOSS}/bwd_input"
        logits = [self.value[n] for n in outputs]
        n = sum(ref.numel for ref in logits)
        itemsize = logits[0].itemsize
        probs = TensorRef(f"{LOSS}.softmax", "P", "activation", (n,), itemsize, producer=fwd, saved=True)
        loss = TensorRef(LOSS, "L", "activation", (), itemsize, producer=fwd)
        common = {"op": "cross_entropy", "layer": "loss", "fx_node": ""}
        self.add(fwd, phase="fwd", reads=logits, writes=[loss, probs], flops_other=flops.LOSS_FWD * n, **common)
        grad_outputs = [n for n in outputs if self.requires_grad[n]]
        if not grad_outputs:
            return
        grads = [self.grad_of(n, bwd) for n in grad_outputs]
        self.add(bwd, phase="bwd_input", reads=[probs], writes=grads,
                 flops_other=flops.LOSS_BWD * sum(g.numel for g in grads), **common)
        for n, grad in zip(grad_outputs, grads, strict=True):
            self.grads[n].append(grad)

    def _gradient(self, node: fx.Node) -> TensorRef | None:
        """dL/d(node): the one contribution of its consumers, or their sum in a `grad_sum` node."""
        parts = self.grads.pop(node, [])
        if len(parts) <= 1:
            return parts[0] if parts else None
        node_id = f"{node.name}/grad_sum"
        total = self.grad_of(node, node_id, role="G")
        self.add(node_id, op="grad_sum", phase="bwd_input", layer=self.layer(node), fx_node=node.name,
                 reads=parts, writes=[total], flops_other=(len(parts) - 1) * total.numel)
        return total

    def _lower_updates(self) -> None:
        """SGD with momentum and weight decay, one node per module owning parameters; a parameter
        used at k call sites first sums its k gradients (k − 1 adds per entry; none where the call sites
        read disjoint slices)."""
        owners: dict[str, list[str]] = defaultdict(list)
        for name in self.param_grads:
            owners[name.rpartition(".")[0] or name].append(name)
        for owner, names in owners.items():
            node_id = f"{owner}/update"
            reads: list[TensorRef] = []
            writes: list[TensorRef] = []
            work = 0
            for name in names:
                weight, grads = self.params[name], self.param_grads[name]
                momentum = TensorRef(f"{name}.momentum", "V", "state", weight.shape, weight.itemsize)
                reads += [weight, *grads, momentum]
                writes += [weight.replace(producer=node_id), momentum.replace(producer=node_id)]
                work += (flops.UPDATE - 1) * weight.numel + sum(grad.numel for grad in grads)
            self.add(node_id, op="sgd_update", phase="update", layer=owner, fx_node="", reads=reads, writes=writes,
                     flops_other=work)


def to_accel_ir(
    model: fx.GraphModule,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    densities: str = "config",
    batches: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
) -> nx.DiGraph:
    """The IR of one training step of a `swat_fx.transform`-ed model: one node per forward,
    input-gradient, weight-gradient, Top-K and update operation, edges = tensor dependencies.

    Shapes come from running `example_inputs` once (eval mode, no state change). The density of each
    sparsified operand is its target (`densities="config"`), the one the model achieved at its last
    training step (`"achieved"`), or its mean over training steps on `batches` run on a copy of the
    model (`"measured"`; `loss_fn(output)` defaults to ½‖output‖²).
    """
    if not is_transformed(model):
        raise TypeError(
            "to_accel_ir expects a model returned by swat_fx.transform; for the dense baseline of a plain "
            "model use swat_fx.transform(model, algorithm='dense')"
        )
    graph = swat_graph(model, "swat_fx.to_accel_ir")
    config = config_of(model)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if any(isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 0 for t in inputs):
        raise ValueError("example_inputs hold an empty batch (dim 0 is 0): the cost of a training step needs "
                         "at least one sample")
    site = site_densities(model, densities, batches, loss_fn)
    specs = propagate(graph, inputs)
    ir = _Builder(graph, specs, site).run()
    first = next((s for n, s in specs.items() if n.op == "placeholder" and isinstance(s, TensorSpec)), None)
    ir.graph.update(
        algorithm=config.name, sites=",".join(sorted(config.active_sites)), sparsity=config.sparsity,
        granularity=config.granularity, period=config.period, densities=densities,
        batch_size=first.shape[0] if first is not None and first.shape else 1,
    )
    return ir
