"""Tracing a user's model into a `torch.fx.GraphModule`, with errors that say how to fix it."""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from swat_fx.schedule import IterationClock, clocks


class SwatTraceError(RuntimeError):
    """The model could not be traced symbolically by torch.fx."""


class SwatGraphModule(fx.GraphModule):
    """The module `transform` returns: a `GraphModule` that pickles its graph as it is.

    A plain `GraphModule` pickles its code and traces it again when loaded, which would lose the node
    metadata SWAT keeps (the op records, the eager lowering's choices) and cannot trace through the
    SWAT kernels; this one keeps everything, so `torch.save(model)`, `pickle` and multiprocessing spawn
    give back the same model.
    """

    _swat_clocks: tuple[IterationClock, ...] = ()
    """The clocks of the sites this module's calls drive (see `swat_fx.schedule`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for clock in self._swat_clocks:
            clock.before_forward()
        output = super().__call__(*args, **kwargs)
        for clock in self._swat_clocks:
            clock.after_forward(output)
        return output

    def drive_clocks(self) -> None:
        """Let this module's calls mark the training iterations of the Top-K sites it holds."""
        self._swat_clocks = tuple(clocks(self))

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k != "_wrapped_call"}  # rebuilt by recompile()
        return _empty_swat_module, (), {**state, "_swat_class_name": type(self).__name__}

    def __deepcopy__(self, memo: dict[int, Any]) -> SwatGraphModule:
        clone = super().__deepcopy__(memo)
        type(clone).__name__ = type(self).__name__  # GraphModule's copy would be named "GraphModule"
        if self._swat_clocks:
            clone.drive_clocks()
        return clone

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        type(self).__name__ = state.pop("_swat_class_name")
        super().__setstate__(state)
        self.recompile()


def _empty_swat_module() -> SwatGraphModule:
    return SwatGraphModule.__new__(SwatGraphModule)


class SwatTracer(fx.Tracer):
    """A tracer whose leaves are the default ones plus the user's `leaf_modules` (types or names)."""

    def __init__(self, leaf_modules: tuple[type[nn.Module] | str, ...] = ()) -> None:
        super().__init__()
        self.leaf_types = tuple(leaf for leaf in leaf_modules if isinstance(leaf, type))
        self.leaf_names = {leaf for leaf in leaf_modules if isinstance(leaf, str)}
        self.current_module = ""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, self.leaf_types)
            or module_qualified_name in self.leaf_names
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        outer, self.current_module = self.current_module, self.path_of_module(m)
        result = super().call_module(m, forward, args, kwargs)
        self.current_module = outer
        return result


def _user_frame(error: BaseException) -> str:
    """'file:line in fn: `source`' of the innermost frame outside torch, where tracing broke."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)]
    frames = [f for f in frames if os.path.basename(os.path.dirname(f.filename)) != "swat_fx"] or frames
    if not frames:
        return "an unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"


def trace(
    model: nn.Module,
    leaf_modules: tuple[type[nn.Module] | str, ...] = (),
    concrete_args: Mapping[str, Any] | None = None,
) -> SwatGraphModule:
    """Trace a deep copy of `model` (the caller's model is never modified). A `GraphModule` is taken as
    it is, unless `leaf_modules` or `concrete_args` ask for it to be traced again with them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"swat_fx.transform expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule) and not leaf_modules and not concrete_args:
        graph_module = copy.deepcopy(model)  # already a graph, with the tracing choices of whoever traced it
        return SwatGraphModule(graph_module, graph_module.graph, type(model).__name__)
    root = copy.deepcopy(model)
    tracer = SwatTracer(leaf_modules)
    try:
        graph = tracer.trace(root, concrete_args=dict(concrete_args) if concrete_args else None)
    except Exception as error:
        where = f"module '{tracer.current_module}'" if tracer.current_module else "the top-level forward"
        raise SwatTraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(error).__name__}: {error}\n"
            f"Tracing failed in {where}, at {_user_frame(error)}.\n"
            "Data-dependent control flow (an `if`/loop on tensor values) cannot be traced. Either mark "
            "that module as a leaf so it is called as a black box (its layers stay dense): "
            "swat_fx.transform(model, leaf_modules=(TheModuleClass,)) or leaf_modules=('qualified.name',); "
            "or fix the value that decides the branch with concrete_args={'arg_name': value}."
        ) from error
    return SwatGraphModule(tracer.root, graph, type(model).__name__)
