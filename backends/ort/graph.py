"""A small networkx view of an ONNX graph: who produces and who consumes each tensor.

The ONNX passes rewire node inputs and append nodes; ONNX requires the node list in topological
order, so `sort_topologically` restores it afterwards (stable: untouched nodes keep their order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphView:
    """Producers and consumers of the tensors of `graph` (a snapshot: rebuild it after edits)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = {node.name: node for node in graph.node}
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self.producers.get(tensor)

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor, else None: an initializer, a `Constant` node's output, or an
        `Unsqueeze`/`Concat` of constants (how torch.onnx exports the static bounds of a slice)."""
        for init in self.graph.initializer:
            if init.name == tensor:
                return numpy_helper.to_array(init)
        node = self.producer(tensor)
        if node is None:
            return None
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        inputs = [self.constant(name) for name in node.input]
        if any(value is None for value in inputs):
            return None
        if node.op_type == "Unsqueeze":
            return np.expand_dims(inputs[0], tuple(int(axis) for axis in inputs[1]))
        if node.op_type == "Concat":
            return np.concatenate(inputs, axis=attribute(node, "axis", 0))
        return None

    def node(self, name: str) -> onnx.NodeProto:
        if name not in self.nodes:
            raise KeyError(f"the ONNX graph has no node named {name!r}")
        return self.nodes[name]

    def digraph(self) -> nx.DiGraph:
        """Node indices as vertices, an edge from each producer to each consumer of its outputs."""
        index = {id(node): i for i, node in enumerate(self.graph.node)}
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.graph.node)))
        for i, node in enumerate(self.graph.node):
            for name in node.input:
                source = self.producers.get(name)
                if source is not None:
                    g.add_edge(index[id(source)], i)
        return g


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of one attribute of an ONNX node, or `default` where the node does not set it."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` in place into a topological order that keeps the existing order where it can."""
    order = list(nx.lexicographical_topological_sort(GraphView(graph).digraph()))
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def replace_inputs(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> int:
    """Make `nodes` read `new` where they read `old`; return how many inputs changed."""
    count = 0
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
                count += 1
    return count


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` to `new` wherever it is produced, read or listed as a graph output."""
    if any(new in (*node.input, *node.output) for node in graph.node):
        raise ValueError(f"the graph already has a tensor named {new!r}")
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
    for output in graph.output:
        if output.name == old:
            output.name = new


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's element type (numpy) and shape (an int per static dim, None per dynamic one)."""

    dtype: np.dtype
    shape: tuple[int | None, ...]


def tensor_infos(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Type and shape of every tensor of `model` that ONNX shape inference can tell."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    infos = {
        init.name: TensorInfo(helper.tensor_dtype_to_np_dtype(init.data_type), tuple(int(d) for d in init.dims))
        for init in graph.initializer
    }
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape") and tensor_type.elem_type:
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
            infos[value.name] = TensorInfo(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type), shape)
    return infos
