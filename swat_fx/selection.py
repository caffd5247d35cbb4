"""Exact k-th largest magnitude at memory speed on CPU: a radix select over the float bit patterns.

For a non-negative float, the order of the values is the order of their bit patterns as integers, so
|v| is `bits & ~sign`, and the k-th largest is found 16 bits at a time: a histogram of the top digit
over the whole row, the digit where the running count from the top reaches k, then the next digit
among the entries sharing that prefix (two passes for float32, four for float64, one for 16-bit
floats). It reads the values as they are (no |v| temporary, no copy, no sort) and never
reads a device value on the host. NaN counts as +inf, as everywhere in SWAT.

Compiled with numba (loaded on first use, so `import swat_fx` stays light); `available()` says whether
it can run. `torch.kthvalue` gives the same values elsewhere (CUDA, or without numba). The module also
decides where the other compiled CPU kernels run (`compiled_for`) and wraps the fused threshold pass.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

_DIGIT = 16  # the digit width of `cpu_kernels`
_LAYOUT = {  # dtype: (integer view, bits, sign-cleared mask, bit pattern of +inf)
    torch.float32: (torch.int32, 32, 0x7FFFFFFF, 0x7F800000),
    torch.float64: (torch.int64, 64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
    torch.float16: (torch.int16, 16, 0x7FFF, 0x7C00),
    torch.bfloat16: (torch.int16, 16, 0x7FFF, 0x7F80),
}
MIN_SIZE = 1 << 16
"""Smaller Top-K groups are left to `torch.kthvalue`, which is faster there (the radix select has a
fixed cost of about 80 µs, its histograms). The element-wise kernels pay off at every size (a fused
threshold-and-count: 2 µs for 576 entries against 9 µs as torch ops)."""


@functools.cache
def _load() -> Any:
    try:
        from swat_fx import cpu_kernels
    except ImportError:
        return None
    return cpu_kernels


def kernels() -> Any:
    """`swat_fx.cpu_kernels` (None without numba, or while torch.compile traces); numba compiles each
    kernel on first use and caches it."""
    return None if torch.compiler.is_compiling() else _load()


def available(t: torch.Tensor) -> bool:
    """Whether `kth_largest_magnitude` runs for `t` (a CPU float tensor, numba installed)."""
    return t.device.type == "cpu" and t.dtype in _LAYOUT and kernels() is not None


_MANTISSA = {torch.float32: 23, torch.float64: 52}  # the dtypes a bracket serves: the others take one pass anyway


class Bracket:
    """Where a site's last exact thresholds lay, to find the next ones in one pass instead of two.

    Between steps a threshold moves little, so the k-th largest usually lies within a small window of
    bit patterns around the last one: one pass counts the entries above the window and copies those
    inside it (a fraction of a percent), and the k-th largest is selected among the copies. Where it
    is not inside, the radix passes run as without a bracket, and the window widens. A bracket is a
    hint only: the threshold is exact whatever it holds. It is not saved; it starts empty, for one
    group (an unstructured site's); a selection of another group count resizes it, in eager mode.
    Its two int64 CPU tensors are updated in place, so a compiled step hands them to the select op.
    """

    def __init__(self, rows: int = 1) -> None:
        self.previous = torch.empty(0, dtype=torch.int64)
        """Per group: the last threshold's bit pattern, -1 for none (the first selection, a threshold of
        zero or beyond the finite ones)."""
        self.widths = torch.empty(0, dtype=torch.int64)
        """Per group: the window's half-width in bit patterns, 0 for the dtype's default."""
        self.resize(rows)

    @classmethod
    def of(cls, previous: torch.Tensor, widths: torch.Tensor) -> Bracket:
        """A bracket over these tensors (not copied: the select op's arguments)."""
        bracket = cls(0)
        bracket.previous, bracket.widths = previous, widths
        return bracket

    def fits(self, rows: int) -> bool:
        return self.previous.shape[0] == rows

    def resize(self, rows: int) -> None:
        """Empty, for `rows` groups."""
        self.previous = torch.full((rows,), -1, dtype=torch.int64)
        self.widths = torch.zeros(rows, dtype=torch.int64)

    def clear(self) -> None:
        """Forget the last thresholds (in place: a compiled graph keeps reading the same tensors)."""
        self.previous.fill_(-1)
        self.widths.zero_()


def kth_largest_magnitude(groups: torch.Tensor, k: int, bracket: Bracket | None = None) -> torch.Tensor:
    """The k-th largest |v| of each row of a [G, n] tensor (NaN as +inf), exactly; shape [G], `groups`'
    dtype. Needs `available(groups)`. `bracket`: where the last thresholds lay, used and updated for
    float32/float64 (one pass where they moved little); resized where it does not fit the groups."""
    if bracket is not None and not bracket.fits(groups.shape[0]):
        bracket.resize(groups.shape[0])
    compiled = kernels()
    view, width, abs_mask, inf_bits = _LAYOUT[groups.dtype]
    bits = groups.detach().contiguous().view(view).numpy()
    if bracket is None or groups.dtype not in _MANTISSA:
        patterns = _radix_select(compiled, bits, k, width, abs_mask)
    else:
        patterns = _bracketed_select(compiled, bits, k, bracket.previous.numpy(), bracket.widths.numpy(), groups.dtype)
    # NaN patterns lie above +inf's: a selection that reached one is +inf (NaN ranks as +inf)
    integer = torch.from_numpy(np.minimum(patterns, inf_bits)).to(view)
    return integer.view(groups.dtype)


def _bracketed_select(compiled: Any, bits: np.ndarray, k: int, previous: np.ndarray, widths: np.ndarray,
                      dtype: torch.dtype) -> np.ndarray:
    """The rows' k-th largest magnitude patterns: in one pass where the bracket (`previous`, `widths`,
    updated in place) holds them, by the radix passes elsewhere."""
    _, width, abs_mask, inf_bits = _LAYOUT[dtype]
    rows, n = bits.shape
    mantissa = _MANTISSA[dtype]
    candidates = np.empty(max(n // 16, 1024), bits.dtype)  # a fuller bracket is a miss: radix is faster there
    patterns, tried, found = compiled.bracketed_kth(bits, k, previous, widths, 1 << (mantissa - 8),  # about ±0.4 %
                                                    bits.dtype.type(abs_mask), candidates)
    if not found.all():
        missed = np.flatnonzero(~found)
        rest = bits if missed.shape[0] == rows else bits[missed]
        patterns[missed] = _radix_select(compiled, rest, k, width, abs_mask)
    compiled.update_brackets(previous, widths, patterns, found, tried, 1 << (mantissa - 8), 1 << (mantissa - 10),
                             1 << (mantissa - 2), inf_bits)
    return patterns


def _radix_select(compiled: Any, bits: np.ndarray, k: int, width: int, abs_mask: int) -> np.ndarray:
    """The rows' k-th largest magnitude patterns, a 16-bit digit a pass."""
    rows = bits.shape[0]
    prefixes = np.zeros(rows, np.int64)
    ranks = np.full(rows, k, np.int64)
    for shift in range(width - _DIGIT, -1, -_DIGIT):
        prefix_shift = shift + _DIGIT if shift + _DIGIT < width else 63
        histograms = compiled.digit_histograms(bits, shift, prefix_shift, prefixes, abs_mask)
        digits, ranks = compiled.pick_digits(histograms, ranks)
        prefixes = (prefixes << _DIGIT) | digits
        if shift and not prefixes.any() and _ranks_reach_zero(compiled, bits, abs_mask, histograms, ranks):
            return np.zeros(rows, np.int64)
    return prefixes


def _ranks_reach_zero(compiled: Any, bits: np.ndarray, abs_mask: int, histograms: np.ndarray,
                      ranks: np.ndarray) -> bool:
    """Whether every row's k-th largest is a zero, the row's lowest digit holding it: a threshold of
    zero (a ReLU's output at a density above its non-zero share) then needs no pass over the digits'
    zeros, where a branch per entry on random zeros would cost several times a plain pass."""
    nonzero = histograms[:, 0] - compiled.count_zero_magnitudes(bits, abs_mask)
    return bool((ranks > nonzero).all())


@torch.library.custom_op("swat_fx::kth_largest_magnitude", mutates_args=("previous", "widths"))
def kth_largest_magnitude_op(groups: torch.Tensor, k: int, needed: torch.Tensor | None = None,
                             previous: torch.Tensor | None = None, widths: torch.Tensor | None = None) -> torch.Tensor:
    """`kth_largest_magnitude` as an op torch.compile keeps whole (it cannot trace numba): the radix
    select where it runs, `torch.kthvalue` elsewhere. `needed`, a CPU bool tensor: whether the result
    is used (a compiled step between refreshes selects the stored threshold instead), else zeros
    come back without a pass over the data. `previous`, `widths`: a `Bracket`'s tensors, where it fits
    the groups (used and updated in place)."""
    if needed is not None and needed.device.type == "cpu" and not bool(needed):
        return groups.new_zeros(groups.shape[0])
    if available(groups):
        usable = previous is not None and widths is not None and previous.shape[0] == groups.shape[0]
        return kth_largest_magnitude(groups, k, Bracket.of(previous, widths) if usable else None)
    magnitudes = torch.nan_to_num(groups.abs(), nan=torch.inf, posinf=torch.inf)
    return magnitudes.kthvalue(groups.shape[1] - k + 1, dim=1).values


@kth_largest_magnitude_op.register_fake
def _(groups: torch.Tensor, k: int, needed: torch.Tensor | None = None, previous: torch.Tensor | None = None,
      widths: torch.Tensor | None = None) -> torch.Tensor:
    return groups.new_empty(groups.shape[0])


def compiled_for(t: torch.Tensor) -> Any:
    """`swat_fx.cpu_kernels` where its element-wise kernels take `t` (a non-empty contiguous
    float32/float64 CPU tensor, numba installed, not under torch.compile), else None."""
    if (t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or not t.is_contiguous()
            or t.numel() == 0):
        return None
    return kernels()


def bit_patterns(t: torch.Tensor) -> np.ndarray:
    """The flat bit patterns of a contiguous CPU float tensor, as a numpy integer view of its memory."""
    return t.view(_LAYOUT[t.dtype][0]).view(-1).numpy()


def threshold_scalar(tau: torch.Tensor, dtype: torch.dtype) -> np.generic:
    """A one-element CPU threshold as the numpy scalar a kernel compares `dtype` values with (host
    memory: nothing to synchronise)."""
    return tau.detach().reshape(()).to(dtype).numpy()[()]


def threshold_and_count(t: torch.Tensor, tau: torch.Tensor,
                        out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(`t` with |v| < tau zeroed, NaN kept; the number of entries kept, a 0-d int64 tensor): one pass
    instead of the compare, the product and the count. `tau` is a one-element CPU tensor, read as such
    (host memory: nothing to synchronise). `out`, where given, receives the result (contiguous, `t`'s
    shape and dtype). Needs `compiled_for(t)`."""
    if out is None:
        out = torch.empty_like(t, requires_grad=False)
    kept = compiled_for(t).threshold_and_count(t.detach().view(-1).numpy(), out.view(-1).numpy(),
                                               threshold_scalar(tau, t.dtype))
    return out, torch.tensor(kept)

