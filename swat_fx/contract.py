"""The contract between the passes and the backends: what a SWAT graph is, and how to read one.

The neutral passes (`swat_fx.passes`) write it; every backend, `layers()`, the monitor and the state
helpers read it through the names defined here and nowhere else:

- `WeightProduct`: the immutable record of one weight product (conv/linear with a parameter weight),
  kept in `node.meta[OP_META]` of its node; a pass that changes it stores a new record.
- State naming: a layer's Top-K sites are modules `swat.<layer>.<w|x|g>_topk` (`site_target`), so
  their state is in `state_dict()` under the same names.
- The transformed model: an `fx.GraphModule` with its `SwatConfig` in `meta[CONFIG_META]` and its
  backend-neutral SWAT graph in `meta[SWAT_GRAPH_META]` (`swat_graph` rebuilds it as a module that
  shares the model's parameters, buffers and sites).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
import torch.nn as nn

from swat_fx.config import SwatConfig
from swat_fx.topk import TopK
from swat_fx.trace import SwatGraphModule, copy_graph

OP_META = "swat"
"""`node.meta` key of the `WeightProduct` record of a weight-product node."""
DENSE_META = "swat_dense"
"""`node.meta` key of the `DenseProduct` record of a product with a parameter that SWAT cannot sparsify."""
CONFIG_META = "swat_config"
"""`GraphModule.meta` key of the `SwatConfig` a model was transformed with."""
SWAT_GRAPH_META = "swat_graph"
"""`GraphModule.meta` key of the backend-neutral SWAT graph (an `fx.Graph`) a model was lowered from."""
LOWERING_META = "swat_lowering"
"""`node.meta` key where a backend's lowering notes what it chose for an op (`Lowering`)."""
STATE_ROOT = "swat"
"""The submodule that holds every Top-K site, mirroring the layers' qualified names."""
REGIONS_ROOT = "swat_checkpoints"
"""The submodule that holds the sub-graphs of a lowered model's `torch.utils.checkpoint` regions."""


class Slot(enum.Enum):
    """Which operand of a weight product a Top-K site sparsifies; its value is the site's name prefix."""

    WEIGHT = "w"
    INPUT = "x"
    GRAD = "g"

    @property
    def role(self) -> str:
        """The `TopK.role` of a site in this slot."""
        return {"w": "weight", "x": "input", "g": "grad"}[self.value]


@dataclass(frozen=True)
class ConvArgs:
    """stride/padding/dilation/groups of a convolution (padding may be a string: "same", "valid")."""

    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int

    def as_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DenseReason(enum.Enum):
    """Why a conv/linear-like product with a parameter operand stays dense; the value reads as a reason."""

    FIRST_LAYER = "first layer (sparsify_first=False)"
    LAST_LAYER = "last layer (sparsify_last=False)"
    OVERRIDE = "layer_sparsity sets it to 0"
    ERK_DENSE = "ERK gives it density 1"
    ZERO_SPARSITY = "sparsity is 0"
    NO_SITES = "no site is active (algorithm='dense' or sites=())"
    LEAF_MODULE = "inside a leaf module the tracer does not enter"
    UNSUPPORTED_OP = "an op SWAT does not sparsify"
    OPAQUE_FUNCTION = "inside a function the tracer does not enter"


@dataclass(frozen=True)
class DenseProduct:
    """A product of an activation with a parameter that SWAT leaves dense: `name` is the parameter's
    (or the leaf module's) qualified name, `op` what the graph calls, `detail` what to do about it."""

    name: str
    op: str
    weight_shape: tuple[int, ...]
    reason: DenseReason
    detail: str = ""


