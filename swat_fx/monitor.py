"""`monitor`: what each SWAT site did at every training step — density kept, Top-K threshold, angle.

The monitor only adds hooks to the `TopK` site modules of a transformed model (the core is unchanged),
and only while it is on, so an unmonitored run pays nothing. Per step and site it records the density
the mask kept, the fraction of non-zeros left in the sparsified tensor, the threshold in force (the
mean over groups for per-filter/per-sample granularities; Fig. 6b) and, on request, the sparsification
angle between the tensor and its sparsified version (Fig. 9e).

    with swat_fx.monitor(model, angle=True, csv="steps.csv") as steps:
        train(model, ...)
    steps.records[-1]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from swat_fx.analysis import angle_between
from swat_fx.backends.eager.operands import Operand, to_dense
from swat_fx.contract import sites
from swat_fx.csv_log import CsvLog
from swat_fx.topk import TopK


@dataclass(frozen=True)
class SiteRecord:
    """One site at one training step. `density`: fraction the mask kept; `nonzero`: fraction of non-zero
    entries in the sparsified tensor (lower when the tensor had zeros, e.g. after a ReLU); `threshold`:
    the mean Top-K threshold in force (NaN before one exists); `angle`: degrees, NaN unless asked for."""

    step: int
    layer: str
    role: str
    target_density: float
    density: float
    nonzero: float
    threshold: float
    angle: float


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SiteRecord))


class Monitor:
    """Records a `SiteRecord` per site every `every` training steps while started (a context manager):
    once per training iteration, from the site's first call (not from a checkpoint recompute)."""

    def __init__(self, model: nn.Module, angle: bool = False, every: int = 1,
                 csv: str | os.PathLike[str] | None = None,
                 on_record: Callable[[SiteRecord], None] | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (record one step in `every`), got {every!r}")
        self.sites = list(sites(model))
        if not self.sites:
            raise ValueError("the model has no SWAT sites to monitor: pass a model returned by "
                             "swat_fx.transform with sparsity > 0 and a non-dense algorithm")
        self.angle = angle
        self.every = every
        self.csv = csv
        self.on_record = on_record
        self.records: list[SiteRecord] = []
        self._log: CsvLog | None = None
        self._handles: list[RemovableHandle] = []

    def start(self) -> Monitor:
        """Attach the hooks (and open the CSV, written row by row)."""
        if self._handles:
            return self
        if self.csv is not None:
            self._log = CsvLog(self.csv, COLUMNS)
        for layer, site in self.sites:
            if site.role == "grad":
                self._watch_gradient(layer, site)
            else:
                self._handles.append(site.register_forward_hook(self._forward_hook(layer)))
        return self

    def stop(self) -> None:
        """Remove every hook; the records stay."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        with CsvLog(path, COLUMNS) as log:
            for record in self.records:
                log.write(asdict(record))

    def to_json(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as file:
            json.dump([asdict(r) for r in self.records], file, allow_nan=True)

    def _due(self, site: TopK) -> bool:
        """In training mode, on a recorded step (`site.step` is the index of the step about to run)."""
        return site.training and int(site.step) % self.every == 0

    def _forward_hook(self, layer: str) -> Callable[..., None]:
        def hook(site: TopK, args: tuple[Any, ...], output: Operand | None) -> None:
            if output is not None and site.wrote_state and (int(site.step) - 1) % self.every == 0:
                self._record(int(site.step) - 1, layer, site, args[0], to_dense(output))
        return hook

    def _watch_gradient(self, layer: str, site: TopK) -> None:
        """meProp's site masks G in a tensor hook it adds during its forward: a hook added before it (in a
        pre-hook) sees G, one added after it (in a forward hook) sees G_s and the updated site state."""
        call: list[tuple[int, list[torch.Tensor]]] = []  # the step and G of the call in progress

        def before(site: TopK, args: tuple[Any, ...]) -> None:
            call.clear()
            t = args[0]
            if self._due(site) and t.requires_grad:
                grad: list[torch.Tensor] = []
                t.register_hook(grad.append)
                call.append((int(site.step), grad))

        def after(site: TopK, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if call and not site.wrote_state:  # a recompute or a second call of the iteration: recorded once
                call.clear()
            if call:
                step, grad = call.pop()
                output.register_hook(lambda grad_s: self._record(step, layer, site, grad.pop(), grad_s))

        self._handles.append(site.register_forward_pre_hook(before))
        self._handles.append(site.register_forward_hook(after))

    def _record(self, step: int, layer: str, site: TopK, dense: torch.Tensor, sparse: torch.Tensor) -> None:
        """`sparse` is the site's output as a zero-filled tensor (a kernel may get it in a compact format)."""
        threshold = site.threshold
        record = SiteRecord(
            step=step, layer=layer, role=site.role, target_density=site.target_density,
            density=float(site.density),
            nonzero=float(torch.count_nonzero(sparse)) / max(1, sparse.numel()),
            threshold=float(threshold.float().mean()) if threshold.numel() else math.nan,
            angle=angle_between(dense, sparse) if self.angle else math.nan,
        )
        self.records.append(record)
        if self._log is not None:
            self._log.write(asdict(record))
        if self.on_record is not None:
            self.on_record(record)


def monitor(model: nn.Module, angle: bool = False, every: int = 1,
            csv: str | os.PathLike[str] | None = None,
            on_record: Callable[[SiteRecord], None] | None = None) -> Monitor:
    """A `Monitor` of every SWAT site of `model` (use it as a context manager, or `start()`/`stop()`).

    `angle=True` also records the sparsification angle (one extra reduction per site and step);
    `every=N` records one training step in N; `csv=` streams the records to a CSV file as they come,
    and `on_record` receives each `SiteRecord` as it is made.
    """
    return Monitor(model, angle=angle, every=every, csv=csv, on_record=on_record)
