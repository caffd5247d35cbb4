"""Tracing a user's model into a `torch.fx.GraphModule` (symbolic tracing or `torch.export`), with errors
that say how to fix it."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import inspect
import os
import traceback
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
import torch.nn as nn

from swat_fx.checkpoint_regions import CHECKPOINT_META, RegionTracker, tagging_checkpoint_regions
from swat_fx.schedule import IterationClock, clocks
from swat_fx.trace_attention import attention, traceable_call
from swat_fx.trace_export import export_trace


class SwatTraceError(RuntimeError):
    """The model could not be traced (by torch.fx or torch.export); the message names the frame and the fix."""


@contextlib.contextmanager
def quiet_tree_spec_copies() -> Iterator[None]:
    """Copying or unpickling an exported graph rebuilds its pytree `LeafSpec`s, and torch 2.13's
    `LeafSpec` constructor warns (a deprecation meant for `isinstance` checks): nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        yield


def copy_graph(graph: fx.Graph) -> fx.Graph:
    """A deep copy of a graph (its node metadata included)."""
    with quiet_tree_spec_copies():
        return copy.deepcopy(graph)


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
        if torch.compiler.is_compiling():  # the sites keep their schedule on tensors (`TopK._traced_schedule`)
            return super().__call__(*args, **kwargs)
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
        state["_graph"] = _PicklableGraph(self._graph)
        state["meta"] = {k: _PicklableGraph(v) if isinstance(v, fx.Graph) else v for k, v in self.meta.items()}
        return _empty_swat_module, (), {**state, "_swat_class_name": type(self).__name__}

    def __deepcopy__(self, memo: dict[int, Any]) -> SwatGraphModule:
        with quiet_tree_spec_copies():
            clone = super().__deepcopy__(memo)
        for name, module in self.named_modules():  # GraphModule's copy registers every buffer as persistent
            if module._non_persistent_buffers_set:
                clone.get_submodule(name)._non_persistent_buffers_set |= module._non_persistent_buffers_set
        type(clone).__name__ = type(self).__name__  # GraphModule's copy would be named "GraphModule"
        if self._swat_clocks:
            clone.drive_clocks()
        return clone

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        type(self).__name__ = state.pop("_swat_class_name")
        with quiet_tree_spec_copies():
            super().__setstate__(state)
        self.recompile()


def _empty_swat_module() -> SwatGraphModule:
    return SwatGraphModule.__new__(SwatGraphModule)


@dataclasses.dataclass(frozen=True)
class _OpName:
    """An ATen op (`torch.ops` overloads do not pickle) by its qualified name, e.g. "aten::view.default"."""

    qualified: str

    def resolve(self) -> Any:
        namespace, name = self.qualified.split("::")
        packet, _, overload = name.partition(".")
        op = getattr(getattr(torch.ops, namespace), packet)
        return getattr(op, overload) if overload else op

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


def _aten_name(target: Any) -> Any:
    if isinstance(target, torch._ops.OpOverload):
        return _OpName(f"{target._schema.name}.{target._overloadname}")
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _OpName(target._qualified_op_name)
    return target


def _with_targets(graph: fx.Graph, convert: Any) -> fx.Graph:
    """A copy of `graph` with every node's target passed through `convert` (metadata copied along)."""
    copied = fx.Graph()
    copied.set_codegen(copy.copy(graph._codegen))  # the pytree in/out handling of an exported graph
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        env[node] = copied.create_node(node.op, convert(node.target), fx.map_arg(node.args, env.__getitem__),
                                       fx.map_arg(node.kwargs, env.__getitem__), node.name, node.type)
        env[node].meta = {k: v for k, v in node.meta.items() if k != "original_aten"}
    return copied


class _PicklableGraph:
    """Pickles an `fx.Graph` whose nodes call `torch.ops` overloads (an export-traced graph), which
    do not pickle: they travel by name."""

    def __init__(self, graph: fx.Graph) -> None:
        self.graph = graph

    def __reduce__(self) -> tuple[Any, ...]:
        return _resolved_graph, (_with_targets(self.graph, _aten_name),)


def _resolved_graph(graph: fx.Graph) -> fx.Graph:
    return _with_targets(graph, lambda target: target.resolve() if isinstance(target, _OpName) else target)


class SwatTracer(fx.Tracer):
    """A tracer whose leaves are the default ones plus the user's `leaf_modules` (types or names)."""

    def __init__(self, leaf_modules: tuple[type[nn.Module] | str, ...] = ()) -> None:
        super().__init__()
        self.leaf_types = tuple(leaf for leaf in leaf_modules if isinstance(leaf, type))
        self.leaf_names = {leaf for leaf in leaf_modules if isinstance(leaf, str)}
        self.current_module = ""
        self.regions = RegionTracker()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if self.regions.current is not None:
            node.meta[CHECKPOINT_META] = self.regions.current
        return node

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, self.leaf_types)
            or module_qualified_name in self.leaf_names
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        outer, self.current_module = self.current_module, self.path_of_module(m)
        traceable = (traceable_call(m, args, kwargs) if type(m) is nn.MultiheadAttention
                     and not self._user_leaf(m, self.current_module) else None)
        # entered, its projections become weight products
        result = attention(m, **traceable) if traceable is not None else super().call_module(m, forward, args, kwargs)
        self.current_module = outer
        return result

    def _user_leaf(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, self.leaf_types) or name in self.leaf_names


