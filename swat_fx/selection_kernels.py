"""The numba kernels of `selection` (this module imports numba: load it through `selection`)."""

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

