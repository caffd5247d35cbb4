"""`TensorRef`: one tensor an IR node reads or writes, with what its DRAM footprint depends on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from swat_fx.backends.accel.formats import FORMATS, stored_bytes

TENSOR_KINDS = ("activation", "param", "grad", "state")


@dataclass(frozen=True)
class TensorRef:
    """`name` identifies the tensor within the step (the same activation read by two nodes has one
    name); `producer` is the IR node that writes it (None for inputs, parameters and optimizer state);
    `saved` marks a forward activation that a backward node reads, so it is kept from forward to
    backward; `density` is the fraction of non-zero entries (1 unless a Top-K produced it); `origin`
    names the dense tensor a sparse one was cut from (the tensor a dense run would use instead)."""

    name: str
    role: str
    kind: str
    shape: tuple[int, ...]
    itemsize: float
    density: float = 1.0
    producer: str | None = None
    saved: bool = False
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.origin:
            object.__setattr__(self, "origin", self.name)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def nbytes(self, fmt: str) -> float:
        return stored_bytes(self.shape, self.density, self.itemsize, fmt)

    def replace(self, **changes: Any) -> TensorRef:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["shape"] = list(self.shape)
        fields.update({f"bytes_{fmt}": self.nbytes(fmt) for fmt in FORMATS})
        return fields