class Tracer(enum.Enum):
    """How `transform` turns a model into a graph."""

    FX = "fx"
    """`torch.fx` symbolic tracing: no inputs needed; module-level graph (`leaf_modules`, `concrete_args`)."""
    EXPORT = "export"
    """`torch.export` on example inputs: ATen-level graph, for models symbolic tracing cannot follow."""

    @classmethod
    def parse(cls, value: str | Tracer) -> Tracer:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"tracer must be one of {', '.join(repr(t.value) for t in cls)}, got {value!r}") from None


def _user_frame(error: BaseException, model: nn.Module) -> str:
    """'file:line in fn: `source`' of the innermost frame outside torch and swat_fx, where tracing broke
    (the model's forward and its signature when it broke before running any of the user's code)."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)]
    frames = [f for f in frames if os.path.basename(os.path.dirname(f.filename)) != "swat_fx"
              and not f.filename.startswith("<")]  # nor generated code
    if not frames:
        return f"{type(model).__name__}.forward{inspect.signature(model.forward)}"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"


_CAUSES = (
    (("co_varnames is too small", "*args", "**kwargs", "varargs"),
     "its forward takes *args/**kwargs, which symbolic tracing cannot bind to graph inputs"),
    (("slice indices must be integers", "finfo", "cannot be interpreted as an integer", "cannot be iterated",
      "object is not iterable", "'Proxy' object", "Proxy object"),
     "it uses a tensor's shape, dtype or length as a Python value, which symbolic tracing only has as a proxy"),
    (("control flow", "symbolically traced variables"),
     "a Python `if`/loop depends on a tensor or on a shape"),
)


def _cause(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    for needles, cause in _CAUSES:
        if any(needle in text for needle in needles):
            return cause
    return "a Python operation symbolic tracing cannot follow"


def _none_defaults(model: nn.Module, concrete_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """`concrete_args` plus None for each forward argument that defaults to None: symbolic tracing would
    otherwise take the `if arg is not None` branch, and the graph would fail when called without it."""
    if hasattr(model.forward, "__wrapped__"):
        return dict(concrete_args or {})  # a decorated forward: its code's arguments are not its signature's
    defaults = {
        name: None for name, parameter in inspect.signature(model.forward).parameters.items()
        if parameter.default is None and parameter.kind is not inspect.Parameter.KEYWORD_ONLY
    }
    return {**defaults, **(concrete_args or {})}


def symbolic_trace(
    model: nn.Module,
    leaf_modules: tuple[type[nn.Module] | str, ...] = (),
    concrete_args: Mapping[str, Any] | None = None,
) -> SwatGraphModule:
    """Trace a deep copy of `model` with `torch.fx` (the caller's model is never modified). A `GraphModule`
    is taken as it is, unless `leaf_modules` or `concrete_args` ask for it to be traced again with them."""
    if isinstance(model, fx.GraphModule) and not leaf_modules and not concrete_args:
        with quiet_tree_spec_copies():
            graph_module = copy.deepcopy(model)  # already a graph, with the tracing choices of whoever traced it
        return SwatGraphModule(graph_module, graph_module.graph, type(model).__name__)
    root = copy.deepcopy(model)
    tracer = SwatTracer(leaf_modules)
    try:
        with tagging_checkpoint_regions(annotate_nodes=False) as tracer.regions:
            graph = tracer.trace(root, concrete_args=_none_defaults(root, concrete_args) or None)
    except Exception as error:
        where = f"module '{tracer.current_module}'" if tracer.current_module else "the top-level forward"
        raise SwatTraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(error).__name__}: {error}\n"
            f"Tracing failed in {where}, at {_user_frame(error, model)}: {_cause(error)}.\n"
            "Pass example inputs to trace it with torch.export instead, which runs the model and follows "
            "all of these: swat_fx.transform(model, sparsity, example_inputs=(x,), example_kwargs={...}). "
            "(With symbolic tracing, concrete_args={'arg_name': value} fixes a value that decides a branch; "
            "leaf_modules=(TheModuleClass,) calls a module as a black box, and its layers stay dense.)"
        ) from error
    return _keep_every_parameter_and_buffer(
        model, _keep_buffer_persistence(model, SwatGraphModule(tracer.root, graph, type(model).__name__)))


def export(
    model: nn.Module,
    example_inputs: Any,
    example_kwargs: Mapping[str, Any] | None = None,
    dynamic_shapes: Any = None,
) -> SwatGraphModule:
    """Trace a deep copy of `model` with `torch.export` on the example inputs (see `trace_export`); a
    list of example inputs is taken as the positional arguments, like a tuple."""
    if not hasattr(fx_traceback, "annotate"):
        raise RuntimeError(f"the export tracer needs torch.fx.traceback.annotate, which torch {torch.__version__} "
                           "lacks: upgrade torch (2.10 or later), or trace symbolically without example_inputs")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        gm = export_trace(model, args, example_kwargs or {}, dynamic_shapes)
    except Exception as error:
        raise SwatTraceError(
            f"torch.export could not trace {type(model).__name__} on the example inputs: "
            f"{type(error).__name__}: {error}\n"
            f"Tracing failed at {_user_frame(error, model)}.\n"
            "Check that the model runs on example_inputs / example_kwargs as given (model(*example_inputs, "
            "**example_kwargs)); for a dimension the model needs fixed, pass dynamic_shapes (see torch.export)."
        ) from error
    return _keep_every_parameter_and_buffer(
        model, _keep_buffer_persistence(model, SwatGraphModule(gm, gm.graph, type(model).__name__)))


def _owner(gm: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds `name` (created empty along the way) and the attribute's own name."""
    owner = gm
    *path, leaf = name.split(".")
    for part in path:
        if not isinstance(getattr(owner, part, None), nn.Module):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    return owner, leaf


def _keep_every_parameter_and_buffer(model: nn.Module, gm: SwatGraphModule) -> SwatGraphModule:
    """Both tracers keep only the parameters and buffers some op reads, and torch.export one name of a
    parameter the model ties under several (GPT-2's `lm_head.weight` is `transformer.wte.weight`). The
    others come back (the unread ones as copies, the tied names as aliases), so `state_dict()` has the
    original keys and the model's checkpoints load strict."""
    present = dict(gm.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append((name, param))
    for names in names_of.values():
        kept = next((present[name] for name, _ in names if name in present), None)
        if kept is None:
            original = names[0][1]
            kept = nn.Parameter(original.detach().clone(), requires_grad=original.requires_grad)
        for name, _ in names:
            if name not in present:
                owner, leaf = _owner(gm, name)
                owner.register_parameter(leaf, kept)
    buffers = dict(gm.named_buffers(remove_duplicate=False))
    for module_name, module in model.named_modules():
        for leaf, buffer in module.named_buffers(recurse=False):
            name = f"{module_name}.{leaf}" if module_name else leaf
            if name not in buffers and buffer is not None:
                owner, _ = _owner(gm, name)
                owner.register_buffer(leaf, buffer.detach().clone(),
                                      persistent=leaf not in module._non_persistent_buffers_set)
    return gm


def _keep_buffer_persistence(model: nn.Module, gm: SwatGraphModule) -> SwatGraphModule:
    """A graph module registers the buffers it reads as persistent; those the model keeps out of its
    `state_dict` (e.g. BERT's `position_ids`) stay out, so the model's checkpoints load strict."""
    for module_name, module in model.named_modules():
        for buffer in module._non_persistent_buffers_set:
            name = f"{module_name}.{buffer}" if module_name else buffer
            owner_name, _, leaf = name.rpartition(".")
            try:
                owner = gm.get_submodule(owner_name)
            except AttributeError:
                continue
            if leaf in owner._buffers:
                owner._non_persistent_buffers_set.add(leaf)
    return gm


def trace(
    model: nn.Module,
    tracer: str | Tracer | None = None,
    *,
    leaf_modules: tuple[type[nn.Module] | str, ...] = (),
    concrete_args: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    example_kwargs: Mapping[str, Any] | None = None,
    dynamic_shapes: Any = None,
) -> SwatGraphModule:
    """The graph of `model`: with `torch.export` when example inputs are given (or `tracer="export"`),
    with symbolic tracing otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"swat_fx.transform expects a torch.nn.Module, got {type(model).__name__}")
    has_inputs = example_inputs is not None or bool(example_kwargs)
    chosen = Tracer.parse(tracer) if tracer is not None else (Tracer.EXPORT if has_inputs else Tracer.FX)
    if chosen is Tracer.FX:
        if has_inputs or dynamic_shapes is not None:
            raise ValueError("example_inputs, example_kwargs and dynamic_shapes are for tracer='export'; "
                             "symbolic tracing (tracer='fx') takes no inputs: drop them or use tracer='export'")
        return symbolic_trace(model, leaf_modules, concrete_args)
    if not has_inputs:
        raise ValueError("tracer='export' runs the model on example inputs: pass example_inputs=(x, ...) "
                         "and/or example_kwargs={...}, as you would call model(*example_inputs, **example_kwargs)")
    if leaf_modules or concrete_args:
        raise ValueError("leaf_modules and concrete_args are options of symbolic tracing (tracer='fx'); "
                         "torch.export follows every module and value: drop them")
    return export(model, () if example_inputs is None else example_inputs, example_kwargs, dynamic_shapes)
