"""Sparse operands that a `TopK` site hands to a SWAT kernel instead of a zero-filled tensor.

What the backward pass holds is what SWAT saves memory on, so a site can produce:

- `CompressedTensor`: kept values + a packed 1-bit mask (an activation X_s saved for dW);
- `ThresholdedParameter`: the dense parameter + its threshold (W_s: the parameter is resident anyway);
- `KeptUnits` / `KeptFilters`: the kept channels (copied) or filters (indices into the parameter) of a
  structured granularity, which also lets the kernel compute on the kept units only.

Each reproduces the zero-filled tensor exactly with `to_dense()`. A kernel saves an operand for backward
with `flatten_operand` (its tensors go through `ctx.save_for_backward`, so autograd's checks and
saved-tensor hooks see them) and gets it back with `unflatten_operand`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from swat_fx import selection
from swat_fx.masks import MaskLayout, apply_mask, apply_threshold, keep_mask, scores


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, 8 entries a byte."""
    flat = mask.detach().reshape(-1)
    if flat.device.type == "cpu":
        return torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
    padded = torch.nn.functional.pad(flat.to(torch.uint8), (0, (-flat.numel()) % 8)).view(-1, 8)
    return (padded << torch.arange(8, dtype=torch.uint8, device=flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed."""
    count = math.prod(shape)
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.numpy(), count=count, bitorder="little").view(np.bool_)
        return torch.from_numpy(bits).view(shape)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(-1)[:count].bool().view(shape)


def _masked_values(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The entries of `t` where `keep` is set, in order (numpy's compress is the fast path on CPU)."""
    if t.device.type == "cpu" and t.dtype != torch.bfloat16:
        flat = t.detach().contiguous().reshape(-1).numpy()
        return torch.from_numpy(flat.compress(keep.reshape(-1).numpy()))
    return t.detach().masked_select(keep)


def recorded_keep_mask(t: torch.Tensor, threshold: torch.Tensor, layout: MaskLayout,
                       record: Callable[[torch.Tensor], Any] | None) -> torch.Tensor:
    """The keep-mask of `t` under `threshold`, its density given to `record` where one is given."""
    keep = keep_mask(scores(t, layout), threshold)
    if record is not None:
        record(torch.count_nonzero(keep) / keep.numel())
    return keep


@dataclass(frozen=True)
class CompressedTensor:
    """Kept values and a packed mask: (density·4 + 1/8) bytes an entry instead of 4 for float32."""

    values: torch.Tensor
    bitmap: torch.Tensor
    shape: torch.Size

    @classmethod
    def compress(cls, t: torch.Tensor, keep: torch.Tensor) -> CompressedTensor:
        """The entries of `t` that `keep` (broadcastable to `t`) keeps."""
        keep = keep.expand(t.shape).contiguous()
        t = t.detach().contiguous()
        kernels = selection.compiled_for(t)
        if kernels is None:
            return cls(_masked_values(t, keep), pack_bits(keep), t.shape)
        return cls._pack(kernels, t, keep.view(-1).numpy(), t.new_zeros(()))

    @classmethod
    def from_threshold(cls, t: torch.Tensor, threshold: torch.Tensor, layout: MaskLayout,
                       record: Callable[[torch.Tensor], Any] | None = None) -> CompressedTensor:
        """The entries of `t` its Top-K threshold keeps; for one threshold on CPU straight from it (a
        counting pass and a packing pass, no mask tensor). `record`, where given, gets the density kept."""
        t = t.detach().contiguous()
        kernels = selection.compiled_for(t)
        if kernels is None or layout.score_dims or threshold.numel() != 1:
            return cls.compress(t, recorded_keep_mask(t, threshold, layout, record))
        compressed = cls._pack(kernels, t, np.empty(0, np.bool_), threshold)
        if record is not None:
            record(torch.tensor(compressed.values.numel()) / t.numel())  # as the other formats divide
        return compressed

    @classmethod
    def _pack(cls, kernels: Any, t: torch.Tensor, keep: np.ndarray, threshold: torch.Tensor) -> CompressedTensor:
        """By `keep`, or by `threshold` where `keep` is empty: values and bits in one pass, once counted."""
        flat, limit = t.view(-1).numpy(), selection.threshold_scalar(threshold, t.dtype)
        count = kernels.count_kept(flat, keep, limit)
        values = np.empty(count + 1, dtype=flat.dtype)  # the slot beyond is the kernel's scratch
        bits = np.empty((flat.size + 7) // 8, dtype=np.uint8)
        kernels.compress(flat, keep, limit, values, bits)
        return cls(torch.from_numpy(values[:count]), torch.from_numpy(bits), t.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def writes_into_out(self) -> bool:
        """Whether `to_dense(out=...)` fills `out` (the compiled CPU kernel runs) rather than a new tensor."""
        return selection.compiled_for(self.values) is not None

    def to_dense(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The zero-filled tensor, written into `out` (contiguous, of this shape and dtype) where one is
        given and `writes_into_out`."""
        kernels = selection.compiled_for(self.values)
        if kernels is None:
            keep = unpack_bits(self.bitmap, self.shape).to(self.values.device)
            dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
            return dense.masked_scatter_(keep, self.values)
        if out is None:
            out = torch.empty(self.shape, dtype=self.values.dtype)
        kernels.decompress(self.values.numpy(), self.bitmap.numpy(), out.view(-1).numpy())
        return out



@dataclass(frozen=True)
class ThresholdedParameter:
    """W_s (or X_s) as the tensor itself and its Top-K threshold: the sparse tensor is rebuilt (one pass,
    the same arithmetic every time, so bit-identical) when a product needs it, and the backward holds
    nothing beyond W, resident anyway, or X, which the ReLU or BatchNorm before the op keeps anyway.
    `record`, where given, receives the density kept, counted on the way (the site's state). A
    structured layout holds its kept units (`keep`, one entry a unit) as the site decided them: unit
    scores summed again by another kernel (torch.compile fuses differently) could round otherwise."""

    base: torch.Tensor
    threshold: torch.Tensor
    layout: MaskLayout
    record: Callable[[torch.Tensor], Any] | None = None
    keep: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def _one_threshold(self) -> bool:
        return self.keep is None and not self.layout.score_dims and self.threshold.numel() == 1

    @property
    def writes_into_out(self) -> bool:
        """Whether `to_dense(out=...)` fills `out` (the fused CPU pass runs) rather than a new tensor."""
        return self._one_threshold and selection.compiled_for(self.base) is not None

    def to_dense(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The zero-filled tensor, written into `out` (contiguous, of this shape and dtype) where one is
        given and `writes_into_out`."""
        values = self.base.detach()
        if self.keep is not None:
            return apply_mask(values, self.keep)
        if self._one_threshold:
            if selection.compiled_for(values):
                dense, kept = selection.threshold_and_count(values, self.threshold, out)
            else:
                dense = apply_threshold(values, self.threshold)
                kept = torch.count_nonzero(~(values.abs() < self.threshold)) if self.record else None
            if self.record is not None:
                self.record(kept / values.numel())
            return dense
        return apply_mask(values, recorded_keep_mask(values, self.threshold, self.layout, self.record))


@dataclass(frozen=True)
class KeptUnits:
    """A structured-sparse tensor: the kept slices along `dim` (`values`) and their `index`."""

    values: torch.Tensor
    index: torch.Tensor
    dim: int
    shape: torch.Size

    @classmethod
    def select(cls, t: torch.Tensor, keep: torch.Tensor, dim: int) -> KeptUnits:
        """`keep` is constant along every dim but `dim` (a structured mask)."""
        dim = dim % t.dim()
        index = keep.movedim(dim, 0).reshape(keep.shape[dim], -1)[:, 0].nonzero().reshape(-1)
        return cls(t.detach().index_select(dim, index), index, dim, t.shape)

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        return out.index_copy_(self.dim, self.index, self.values)



@dataclass(frozen=True)
class KeptFilters:
    """Structured W_s as the parameter itself and the indices of its kept filters (dim 0): the kept
    filters are gathered when a product needs them, so nothing of W is copied for the backward."""

    base: torch.Tensor
    index: torch.Tensor
    dim: int = 0

    @classmethod
    def select(cls, weight: torch.Tensor, keep: torch.Tensor) -> KeptFilters:
        return cls(weight, keep.reshape(keep.shape[0], -1)[:, 0].nonzero().reshape(-1))

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def values(self) -> torch.Tensor:
        return self.base.detach().index_select(0, self.index)

    def to_dense(self) -> torch.Tensor:
        return torch.zeros_like(self.base.detach()).index_copy_(0, self.index, self.values)


UNITS = (KeptUnits, KeptFilters)
SparseOperand = CompressedTensor | ThresholdedParameter | KeptUnits | KeptFilters
Operand = torch.Tensor | SparseOperand
OperandSpec = tuple[type, dict, tuple[str, ...]] | None


def to_dense(operand: Operand) -> torch.Tensor:
    return operand if isinstance(operand, torch.Tensor) else operand.to_dense()


def flatten_operand(operand: Operand) -> tuple[tuple[torch.Tensor, ...], OperandSpec]:
    """The tensors of `operand`, and what `unflatten_operand` needs to rebuild it from them."""
    if isinstance(operand, torch.Tensor):
        return (operand,), None
    names = tuple(f.name for f in fields(operand) if isinstance(getattr(operand, f.name), torch.Tensor))
    others = {f.name: getattr(operand, f.name) for f in fields(operand) if f.name not in names}
    return tuple(getattr(operand, name) for name in names), (type(operand), others, names)


def unflatten_operand(spec: OperandSpec, tensors: tuple[torch.Tensor, ...]) -> Operand:
    if spec is None:
        return tensors[0]
    cls, others, names = spec
    return cls(**others, **dict(zip(names, tensors, strict=True)))
