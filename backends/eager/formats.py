"""The eager backend's choices, as kinds: how a layer's products run (`Kernel`) and how a Top-K site
hands its output to them (`Format`, a `swat_fx.topk.StorageFormat`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch

from swat_fx.backends.eager.operands import (
    CompressedTensor,
    KeptFilters,
    KeptUnits,
    ThresholdedParameter,
    recorded_keep_mask,
)
from swat_fx.masks import MaskLayout, apply_mask


class Kernel(enum.Enum):
    """How the eager backend runs one SWAT op; users pick one of the first four for the whole model.

    | kernel       | operands                                                    | `AUTO` picks it for          |
    |--------------|-------------------------------------------------------------|------------------------------|
    | `DENSE`      | none sparse (meProp's G_s, fw_a's X_s act around the op)    | those ops                    |
    | `COMPACT`    | kept filters/channels only, computed on compactly           | `granularity="filter"`, groups=1 |
    | `MASKED`     | X_s as X + threshold, W_s as W + threshold (rebuilt in the backward) | every other op      |
    | `COMPRESSED` | X_s as kept values + bitmap, W_s as W + threshold (less memory, some time) | never         |
    """

    AUTO = "auto"
    MASKED = "masked"
    COMPRESSED = "compressed"
    COMPACT = "compact"
    DENSE = "dense"

    @classmethod
    def parse(cls, value: str | Kernel) -> Kernel:
        """A user's `kernel=` choice; a ValueError listing the valid ones for anything else."""
        choices = (cls.AUTO, cls.MASKED, cls.COMPRESSED, cls.COMPACT)
        if isinstance(value, cls) and value in choices:
            return value
        for choice in choices:
            if value == choice.value:
                return choice
        raise ValueError(f"unknown kernel {value!r}; valid values are: {', '.join(repr(c.value) for c in choices)}")

    @property
    def formats(self) -> tuple[Format | None, Format | None]:
        """(format of W_s, format of X_s) its products take; None: the zero-filled tensor."""
        return _FORMATS[self]


class Format(enum.Enum):
    """A storage format of a sparsified operand (SPEC §5, eager lowering)."""

    THRESHOLDED = "thresholded"
    """W_s as the parameter and its threshold: nothing beyond W is held for the backward."""
    COMPRESSED = "compressed"
    """X_s as kept values and a 1-bit mask."""
    FILTERS = "filters"
    """A structured W_s as the indices of its kept filters."""
    CHANNELS = "channels"
    """A structured X_s as its kept channels (features) and their indices."""

    @property
    def uses_mask(self) -> bool:
        """THRESHOLDED rebuilds an unstructured tensor from the threshold (and records the density as it
        does), COMPRESSED packs it from the threshold (no mask tensor); the structured ones store what
        the mask keeps."""
        return self not in (Format.THRESHOLDED, Format.COMPRESSED)

    def encode(self, t: torch.Tensor, keep: torch.Tensor | None, threshold: torch.Tensor, layout: MaskLayout,
               unit_dim: int, record: Callable[[torch.Tensor], Any] | None = None) -> Any:
        """The operand; under torch.compile, whose graphs need sizes known before the data, the formats
        whose sizes depend on the mask (kept values, kept units) hand over the zero-filled tensor."""
        if self is not Format.THRESHOLDED and torch.compiler.is_compiling():
            return apply_mask(t, recorded_keep_mask(t, threshold, layout, record) if keep is None else keep)
        if self is Format.THRESHOLDED:
            return ThresholdedParameter(t, threshold.detach().clone(), layout, record,
                                        None if keep is None else keep.detach())
        if self is Format.COMPRESSED:
            if keep is None:
                return CompressedTensor.from_threshold(t, threshold, layout, record)
            return CompressedTensor.compress(t, keep)
        if self is Format.FILTERS:
            return KeptFilters.select(t, keep)
        return KeptUnits.select(t, keep, unit_dim)


_FORMATS: dict[Kernel, tuple[Format | None, Format | None]] = {
    Kernel.DENSE: (None, None),
    Kernel.MASKED: (Format.THRESHOLDED, Format.THRESHOLDED),
    Kernel.COMPRESSED: (Format.THRESHOLDED, Format.COMPRESSED),
    Kernel.COMPACT: (Format.FILTERS, Format.CHANNELS),
}
