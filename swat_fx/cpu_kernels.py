"""The numba kernels of swat_fx on CPU (this module imports numba: load it through `selection.kernels()`)."""

from __future__ import annotations

import numba
import numpy as np

BINS = 1 << 16
"""One 16-bit digit."""


@numba.njit(parallel=True, cache=True)
def digit_histograms(bits, tasks_per_row, shift, prefix_shift, prefixes, abs_mask, inf_bits):
    """Per row of `bits` (float bit patterns): the counts of each 16-bit digit at `shift` of the
    magnitudes whose bits above `prefix_shift` equal the row's prefix (all of them when `prefix_shift`
    is 63). NaN patterns count as +inf. Rows are split into `tasks_per_row` parallel slices."""
    rows, n = bits.shape
    step = (n + tasks_per_row - 1) // tasks_per_row
    partial = np.zeros((rows * tasks_per_row, BINS), np.int64)
    for task in numba.prange(rows * tasks_per_row):
        row = task // tasks_per_row
        start = (task % tasks_per_row) * step
        prefix = prefixes[row]
        for i in range(start, min(n, start + step)):
            m = np.int64(bits[row, i]) & abs_mask
            if m > inf_bits:
                m = inf_bits
            if prefix_shift >= 63 or (m >> prefix_shift) == prefix:
                partial[task, (m >> shift) & (BINS - 1)] += 1
    return partial.reshape(rows, tasks_per_row, BINS).sum(axis=1)


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


@numba.njit(parallel=True, cache=True)
def threshold_and_count(values, out, tau, tasks):
    """`out` = `values` where |v| >= tau (NaN kept), 0 elsewhere, in one parallel pass; returns the
    number of entries kept."""
    n = values.shape[0]
    step = (n + tasks - 1) // tasks
    kept = np.zeros(tasks, np.int64)
    for task in numba.prange(tasks):
        count = 0
        for i in range(task * step, min(n, (task + 1) * step)):
            v = values[i]
            if abs(v) < tau:
                out[i] = 0
            else:
                out[i] = v
                count += 1
        kept[task] = count
    return kept.sum()



@numba.njit(parallel=True, cache=True)
def compress(values, keep, out_values, out_bits, tasks):
    """The kept entries of `values` (in order) into `out_values` and `keep` packed 8 a byte (little
    endian) into `out_bits`; returns how many were kept. Two passes over `keep`: counts, then writes."""
    n = values.shape[0]
    step = ((n + tasks - 1) // tasks + 7) // 8 * 8  # whole bytes per task
    counts = np.zeros(tasks + 1, np.int64)
    for task in numba.prange(tasks):
        count = 0
        for i in range(task * step, min(n, (task + 1) * step)):
            if keep[i]:
                count += 1
        counts[task + 1] = count
    for task in range(tasks):
        counts[task + 1] += counts[task]
    for task in numba.prange(tasks):
        j = counts[task]
        for byte in range(task * step // 8, min((n + 7) // 8, (task + 1) * step // 8)):
            packed = 0
            for bit in range(8):
                i = byte * 8 + bit
                if i < n and keep[i]:
                    packed |= 1 << bit
                    out_values[j] = values[i]
                    j += 1
            out_bits[byte] = packed
    return counts[tasks]


@numba.njit(parallel=True, cache=True)
def decompress(values, bits, out, tasks):
    """The inverse of `compress`: `out` (length n) gets the kept values where their bit is set, 0 elsewhere."""
    n = out.shape[0]
    bytes_total = (n + 7) // 8
    step = (bytes_total + tasks - 1) // tasks
    starts = np.zeros(tasks + 1, np.int64)
    for task in numba.prange(tasks):
        count = 0
        for byte in range(task * step, min(bytes_total, (task + 1) * step)):
            b = bits[byte]
            while b:
                b &= b - 1
                count += 1
        starts[task + 1] = count
    for task in range(tasks):
        starts[task + 1] += starts[task]
    for task in numba.prange(tasks):
        j = starts[task]
        for byte in range(task * step, min(bytes_total, (task + 1) * step)):
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


@numba.njit(parallel=True, cache=True)
def count_true(keep, tasks):
    """How many entries of a bool array are set."""
    n = keep.shape[0]
    step = (n + tasks - 1) // tasks
    counts = np.zeros(tasks, np.int64)
    for task in numba.prange(tasks):
        count = 0
        for i in range(task * step, min(n, (task + 1) * step)):
            if keep[i]:
                count += 1
        counts[task] = count
    return counts.sum()


@numba.njit(parallel=True, cache=True)
def pack_positive(values, out_bits, tasks):
    """`values > 0`, packed 8 a byte (little endian) into `out_bits`."""
    n = values.shape[0]
    bytes_total = out_bits.shape[0]
    step = (bytes_total + tasks - 1) // tasks
    for task in numba.prange(tasks):
        for byte in range(task * step, min(bytes_total, (task + 1) * step)):
            packed = 0
            for bit in range(8):
                i = byte * 8 + bit
                if i < n and values[i] > 0:
                    packed |= 1 << bit
            out_bits[byte] = packed


@numba.njit(parallel=True, cache=True)
def select_by_bits(values, bits, out, tasks):
    """`out` = `values` where the packed bit is set, 0 elsewhere."""
    n = values.shape[0]
    bytes_total = bits.shape[0]
    step = (bytes_total + tasks - 1) // tasks
    for task in numba.prange(tasks):
        for byte in range(task * step, min(bytes_total, (task + 1) * step)):
            b = bits[byte]
            for bit in range(8):
                i = byte * 8 + bit
                if i < n:
                    out[i] = values[i] if (b >> bit) & 1 else 0
