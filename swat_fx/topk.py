"""`TopK`: one sparsification site of one layer, as a module that owns its periodic-Top-K state.

Each site is a `call_module` node in the transformed graph, so `gm.code` shows where SWAT sparsifies,
and its state (step counter, stored threshold, achieved density) is in `state_dict()` as buffers.
"""

from __future__ import annotations

import enum
import functools
from typing import Any, Protocol

import torch
import torch.nn as nn

from swat_fx.masks import (
    MaskLayout,
    apply_mask,
    apply_threshold,
    group_thresholds,
    keep_mask,
    mask_layout,
    scores,
)


class StorageFormat(Protocol):
    """How a backend wants a site's output: `encode` builds it from the tensor and the site's mask.

    The neutral graph has none (the site returns the zero-filled tensor); a backend's lowering sets
    one as the site's `format` keyword: a member of an `enum.Enum` of the backend's formats, so the
    generated code names it (`format = Format.COMPRESSED`).
    """

    def encode(self, t: torch.Tensor, keep: torch.Tensor, threshold: torch.Tensor, layout: MaskLayout,
               unit_dim: int) -> Any: ...


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
    ) -> None:
        super().__init__()
        self.sparsity = sparsity
        self.granularity = granularity
        self.role = role
        self.layer = layer
        self.period = period
        self.differentiable = differentiable
        self.backward_only = backward_only
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("threshold", torch.empty(0))
        self.register_buffer("density", torch.ones(()))

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
        refresh = self._next_step() if self.training else None
        if self.role == "grad":
            if t.requires_grad:  # a hook, not a Function: an in-place op (ReLU) may follow
                t.register_hook(functools.partial(self._sparsify_grad, refresh=refresh))
            return t
        if self.backward_only and not self.training and not torch.is_grad_enabled():
            return None
        layout = self.layout(t)
        tau, s = self._threshold(t, layout, refresh)
        if format is None and not layout.score_dims and tau.numel() == 1:
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                out = apply_threshold(t, tau)
            if refresh is not None:  # with tau > 0 the kept entries are exactly the non-zero ones
                kept = torch.count_nonzero(out != 0) / out.numel() if float(tau) > 0 else 1.0
                self.density.fill_(kept)
            return out
        keep = self._keep(t, layout, tau, s, record=refresh is not None)
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

    def mask(self, t: torch.Tensor, refresh: bool | None = None) -> torch.Tensor:
        """The keep-mask of `t` (broadcastable). `refresh=None`: exact Top-K, no state change (eval
        mode); True: exact Top-K, threshold stored; False: the stored threshold is reused."""
        layout = self.layout(t)
        tau, s = self._threshold(t, layout, refresh)
        return self._keep(t, layout, tau, s, record=refresh is not None)

    def _keep(self, t: torch.Tensor, layout: MaskLayout, tau: torch.Tensor, s: torch.Tensor | None,
              record: bool) -> torch.Tensor:
        keep = keep_mask(scores(t, layout) if s is None else s, tau)
        if record:  # a training step: the achieved density is part of the state
            self.density.fill_(torch.count_nonzero(keep) / keep.numel())
        return keep

    def _threshold(
        self, t: torch.Tensor, layout: MaskLayout, refresh: bool | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(threshold, scores): the scores only when computing the threshold needed them."""
        if refresh is False:
            reduced = {*layout.score_dims, *layout.group_dims, *layout.batch_dims}
            return self.threshold.view([1 if d in reduced else n for d, n in enumerate(t.shape)]), None
        s = scores(t, layout)
        tau = group_thresholds(s, layout.group_dims, self.target_density)
        if refresh:
            stored = tau.mean(layout.batch_dims, keepdim=True) if layout.batch_dims else tau
            self.threshold = stored.detach().flatten().clone()
        return tau, s

    def _sparsify_grad(self, grad: torch.Tensor, refresh: bool | None) -> torch.Tensor:
        """meProp's G_s (the hook sees dL/dY of the op's own output, even if Y is later modified in place)."""
        return apply_mask(grad, self.mask(grad, refresh))

    def _next_step(self) -> bool:
        """Advance the step counter; True when this step refreshes the threshold exactly."""
        refresh = int(self.step) % self.period == 0 or self.threshold.numel() == 0
        self.step += 1
        return refresh

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        """A checkpoint without SWAT state (e.g. of the original dense model) starts this site afresh."""
        own = [prefix + name for name in self._buffers]
        if not any(key in state_dict for key in own):
            self.reset()
            return
        threshold = state_dict.get(prefix + "threshold")
        if threshold is not None:  # its shape is only known once a batch has been seen
            self.threshold = torch.empty_like(threshold, device=self.density.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def reset(self) -> None:
        """Forget the stored threshold: the next training step computes an exact Top-K."""
        self.step.zero_()
        self.threshold = self.threshold.new_empty(0)
        self.density.fill_(1.0)