@dataclass(frozen=True)
class WeightProduct:
    """One call site of a conv or linear whose weight is a parameter, and the SWAT plan for it.

    `name` is the layer's qualified name (`name@1`, `name@2`... for further call sites of one weight);
    `weight` the parameter's qualified name and `weight_shape` the shape the op uses: [out, in] for a
    linear, even when it is stored [in, out] (`transpose_weight`), and [..., out, in] for a batched
    weight (`bmm`, a batched `einsum`: a product per leading index). `weight_slice` = (dim, start,
    stop) when the op reads a slice of the parameter (the q/k/v rows of a packed projection);
    `weight_left` for `W @ x`, a linear on x with its last two dims swapped (so is its output); `bias`
    the bias parameter's name (None without a bias, or for a bias computed in the graph: `has_bias`).
    `sparsity` (None until budgeted), `sites`, `granularity` and `period` are set by `assign_budgets`;
    a product with sparsity 0 or no site stays dense, and `dense_reason` says which rule made it so.
    """

    name: str
    kind: str
    weight: str
    weight_shape: tuple[int, ...]
    has_bias: bool = False
    bias: str | None = None
    transpose_weight: bool = False
    weight_slice: tuple[int, int, int] | None = None
    weight_left: bool = False
    pad_mode: tuple[str, tuple[int, ...]] | None = None
    conv: ConvArgs | None = None
    sparsity: float | None = None
    sites: frozenset[str] = frozenset()
    granularity: str = "nchw"
    period: int = 1
    dense_reason: DenseReason | None = None

    @property
    def layer(self) -> str:
        """"conv" or "linear": the layer family whose mask layout applies."""
        return "linear" if self.kind == "linear" else "conv"

    @property
    def sparsified(self) -> bool:
        return bool(self.sites) and bool(self.sparsity)

    def replace(self, **changes: Any) -> WeightProduct:
        return dataclasses.replace(self, **changes)

    def sliced_shape(self, parameter_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the part of the parameter the op reads, as stored."""
        shape = list(parameter_shape)
        if self.weight_slice is not None:
            dim, start, stop = self.weight_slice
            shape[dim] = stop - start
        return tuple(shape)

    def used_shape(self, parameter_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the op uses, from the parameter's stored shape (sliced, then transposed)."""
        shape = list(self.sliced_shape(parameter_shape))
        if self.transpose_weight:
            shape[-2:] = shape[:-3:-1]
        return tuple(shape)


@dataclass(frozen=True)
class Lowering:
    """What a backend's lowering chose for one op (a kind of that backend, e.g. the eager `Kernel`), and
    why when it is not what the user asked for."""

    choice: enum.Enum
    reason: str | None = None


def record_of(node: fx.Node) -> WeightProduct | None:
    record = node.meta.get(OP_META)
    return record if isinstance(record, WeightProduct) else None


def dense_product_of(node: fx.Node) -> DenseProduct | None:
    record = node.meta.get(DENSE_META)
    return record if isinstance(record, DenseProduct) else None


def checkpoint_regions(gm: fx.GraphModule) -> list[fx.GraphModule]:
    """The sub-graph modules of a lowered model's checkpoint regions."""
    regions = getattr(gm, REGIONS_ROOT, None)
    return list(regions.children()) if isinstance(regions, nn.Module) else []


def _all_nodes(gm: fx.GraphModule) -> Iterator[fx.Node]:
    """The nodes of `gm`'s graph, then those of its checkpoint regions' sub-graphs (a lowered model)."""
    yield from gm.graph.nodes
    for region in checkpoint_regions(gm):
        yield from region.graph.nodes


def dense_product_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that carry a `DenseProduct` (products SWAT cannot sparsify)."""
    return [node for node in _all_nodes(gm) if dense_product_of(node) is not None]


def weight_product_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that carry a `WeightProduct`, in topological order (a lowered model's checkpoint
    regions last)."""
    return [node for node in _all_nodes(gm) if record_of(node) is not None]


def site_target(layer: str, slot: Slot) -> str:
    """The qualified name of the Top-K site of `layer` in `slot`: `swat.<layer>.<w|x|g>_topk`."""
    return f"{STATE_ROOT}.{layer}.{slot.value}_topk"


def layer_of_site(target: str) -> str:
    """The layer name of a site's qualified name (the inverse of `site_target`)."""
    return target.removeprefix(STATE_ROOT + ".").rsplit(".", 1)[0]


def is_state_key(key: str) -> bool:
    """A `state_dict()` key that belongs to SWAT (not to the original model)."""
    return key.startswith(STATE_ROOT + ".")


def site_of(gm: fx.GraphModule, node: Any) -> TopK | None:
    """The Top-K site module `node` calls, or None when it is no site."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    return module if isinstance(module, TopK) else None


def site_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The `call_module` nodes of Top-K sites, in topological order."""
    return [node for node in gm.graph.nodes if site_of(gm, node) is not None]


def site_modules(model: nn.Module) -> Iterator[tuple[str, TopK]]:
    """(qualified name, site) for every Top-K site, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, TopK):
            yield name, module


def sites(model: nn.Module) -> Iterator[tuple[str, TopK]]:
    """(layer name, site) for every Top-K site of a transformed model, once each, in module order."""
    for name, site in site_modules(model):
        yield layer_of_site(name), site


def config_of(model: nn.Module) -> SwatConfig | None:
    """The `SwatConfig` a model was transformed with, or None for any other module.

    It lives in `GraphModule.meta`, which survives `copy.deepcopy` (plain attributes do not).
    """
    meta = getattr(model, "meta", None)
    config = meta.get(CONFIG_META) if isinstance(meta, dict) else None
    return config if isinstance(config, SwatConfig) else None


def is_transformed(model: nn.Module) -> bool:
    """Whether `model` is the result of `swat_fx.transform` (its config and neutral graph are in `meta`)."""
    return isinstance(model, fx.GraphModule) and config_of(model) is not None and SWAT_GRAPH_META in model.meta


def require_transformed(model: nn.Module, caller: str) -> SwatConfig:
    """The model's `SwatConfig`; a TypeError naming `caller` for a model `transform` did not return."""
    config = config_of(model)
    if not is_transformed(model) or config is None:
        raise TypeError(
            f"{caller} expects a model returned by swat_fx.transform, got {type(model).__name__}; "
            "transform it first: swat_fx.transform(model, sparsity=...)"
        )
    return config


def swat_graph(model: fx.GraphModule, caller: str = "swat_fx.swat_graph") -> fx.GraphModule:
    """The backend-neutral SWAT graph of a transformed model, as a module that shares the model's
    parameters, buffers and Top-K sites (no backend's storage formats or kernels in it)."""
    require_transformed(model, caller)
    graph = copy_graph(model.meta[SWAT_GRAPH_META])
    view = SwatGraphModule(model, graph, f"{type(model).__name__}SwatGraph")
    view.training = model.training
    view.meta = {CONFIG_META: model.meta[CONFIG_META], SWAT_GRAPH_META: model.meta[SWAT_GRAPH_META]}
    view.drive_clocks()  # its calls are training iterations of the same sites
    return view
