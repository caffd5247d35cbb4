"""`SwatConfig`: the one object that holds every option of a SWAT transform."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

SITES: tuple[str, ...] = ("fw_w", "fw_a", "bw_w", "bw_a", "bw_g")
ALGORITHMS: dict[str, frozenset[str]] = {
    "swat": frozenset({"fw_w", "bw_w", "bw_a"}),
    "saw": frozenset({"bw_w", "bw_a"}),
    "meprop": frozenset({"bw_g"}),
    "dense": frozenset(),
}
GRANULARITIES: tuple[str, ...] = ("nchw", "chw", "hw", "kernel", "filter")
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "erk")


def check_choice(option: str, value: Any, valid: Iterable[str]) -> None:
    """Raise a ValueError naming `option` and listing the valid values if `value` is not one of them."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"unknown {option} {value!r}; valid values are: {', '.join(map(repr, valid))}")


def check_sparsity(value: Any, what: str = "sparsity") -> float:
    """Return `value` as a float, or raise if it is not a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number in [0, 1), got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{what} must lie in [0, 1) (the fraction of entries dropped), got {value!r}; "
            "0 keeps the layer dense, values close to 1 keep very few entries"
        )
    return value


@dataclass(frozen=True)
class SwatConfig:
    """Every option of the SWAT graph `swat_fx.transform` builds, validated once at construction.

    Backend choices are not here: the eager storage choice is `transform(..., kernel=...)`.

    `algorithm` picks a preset set of sparsification sites (SPEC §2); `sites` gives them directly
    instead. Pass one or the other.
    """

    sparsity: float = 0.7
    algorithm: str | None = None
    sites: frozenset[str] | None = None
    granularity: str = "nchw"
    period: int = 1
    sparsify_first: bool = False
    sparsify_last: bool = True
    distribution: str = "uniform"
    layer_sparsity: Mapping[str, float] = field(default_factory=dict)
    sync_thresholds: bool = True
    leaf_modules: tuple[type[nn.Module] | str, ...] = ()
    concrete_args: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        set_(self, "sparsity", check_sparsity(self.sparsity))
        if self.algorithm is not None and self.sites is not None:
            raise ValueError("give either `algorithm` or `sites`, not both (`sites` defines a custom algorithm)")
        if self.sites is None:
            set_(self, "algorithm", self.algorithm or "swat")
            check_choice("algorithm", self.algorithm, ALGORITHMS)
        else:
            sites = frozenset([self.sites] if isinstance(self.sites, str) else self.sites)
            for site in sites:
                check_choice("site", site, SITES)
            set_(self, "sites", sites)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"period must be an integer >= 1 (steps between exact Top-K), got {self.period!r}")
        if not isinstance(self.sync_thresholds, bool):
            raise TypeError(f"sync_thresholds must be True or False, got {self.sync_thresholds!r}")
        overrides = {str(k): check_sparsity(v, f"layer_sparsity[{k!r}]") for k, v in self.layer_sparsity.items()}
        set_(self, "layer_sparsity", overrides)
        leaves = self.leaf_modules
        set_(self, "leaf_modules", (leaves,) if isinstance(leaves, (str, type)) else tuple(leaves))

    @property
    def active_sites(self) -> frozenset[str]:
        """The sparsification sites in force: the explicit `sites`, else the algorithm's preset."""
        return self.sites if self.sites is not None else ALGORITHMS[self.algorithm]

    @property
    def name(self) -> str:
        """The algorithm's name, or `custom(...)` for an explicit site set."""
        return self.algorithm if self.sites is None else f"custom({','.join(sorted(self.sites))})"

    def replace(self, **changes: Any) -> SwatConfig:
        """A copy with some options changed (validated again)."""
        if "sites" in changes and "algorithm" not in changes:
            changes["algorithm"] = None
        if "algorithm" in changes and "sites" not in changes:
            changes["sites"] = None
        return dataclasses.replace(self, **changes)
