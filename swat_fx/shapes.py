"""Shape propagation: the shape and element size of every tensor of one forward pass of a graph.

Runs the graph once in eval mode under `torch.no_grad()` (no Top-K threshold, step counter or BN
statistic changes; every module's mode is restored after), like `torch.fx.passes.shape_prop.ShapeProp`,
but the shapes are returned instead of written into the graph, and a failure names the node and the
shapes it was given, so a wrong or missing example input is easy to find. `layers()` and the accel
backend both use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx


class ShapePropagationError(ValueError):
    """The example inputs cannot be run through the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    itemsize: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Spec = TensorSpec | tuple["Spec", ...] | None


def _spec(value: Any) -> Spec:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.element_size())
    if isinstance(value, (tuple, list)):
        return tuple(_spec(v) for v in value)
    return None


def describe_spec(spec: Spec) -> str:
    if isinstance(spec, TensorSpec):
        return "[" + ", ".join(map(str, spec.shape)) + "]"
    if isinstance(spec, tuple):
        return "(" + ", ".join(describe_spec(s) for s in spec) + ")"
    return "non-tensor"


class _Propagate(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.specs: dict[fx.Node, Spec] = {}

    def run_node(self, node: fx.Node) -> Any:
        try:
            result = super().run_node(node)
        except Exception as error:
            raise ShapePropagationError(
                f"shape propagation failed at node {node.name!r} ({node.format_node()}) with input shapes "
                f"{self._input_shapes(node)}: {type(error).__name__}: {error}"
            ) from error
        self.specs[node] = _spec(result)
        return result

    def _input_shapes(self, node: fx.Node) -> str:
        shapes = [f"{n.name}: {describe_spec(self.specs.get(n))}" for n in node.all_input_nodes]
        if node.op == "call_module":
            module = self.module.get_submodule(node.target)
            shapes += [f"{node.target}.{name}: {describe_spec(_spec(p))}"
                       for name, p in module.named_parameters(recurse=False)]
        return "{" + ", ".join(shapes) + "}"


def _check_arity(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = [n.name for n in placeholders if not n.args]
    if not len(required) <= len(example_inputs) <= len(placeholders):
        names = ", ".join(n.name for n in placeholders)
        count = len(required) if len(required) == len(placeholders) else f"{len(required)} to {len(placeholders)}"
        raise ShapePropagationError(
            f"the model's forward takes {count} input(s) ({names}), but {len(example_inputs)} example "
            "input(s) were given"
        )


def propagate(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> dict[fx.Node, Spec]:
    """The spec of every node's value for `example_inputs` (None for non-tensor values)."""
    _check_arity(gm, example_inputs)
    modes = {module: module.training for module in gm.modules()}
    interpreter = _Propagate(gm)
    try:
        with torch.no_grad():
            gm.eval()
            interpreter.run(*example_inputs)
    except ShapePropagationError as error:  # without the "While executing ..." that fx appends to it
        raise ShapePropagationError(error.message) from error.__cause__
    finally:
        for module, training in modes.items():
            module.training = training
    return interpreter.specs
