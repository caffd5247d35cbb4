"""`NodeBuilder`: appends ONNX nodes with readable, collision-free names under one prefix.

Every node a pass inserts for a layer is named `/swat/<layer>/<site>/<Op>_<i>`, so the sparsification
sites are as visible in the ONNX graph (e.g. in Netron) as they are in `gm.code`. Constants are
`Constant` nodes, not initializers: ORT's training API treats initializers as model state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


class NodeBuilder:
    """Collects the nodes of one inserted subgraph; `emit` appends them to a graph."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}/{what}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs: Any) -> list[str]:
        """Add one node with `outputs` outputs (a count, or their names); return their names."""
        name = self._name(op_type)
        names = [f"{name}_output_{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, **attrs))
        return names

    def one(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        """Add a single-output node; return its output."""
        return self.op(op_type, inputs, 1, **attrs)[0]

    def const(self, value: Any, dtype: type = np.int64) -> str:
        """A `Constant` node holding `value` as a numpy array of `dtype`."""
        name = self._name("Constant")
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name=f"{name}_value")
        self.nodes.append(helper.make_node("Constant", [], [f"{name}_output_0"], name=name, value=tensor))
        return f"{name}_output_0"

    def emit(self, graph: onnx.GraphProto) -> None:
        """Append the collected nodes to `graph` (the caller sorts it topologically afterwards)."""
        graph.node.extend(self.nodes)
        self.nodes = []
