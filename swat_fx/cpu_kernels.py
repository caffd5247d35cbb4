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
_LANES = 4
_BLOCK = 64
"""Entries a bracketed pass counts before it looks for candidates among them."""


@numba.njit(cache=True)
def digit_histograms(bits, shift, prefix_shift, prefixes, abs_mask):
    """Per row of `bits` (float bit patterns): the counts of each 16-bit digit at `shift` of the
    magnitudes' patterns whose bits above `prefix_shift` equal the row's prefix (all of them when
    `prefix_shift` is 63). NaN patterns are larger than +inf's: the caller clamps what it selects."""
    rows = bits.shape[0]
    histograms = np.zeros((rows, BINS), np.int64)
    lanes = np.empty((_LANES, BINS), np.int32)
    for row in range(rows):
        if prefix_shift >= 63:
            _count_every_digit(bits[row], shift, abs_mask, lanes, histograms[row])
        else:
            _count_prefixed_digits(bits[row], shift, prefix_shift, prefixes[row], abs_mask, histograms[row])
    return histograms


@numba.njit(cache=True)
def _count_every_digit(bits, shift, abs_mask, counts, out):
    """Into four interleaved histograms (`counts`, scratch), summed at the end: a run of equal digits
    (a ReLU's zeros) would otherwise make every increment wait for the previous one to the same counter."""
    n = bits.shape[0]
    counts[:] = 0
    body = n - n % _LANES
    for i in range(0, body, _LANES):
        for lane in range(_LANES):
            counts[lane, ((np.int64(bits[i + lane]) & abs_mask) >> shift) & (BINS - 1)] += 1
    for i in range(body, n):
        counts[0, ((np.int64(bits[i]) & abs_mask) >> shift) & (BINS - 1)] += 1
    for lane in range(_LANES):
        for digit in range(BINS):
            out[digit] += counts[lane, digit]


@numba.njit(cache=True)
def _count_prefixed_digits(bits, shift, prefix_shift, prefix, abs_mask, out):
    """The entries with `prefix` are few, so the branch is well predicted (a prefix of zeros is left
    to `count_zero_magnitudes` where it can be)."""
    for i in range(bits.shape[0]):
        m = np.int64(bits[i]) & abs_mask
        if (m >> prefix_shift) == prefix:
            out[(m >> shift) & (BINS - 1)] += 1


@numba.njit(cache=True)
def count_zero_magnitudes(bits, abs_mask):
    """Per row of `bits`: how many entries are ±0 (one branch-free pass)."""
    rows, n = bits.shape
    zeros = np.zeros(rows, np.int64)
    for row in range(rows):
        count = 0
        for i in range(n):
            count += (bits[row, i] & abs_mask) == 0
        zeros[row] = count
    return zeros


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
def bracketed_kth(bits, rank, previous, widths, default_width, abs_mask, candidates):
    """Per row of `bits`: the rank-th largest magnitude pattern where it lies within the row's bracket
    (`previous` ± `widths`, a width of 0 meaning `default_width`; a row whose `previous` is -1 has
    none), in one pass. Returns (patterns, tried, found); a row is not found where fewer than `rank`
    entries lie above the bracket's low end or `rank` or more above its high end, or where its candidates
    come near filling `candidates` (within a block of 64)."""
    rows = bits.shape[0]
    patterns = np.zeros(rows, np.int64)
    tried = previous >= 0
    found = np.zeros(rows, np.bool_)
    for row in range(rows):
        if not tried[row]:
            continue
        width = widths[row] if widths[row] > 0 else default_width
        low = max(previous[row] - width, 1)
        high = min(previous[row] + width, abs_mask)
        above, count = _bracket_candidates(bits[row], abs_mask, low, high, candidates)
        inside = rank - above
        if count < 0 or inside < 1 or inside > count:
            continue
        patterns[row] = np.partition(candidates[:count], count - inside)[count - inside]
        found[row] = True
    return patterns, tried, found


@numba.njit(cache=True)
def _bracket_candidates(bits, abs_mask, low, high, candidates):
    """(how many magnitudes lie above `high`, how many in [low, high], copied into `candidates`; -1
    where they do not fit). Blocks of 64 are counted branch-free, so the loop vectorises; only a block
    holding a candidate is read again, and a narrow bracket leaves most blocks without one."""
    n = bits.shape[0]
    room = candidates.shape[0] - _BLOCK
    above = 0
    count = 0
    body = n - n % _BLOCK
    for start in range(0, body, _BLOCK):
        over = np.int32(0)
        at_least = np.int32(0)
        for i in range(start, start + _BLOCK):
            m = bits[i] & abs_mask
            over += np.int32(m > high)
            at_least += np.int32(m >= low)
        above += over
        if at_least != over:
            if count > room:
                return above, -1
            for i in range(start, start + _BLOCK):
                m = bits[i] & abs_mask
                if m >= low and m <= high:
                    candidates[count] = m
                    count += 1
    for i in range(body, n):
        m = bits[i] & abs_mask
        above += m > high
        if m >= low and m <= high:
            if count >= candidates.shape[0]:
                return above, -1
            candidates[count] = m
            count += 1
    return above, count


