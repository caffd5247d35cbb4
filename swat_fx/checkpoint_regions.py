"""Keeping `torch.utils.checkpoint` regions through tracing.

Both tracers run a checkpointed function inline, so the traced graph would hold every activation the
user's checkpoint was there to drop. While a model is traced, `tagging_checkpoint_regions` makes each
checkpoint call mark the nodes traced inside it with a `CheckpointRegion` (in `node.meta`); the
passes copy the mark onto the nodes they add for an op, and the eager lowering outlines every region
back into a non-reentrant `torch.utils.checkpoint.checkpoint` call.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch.fx as fx
import torch.fx.traceback as fx_traceback
import torch.utils.checkpoint as torch_checkpoint

CHECKPOINT_META = "swat_checkpoint"
"""`node.meta` key of the `CheckpointRegion` a node belongs to (absent: not checkpointed)."""


@dataclass(frozen=True)
class CheckpointRegion:
    """One `torch.utils.checkpoint` call of the traced model (nested calls belong to the outermost)."""

    index: int
    preserve_rng_state: bool = True


def region_of(node: fx.Node) -> CheckpointRegion | None:
    region = node.meta.get(CHECKPOINT_META)
    return region if isinstance(region, CheckpointRegion) else None


def copy_region(source: fx.Node, *targets: fx.Node) -> None:
    """Put `targets` (nodes a pass added for `source`) in the checkpoint region of `source`."""
    region = region_of(source)
    if region is not None:
        for target in targets:
            target.meta[CHECKPOINT_META] = region


class RegionTracker:
    """The checkpoint region being traced (`current`), for a tracer that marks its nodes itself."""

    def __init__(self) -> None:
        self.current: CheckpointRegion | None = None


@contextlib.contextmanager
def tagging_checkpoint_regions(annotate_nodes: bool) -> Iterator[RegionTracker]:
    """While tracing: run checkpointed functions inline, and track the region they belong to.

    Both of `torch.utils.checkpoint.checkpoint`'s paths are intercepted where they call into the
    module (whatever name the user imported it under): the reentrant `CheckpointFunction.apply` and
    the non-reentrant generator that brackets the function call. With `annotate_nodes` (torch.export),
    the region goes into the custom metadata of every node traced inside it (`collect_regions` moves it
    to `CHECKPOINT_META`); otherwise the tracer reads `RegionTracker.current` as it creates nodes.
    """
    counter = itertools.count()
    tracker = RegionTracker()

    @contextlib.contextmanager
    def region(preserve_rng_state: bool) -> Iterator[None]:
        if tracker.current is not None:  # a nested checkpoint is recomputed with its outer region
            yield
            return
        tracker.current = CheckpointRegion(next(counter), bool(preserve_rng_state))
        try:
            with fx_traceback.annotate({CHECKPOINT_META: tracker.current}) if annotate_nodes else nullcontext():
                yield
        finally:
            tracker.current = None

    def without_reentrant(function: Any, preserve_rng_state: bool, *args: Any, **kwargs: Any) -> Iterator[None]:
        with region(preserve_rng_state):
            yield

    class Reentrant:
        @staticmethod
        def apply(function: Any, preserve_rng_state: bool, *args: Any) -> Any:
            with region(preserve_rng_state):
                return function(*args)

    with (
        mock.patch.object(torch_checkpoint, "_checkpoint_without_reentrant_generator", without_reentrant),
        mock.patch.object(torch_checkpoint, "CheckpointFunction", Reentrant),
        fx_traceback.preserve_node_meta() if annotate_nodes else nullcontext(),
    ):
        yield tracker


def collect_regions(graph: fx.Graph) -> None:
    """Move the marks `tagging_checkpoint_regions` left in the nodes' custom metadata to `CHECKPOINT_META`."""
    for node in graph.nodes:
        custom = node.meta.get("custom")
        if isinstance(custom, dict) and CHECKPOINT_META in custom:
            node.meta[CHECKPOINT_META] = custom.pop(CHECKPOINT_META)
            if not custom:
                del node.meta["custom"]
