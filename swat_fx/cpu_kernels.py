"""The numba kernels of swat_fx on CPU (this module imports numba: load it through `selection.kernels()`).

Each is one or two plain passes over contiguous memory, compiled once and cached. They run on the
calling thread: numba's thread pools abort processes that also run torch.distributed's (gloo) threads,
and do not survive a fork (DataLoader workers), so the parallelism stays torch's own.
"""

from __future__ import annotations

import numba
import numpy as np

BINS = 1 << 16
"""One 16-bit digit."""


@numba.njit(cache=True)
def digit_histograms(bits, shift, prefix_shift, prefixes, abs_mask, inf_bits):
    """Per row of `bits` (float bit patterns): the counts of each 16-bit digit at `shift` of the
    magnitudes whose bits above `prefix_shift` equal the row's prefix (all of them when `prefix_shift`
    is 63). NaN patterns count as +inf."""
    rows, n = bits.shape
    histograms = np.zeros((rows, BINS), np.int64)
    for row in range(rows):
        prefix = prefixes[row]
        for i in range(n):
            m = np.int64(bits[row, i]) & abs_mask
            if m > inf_bits:
                m = inf_bits
            if prefix_shift >= 63 or (m >> prefix_shift) == prefix:
                histograms[row, (m >> shift) & (BINS - 1)] += 1
    return histograms


@numba.njit(cache=True)
def pick_digits(histograms, ranks):
    """Per row: the digit that holds the rank-th largest entry, and its rank among that digit's entries."""
    rows = histograms.shape[0]
    digits = np.zeros(rows, np.int64)
    remaining = ranks.copy()
    for row in range(rows):
        above = 0
        for digit in range(BINS - 1, -1, -1):
            count = histograms[row, digit]
            if above + count >= ranks[row]:
                digits[row] = digit
                remaining[row] = ranks[row] - above
                break
            above += count
    return digits, remaining


@numba.njit(cache=True)
def threshold_and_count(values, out, tau):
    """`out` = `values` where |v| >= tau (NaN kept), 0 elsewhere; returns how many entries were kept."""
    kept = 0
    for i in range(values.shape[0]):
        v = values[i]
        if abs(v) < tau:
            out[i] = 0
        else:
            out[i] = v
            kept += 1
    return kept


@numba.njit(cache=True)
def count_true(keep):
    """How many entries of a bool array are set."""
    count = 0
    for i in range(keep.shape[0]):
        if keep[i]:
            count += 1
    return count


@numba.njit(cache=True)
def compress(values, keep, out_values, out_bits):
    """The kept entries of `values`, in order, into `out_values`, and `keep` packed 8 a byte (little
    endian) into `out_bits`, in one pass."""
    n = values.shape[0]
    j = 0
    for byte in range(out_bits.shape[0]):
        packed = 0
        for bit in range(8):
            i = byte * 8 + bit
            if i < n and keep[i]:
                packed |= 1 << bit
                out_values[j] = values[i]
                j += 1
        out_bits[byte] = packed


@numba.njit(cache=True)
def decompress(values, bits, out):
    """The inverse of `compress`: `out` gets the kept values where their bit is set, 0 elsewhere."""
    n = out.shape[0]
    j = 0
    for byte in range(bits.shape[0]):
        b = bits[byte]
        for bit in range(8):
            i = byte * 8 + bit
            if i >= n:
                break
            if (b >> bit) & 1:
                out[i] = values[j]
                j += 1
            else:
                out[i] = 0


@numba.njit(cache=True)
def pack_positive(values, out_bits):
    """`values > 0`, packed 8 a byte (little endian) into `out_bits`."""
    n = values.shape[0]
    for byte in range(out_bits.shape[0]):
        packed = 0
        for bit in range(8):
            i = byte * 8 + bit
            if i < n and values[i] > 0:
                packed |= 1 << bit
        out_bits[byte] = packed


@numba.njit(cache=True)
def select_by_bits(values, bits, out):
    """`out` = `values` where the packed bit is set, 0 elsewhere."""
    n = values.shape[0]
    for byte in range(bits.shape[0]):
        b = bits[byte]
        for bit in range(8):
            i = byte * 8 + bit
            if i < n:
                out[i] = values[i] if (b >> bit) & 1 else 0
