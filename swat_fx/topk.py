"""`TopK`: one sparsification site of one layer, as a module that owns its periodic-Top-K state.

Each site is a `call_module` node in the transformed graph, so `gm.code` shows where SWAT sparsifies,
and its state (step counter, stored threshold, achieved density) is in `state_dict()` as buffers.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn as nn

from swat_fx import selection
from swat_fx.masks import (
    MaskLayout,
    apply_mask,
    apply_threshold,
    group_thresholds,
    keep_mask,
    mask_layout,
    scores,
)
from swat_fx.schedule import IterationClock


def average_over_ranks(threshold: torch.Tensor, enabled: bool) -> torch.Tensor:
    """A stored activation/gradient threshold averaged over the ranks of the default process group, so
    every rank reuses the threshold of the global batch (one small all-reduce per refresh)."""
    if not (enabled and torch.distributed.is_available() and torch.distributed.is_initialized()):
        return threshold
    world = torch.distributed.get_world_size()
    if world == 1:
        return threshold
    torch.distributed.all_reduce(threshold)
    return threshold / world


class StorageFormat(Protocol):
    """How a backend wants a site's output: `encode` builds it from the tensor and the site's mask.

    The neutral graph has none (the site returns the zero-filled tensor); a backend's lowering sets
    one as the site's `format` keyword: a member of an `enum.Enum` of the backend's formats, so the
    generated code names it (`format = Format.COMPRESSED`).
    """

    uses_mask: bool
    """False for a format built from the threshold alone: for an unstructured layout `encode` then gets
    `keep=None`, and a `record` to give the density kept to when it is counted (a structured one gets its
    kept units, small)."""

    def encode(self, t: torch.Tensor, keep: torch.Tensor | None, threshold: torch.Tensor, layout: MaskLayout,
               unit_dim: int, record: Callable[[torch.Tensor], Any] | None = None) -> Any: ...


class TopK(nn.Module):
    """Keeps the largest-magnitude entries of a tensor; the threshold is exact every `period` steps.

    `role` is "weight", "input" or "grad"; `layer` is "conv" or "linear". Modes:
    - `differentiable=False`: the output is a constant (the layer's kernel takes it as W_s or X_s and
      still returns the gradient of the dense tensor);
    - `differentiable=True` (site `fw_a`): autograd masks the gradient with the same mask;
    - `role="grad"` (site `bw_g`): identity in the forward; a hook keeps the Top-K of the gradient.
    `backward_only` sites do nothing when no backward can follow (eval mode under `torch.no_grad()`).
    """

    def __init__(
        self,
        sparsity: float,
        granularity: str,
        role: str,
        layer: str,
        period: int = 1,
        differentiable: bool = False,
        backward_only: bool = False,
        clock: IterationClock | None = None,
        sync_thresholds: bool = True,
    ) -> None:
        super().__init__()
        self.clock = clock if clock is not None else IterationClock()
        self.sync_thresholds = sync_thresholds
        self._generation = 0  # the clock's iteration this site last advanced in
        self._refresh = False  # whether that iteration computes the exact Top-K
        self.wrote_state = False  # whether the last call was its iteration's first (the one that writes state)
        self.sparsity = sparsity
        self.granularity = granularity
        self.role = role
        self.layer = layer
        self.period = period
        self.differentiable = differentiable
        self.backward_only = backward_only
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._steps = 0  # `step` on the host: the refresh decision never reads the device
        self._steps_stale = False  # compiled steps advanced `step` alone: read it once, back in eager mode
        self.register_buffer("threshold", torch.empty(0))
        self.register_buffer("density", torch.ones(()))
        self._bracket = selection.Bracket()  # where the last thresholds lay: a hint for the next selection

    @property
    def target_density(self) -> float:
        return 1.0 - self.sparsity

    def extra_repr(self) -> str:
        mode = "differentiable" if self.differentiable else ("backward-only" if self.backward_only else "")
        return (
            f"{self.role} of {self.layer}, sparsity={self.sparsity:g}, granularity={self.granularity}, "
            f"period={self.period}" + (f", {mode}" if mode else "")
        )

    def forward(self, t: torch.Tensor, format: StorageFormat | None = None) -> Any:
        """The sparsified tensor: zero-filled, or as `format.encode` builds it (a backend's storage
        format, chosen by its lowering)."""
        if format is not None and not (isinstance(format, enum.Enum) and callable(getattr(format, "encode", None))):
            raise TypeError(f"TopK format must be a StorageFormat (an enum member with `encode`) or None, "
                            f"got {format!r}")
        if t.numel() == 0:  # an empty batch: nothing to rank, nothing to learn from, as in dense PyTorch
            return t
        refresh, store = self._schedule(t)
        self.wrote_state = store
        if self.role == "grad":
            if t.requires_grad:  # a hook, not a Function: an in-place op (ReLU) may follow
                t.register_hook(functools.partial(self._sparsify_grad, refresh=refresh, store=store))
            return t
        if self.backward_only and not self.training and not torch.is_grad_enabled():
            return None
        layout = self.layout(t)
        tau, s = self._threshold(t, layout, refresh, store)
        if format is None and not layout.score_dims and tau.numel() == 1:
            if not self.differentiable and selection.compiled_for(t):  # compare, zero and count: one pass
                out, kept = selection.threshold_and_count(t, tau)
                if store:
                    self.density.copy_(kept / out.numel())
                return out
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                out = apply_threshold(t, tau)
            if store:  # with tau > 0 the kept entries are exactly the non-zero ones
                kept = torch.count_nonzero(out) / out.numel()
                self.density.copy_(torch.where(tau.reshape(()) > 0, kept, torch.ones_like(kept)))
            return out
        if format is not None and not getattr(format, "uses_mask", True) and not layout.score_dims:
            # built from the threshold alone: the density kept is counted as it is packed or first rebuilt
            return format.encode(t, None, tau, layout, self.unit_dim, record=self.density.copy_ if store else None)
        keep = self._keep(t, layout, tau, s, record=store)
        if format is not None:
            return format.encode(t, keep, tau, layout, self.unit_dim)
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            return apply_mask(t, keep)

    @property
    def unit_dim(self) -> int:
        """The dim whose slices are the structured units: filters of a weight, channels/features of an input."""
        if self.role == "weight":
            return 0
        return -1 if self.layer == "linear" else 1

    def layout(self, t: torch.Tensor) -> MaskLayout:
        return mask_layout(self.role, self.layer, self.granularity, t.dim())

    def mask(self, t: torch.Tensor, refresh: bool | None = None, store: bool = False) -> torch.Tensor:
        """The keep-mask of `t` (broadcastable). `refresh=None` or True: exact Top-K; False: the stored
        threshold is reused. `store`: the threshold (at a refresh) and the achieved density are kept."""
        layout = self.layout(t)
        tau, s = self._threshold(t, layout, refresh, store)
        return self._keep(t, layout, tau, s, record=store)

    def _keep(self, t: torch.Tensor, layout: MaskLayout, tau: torch.Tensor, s: torch.Tensor | None,
              record: bool) -> torch.Tensor:
        keep = keep_mask(scores(t, layout) if s is None else s, tau)
        if record:  # a training step: the achieved density is part of the state
            self.density.fill_(torch.count_nonzero(keep) / keep.numel())
        return keep

    def _threshold(
        self, t: torch.Tensor, layout: MaskLayout, refresh: bool | None, store: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(threshold, scores): the scores only when computing the threshold needed them."""
        reduced = {*layout.score_dims, *layout.group_dims, *layout.batch_dims}
        if refresh is False:
            return self.threshold.view([1 if d in reduced else n for d, n in enumerate(t.shape)]), None
        s = scores(t, layout) if layout.score_dims else None  # unstructured: selected from t itself
        decided_on_device = isinstance(refresh, torch.Tensor)  # under torch.compile: both, then a select
        tau = group_thresholds(t if s is None else s, layout.group_dims, self.target_density,
                               needed=refresh if decided_on_device else None, bracket=self._bracket)
        if decided_on_device:
            reused = self.threshold.view([1 if d in reduced else n for d, n in enumerate(t.shape)])
            tau = torch.where(refresh, tau, reused)
        if refresh is not None and store:
            stored = tau.mean(layout.batch_dims, keepdim=True) if layout.batch_dims else tau
            stored = stored.detach().flatten()
            if self.role != "weight":
                stored = average_over_ranks(stored.clone(), self.sync_thresholds)
            if decided_on_device:
                stored = torch.where(refresh, stored, self.threshold)
            # an overflow must not silence the next steps: a group without a finite threshold keeps
            # everything until the next refresh (decided on the device, with no host read)
            self.threshold = torch.nan_to_num(stored, nan=0.0, posinf=0.0, neginf=0.0)
        return tau, s

    def _sparsify_grad(self, grad: torch.Tensor, refresh: bool | None, store: bool) -> torch.Tensor:
        """meProp's G_s (the hook sees dL/dY of the op's own output, even if Y is later modified in place)."""
        return apply_mask(grad, self.mask(grad, refresh, store))

    def _schedule(self, t: torch.Tensor) -> tuple[bool | None, bool]:
        """(refresh, store) for this call (see `swat_fx.schedule`). Eval mode: exact Top-K, no state.
        Training: the site's first call of an iteration under autograd advances the step, decides
        whether the iteration refreshes, and alone writes state; every other call of the iteration
        does the same without writing; a call under `no_grad` computes what the iteration (or the next
        one) uses and writes nothing."""
        if not self.training:
            return None, False
        if torch.compiler.is_compiling():
            return self._traced_schedule()
        if self._steps_stale:
            self._steps, self._steps_stale = int(self.step), False
        in_iteration = self.clock.running and self._generation == self.clock.generation
        if in_iteration:
            return self._refresh, False
        if not torch.is_grad_enabled():
            return self._due(), False
        self._generation = self.clock.begin()
        self._refresh = self._due()
        self.step += 1
        self._steps += 1
        return self._refresh, True

    def _traced_schedule(self) -> tuple[torch.Tensor | bool, bool]:
        """(refresh, store) under torch.compile, where every training forward under autograd is one
        iteration: the refresh decision is a tensor (a Python step counter would be a guard, and each
        step a new graph), so both thresholds are computed and one is selected on the device."""
        due: torch.Tensor | bool = True
        if self.period > 1 and self.threshold.numel() > 0:
            due = self.step % self.period == 0
        if not torch.is_grad_enabled():
            return due, False
        self.step += 1
        self._steps_stale = True
        return due, True

    def _due(self) -> bool:
        """Whether the next iteration computes the exact Top-K."""
        return self._steps % self.period == 0 or self.threshold.numel() == 0

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        """A checkpoint without SWAT state (e.g. of the original dense model) starts this site afresh."""
        own = [prefix + name for name in self._buffers]
        if not any(key in state_dict for key in own):
            self.reset()
            return
        self._generation = 0  # loaded state: the next training forward begins an iteration of its own
        threshold = state_dict.get(prefix + "threshold")
        if threshold is not None:  # its shape is only known once a batch has been seen
            self.threshold = torch.empty_like(threshold, device=self.density.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._steps = int(self.step)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A site pickled by a release without brackets starts with an empty one."""
        state.setdefault("_bracket", selection.Bracket())
        super().__setstate__(state)

    def reset(self) -> None:
        """Forget the stored threshold: the next training step computes an exact Top-K."""
        self.step.zero_()
        self._steps = 0
        self.threshold = self.threshold.new_empty(0)
        self.density.fill_(1.0)
        self._bracket.clear()
        self._generation = 0
