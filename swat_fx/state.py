"""Checkpoints between a model and its SWAT form.

A transformed model's `state_dict()` is the original one (same parameter and buffer names) plus the
SWAT state under `swat.<layer>.<w|x|g>_topk.{step,threshold,density}`. Loading the original model's
checkpoint into the transformed model works as it is (the SWAT state then starts afresh); to go the
other way, drop the SWAT entries with `dense_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swat_fx.contract import is_state_key


def dense_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """`state_dict` without the SWAT entries: loadable into the original, untransformed model."""
    return {key: value for key, value in state_dict.items() if not is_state_key(key)}