@numba.njit(cache=True)
def update_brackets(previous, widths, patterns, found, tried, default_width, narrowest, widest, inf_bits):
    """After a selection: each row's next bracket is centred on its new threshold, 4x as wide as the
    threshold just moved where that is wider than half the last width (or the last missed), else half
    as wide (within [narrowest, widest]). A threshold of zero or beyond the finite ones gives no
    bracket (-1): its row is selected by the radix passes."""
    for row in range(patterns.shape[0]):
        if tried[row]:
            moved = 4 * abs(patterns[row] - previous[row])
            last = widths[row] if widths[row] > 0 else default_width
            width = last // 2 if found[row] else 0
            widths[row] = min(max(width, moved, narrowest), widest)
        previous[row] = patterns[row] if 0 < patterns[row] < inf_bits else -1


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
def count_kept(values, keep, tau):
    """How many entries are kept: where `keep` is set or, for an empty `keep`, where |v| >= tau (NaN
    kept). Branch-free."""
    by_threshold = keep.shape[0] == 0
    count = 0
    for i in range(values.shape[0]):
        count += _kept(values, keep, tau, by_threshold, i)
    return count


@numba.njit(cache=True, inline="always")
def _kept(values, keep, tau, by_threshold, i):
    if by_threshold:
        return np.int64(not abs(values[i]) < tau)
    return np.int64(keep[i])


@numba.njit(cache=True)
def compress(values, keep, tau, out_values, out_bits):
    """The kept entries of `values` (as `count_kept` decides), in order, into `out_values`, and the
    mask packed 8 a byte (little endian) into `out_bits`, in one branch-free pass (every entry is
    written at the next free slot, which only a kept one takes): `out_values` needs one slot beyond
    the kept count."""
    n = values.shape[0]
    by_threshold = keep.shape[0] == 0
    j = 0
    for byte in range(n // 8):
        packed = 0
        for bit in range(8):
            i = byte * 8 + bit
            kept = _kept(values, keep, tau, by_threshold, i)
            out_values[j] = values[i]
            j += kept
            packed |= kept << bit
        out_bits[byte] = packed
    packed = 0
    for i in range(n - n % 8, n):
        kept = _kept(values, keep, tau, by_threshold, i)
        out_values[j] = values[i]
        j += kept
        packed |= kept << (i % 8)
    if n % 8:
        out_bits[n // 8] = packed


@numba.njit(cache=True)
def decompress(values, bits, out):
    """The inverse of `compress`: `out` gets the kept values where their bit is set, 0 elsewhere
    (branch-free: the next value is read at every entry and taken where the bit is set)."""
    last = values.shape[0] - 1
    if last < 0:
        out[:] = 0
        return
    zero = out.dtype.type(0)
    j = 0
    for i in range(out.shape[0]):
        bit = (np.int64(bits[i >> 3]) >> (i & 7)) & 1
        value = values[min(j, last)]
        out[i] = value if bit else zero
        j += bit


@numba.njit(cache=True)
def pack_positive(values, out_bits):
    """`values > 0`, packed 8 a byte (little endian) into `out_bits`, branch-free."""
    n = values.shape[0]
    for byte in range(n // 8):
        packed = 0
        for bit in range(8):
            packed |= np.int64(values[byte * 8 + bit] > 0) << bit
        out_bits[byte] = packed
    packed = 0
    for i in range(n - n % 8, n):
        packed |= np.int64(values[i] > 0) << (i % 8)
    if n % 8:
        out_bits[n // 8] = packed


@numba.njit(cache=True)
def select_by_bits(patterns, bits, out):
    """`out` = `patterns` where the packed bit is set, 0 elsewhere, on the floats' bit patterns (an
    integer view): an AND with all-ones or zero per entry, exact for every value (NaN, inf) and
    vectorised."""
    n = patterns.shape[0]
    for byte in range(n // 8):
        b = np.int64(bits[byte])
        for bit in range(8):
            i = byte * 8 + bit
            out[i] = patterns[i] & -((b >> bit) & 1)
    for i in range(n - n % 8, n):
        out[i] = patterns[i] & -((np.int64(bits[i >> 3]) >> (i & 7)) & 1)
