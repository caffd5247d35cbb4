"""Bytes a tensor occupies in DRAM: dense, bitmap + values, or CSR.

A tensor is stored compressed only when it is sparse (density < 1: the output of a Top-K), since a
dense tensor gains nothing from a format. `nnz = density · numel` is an expected count, so the byte
counts are floats.
"""

from __future__ import annotations

import math

FORMATS: tuple[str, ...] = ("dense", "bitmap", "csr")
INDEX_BYTES = 4
"""Width of a CSR column index and row pointer (int32, as scipy and cuSPARSE use)."""


def dense_bytes(numel: int, itemsize: float) -> float:
    return numel * itemsize


def bitmap_bytes(numel: int, density: float, itemsize: float) -> float:
    """One bit per entry (rounded up to whole bytes), then the kept values packed."""
    return math.ceil(numel / 8) + density * numel * itemsize


def csr_bytes(shape: tuple[int, ...], density: float, itemsize: float) -> float:
    """The tensor as a matrix [shape[0], numel / shape[0]] (a filter, or a sample, per row):
    each kept value with its column index, plus rows + 1 row pointers."""
    numel = math.prod(shape)
    rows = shape[0] if shape else 1
    return density * numel * (itemsize + INDEX_BYTES) + (rows + 1) * INDEX_BYTES


def stored_bytes(shape: tuple[int, ...], density: float, itemsize: float, fmt: str) -> float:
    """Bytes of a tensor of `shape` kept in `fmt`; dense tensors (density 1) are always stored dense."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown sparse format {fmt!r}; valid formats are: {', '.join(FORMATS)}")
    numel = math.prod(shape)
    if fmt == "dense" or density >= 1.0:
        return dense_bytes(numel, itemsize)
    if fmt == "bitmap":
        return bitmap_bytes(numel, density, itemsize)
    return csr_bytes(shape, density, itemsize)
