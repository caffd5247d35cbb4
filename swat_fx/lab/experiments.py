"""The paper's experiments on a user's model and data, each writing a CSV and a PNG.

Every experiment is a parameterisation of one runner, `run`: build the model for the data, optionally
`swat_fx.transform` it, train it with `swat_fx.lab.training.train`. `sweep` (Fig. 4), `sensitivity`
(Fig. 2a/b) and `granularity` (Fig. 3) train a grid of configurations against one dense baseline and
record the final accuracies (`accuracy_grid`); `periodic` (Fig. 10) records the monitor's per-step
densities; `train` logs one or two runs per epoch; `angle` is the Fig. 9 study of `swat_fx.analysis`.

All inputs (output paths, configurations, the fit of the data to the model) are checked before any
training starts. CSV rows are written and flushed as they are produced, so an interrupted experiment
keeps the rows it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from swat_fx import models
from swat_fx.analysis import AngleStudy, angle_study
from swat_fx.config import GRANULARITIES, SITES, SwatConfig
from swat_fx.csv_log import CsvLog
from swat_fx.lab import plotting
from swat_fx.lab.data import Dataset
from swat_fx.lab.training import EpochCallback, EpochLog, TrainResult, achieved_sparsity
from swat_fx.lab.training import train as train_loop
from swat_fx.monitor import monitor
from swat_fx.transform import transform

PathLike = str | os.PathLike[str]
DEFAULT_CONFIG = SwatConfig()
Watch = Callable[[nn.Module], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class Settings:
    """How every run of an experiment trains (the same for the baseline and each configuration)."""

    model: str = "small_cnn"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    progress: bool = True


@dataclass
class Run:
    """One finished training run."""

    label: str
    model: nn.Module
    result: TrainResult
    seconds: float


# ------------------------------------------------------------------------------------ checks and runner


def check_output(path: PathLike | None, what: str, suffixes: Sequence[str]) -> Path | None:
    """`path` as a Path, once its folder exists (created if needed) and is writable; None stays None.

    Called before training, so a typo in an output path costs nothing.
    """
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path}: the file name must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot create its folder {path.parent} ({error.strerror})") from error
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path}: not writable")
    return path


def check_outputs(csv: PathLike | None, png: PathLike | None) -> tuple[Path | None, Path | None]:
    """The CSV and plot paths of an experiment, checked (and matplotlib present if a plot is asked for)."""
    png_path = check_output(png, "plot", plotting.FORMATS)
    if png_path is not None:
        plotting.require()
    return check_output(csv, "CSV", (".csv",)), png_path


def build_model(name: str, data: Dataset) -> nn.Module:
    """The registered model `name` sized for `data` (classes, input channels or features), after
    checking on two samples that the data fits it."""
    if name not in models.MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(models.MODELS))}")
    accepted = inspect.signature(models.MODELS[name]).parameters
    shape = data.input_shape
    sizes = {"num_classes": data.num_classes, "in_features": math.prod(shape),
             "in_channels": shape[0] if len(shape) >= 2 else None, "image_size": shape[-1]}
    model = models.build(name, **{k: v for k, v in sizes.items() if k in accepted and v is not None})
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_train[:2])
    except (RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"dataset {data.name}: samples of shape {list(shape)} do not fit model {name} "
                         f"({reason})") from error
    if tuple(out.shape) != (len(data.x_train[:2]), data.num_classes):
        raise ValueError(f"dataset {data.name}: model {name} outputs shape {list(out.shape[1:])} per sample, "
                         f"expected {data.num_classes} class scores")
    return model.train()


def run(
    data: Dataset,
    settings: Settings,
    config: SwatConfig | None,
    label: str,
    callbacks: Iterable[EpochCallback] = (),
    watch: Watch | None = None,
) -> Run:
    """Train `settings.model` on `data`, transformed by `config` (dense if None), from a fixed seed.

    `watch(model)` may return a context manager held around training (e.g. a `swat_fx.monitor`).
    """
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, data)
    if config is not None:
        model = transform(model, config=config)
    start = time.perf_counter()
    with watch(model) if watch is not None else contextlib.nullcontext():
        result = train_loop(model, data, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                            seed=settings.seed, progress=settings.progress, desc=label, callbacks=callbacks)
    return Run(label, model, result, time.perf_counter() - start)


class _Rows:
    """Rows kept in memory and, if a path is given, streamed to a CSV."""

    def __init__(self, path: Path | None, columns: Sequence[str]) -> None:
        self.rows: list[dict[str, Any]] = []
        self._log = CsvLog(path, columns) if path is not None else None

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._log is not None:
            self._log.write(row)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


@contextlib.contextmanager
def _outputs(csv: Path | None, png: Path | None, kind: str) -> Any:
    """Rows of `kind` to fill; on a normal exit they are plotted (an interrupted run keeps its CSV, no plot)."""
    rows = _Rows(csv, plotting.COLUMNS[kind])
    try:
        yield rows
    finally:
        rows.close()
    if png is not None:
        plotting.plot(kind, rows.rows, png)


# ------------------------------------------------------------------------------------------ experiments


def train(
    data: Dataset,
    settings: Settings = Settings(),
    config: SwatConfig | None = None,
    dense: bool = True,
    csv: PathLike | None = None,
    png: PathLike | None = None,
    monitor_csv: PathLike | None = None,
    angle: bool = False,
    callbacks: Iterable[EpochCallback] = (),
) -> list[Run]:
    """The dense baseline (unless `dense=False`) then the SWAT run of `config`; per-epoch CSV rows
    (`plotting.COLUMNS["train"]`) and a validation-curve plot; `monitor_csv` records the SWAT run per step."""
    config = config if config is not None else DEFAULT_CONFIG
    csv_path, png_path = check_outputs(csv, png)
    monitor_path = check_output(monitor_csv, "monitor CSV", (".csv",))
    if monitor_path is not None and not (config.active_sites and config.sparsity > 0):
        raise ValueError(f"monitor CSV {monitor_path}: the {config.name} run at sparsity {config.sparsity:g} "
                         "sparsifies nothing to monitor")
    build_model(settings.model, data)
    arms: list[tuple[str, SwatConfig | None]] = [("dense", None)] if dense else []
    arms.append((f"{config.name} {config.sparsity:.0%}", config))
    runs = []
    with _outputs(csv_path, png_path, "train") as rows:
        for label, arm_config in arms:
            def log_epoch(log: EpochLog, label: str = label) -> None:
                rows.write({"run": label, **asdict(log)})

            watch = _monitor_to(monitor_path, angle) if arm_config is not None else None
            runs.append(run(data, settings, arm_config, label, [log_epoch, *callbacks], watch))
    return runs


def _monitor_to(path: Path | None, angle: bool) -> Watch | None:
    """A watch that streams a monitor of the run to `path` (None: no monitor)."""
    if path is None:
        return None
    return lambda model: monitor(model, angle=angle, csv=path)


def accuracy_grid(
    data: Dataset,
    settings: Settings,
    kind: str,
    points: Sequence[tuple[str, SwatConfig]],
    csv: PathLike | None,
    png: PathLike | None,
) -> list[dict[str, Any]]:
    """Train the dense baseline, then every (label, config) point; one row per run: the label (in the
    kind's first column: algorithm, site or granularity; "dense" for the baseline), sparsity, final
    accuracy, its change from dense, achieved sparsity, seconds."""
    key = plotting.COLUMNS[kind][0]
    csv_path, png_path = check_outputs(csv, png)
    build_model(settings.model, data)
    quiet = dataclasses.replace(settings, progress=False)
    bar = tqdm(total=len(points) + 1, desc=kind, disable=not settings.progress)
    with bar, _outputs(csv_path, png_path, kind) as rows:
        baseline: float | None = None
        for label, config in [("dense", None), *points]:
            done = run(data, quiet, config, label)
            accuracy = done.result.accuracy
            baseline = accuracy if baseline is None else baseline
            rows.write({key: label, "sparsity": config.sparsity if config else 0.0, "accuracy": accuracy,
                        "delta": accuracy - baseline, "achieved_sparsity": achieved_sparsity(done.model),
                        "seconds": done.seconds})
            bar.update()
            bar.set_postfix_str(f"{label} {rows.rows[-1]['sparsity']:.0%}: {accuracy:.2%}")
    return rows.rows


def _configs(label_configs: Iterable[tuple[str, dict[str, Any]]], sparsities: Sequence[float],
             base: SwatConfig) -> list[tuple[str, SwatConfig]]:
    """(label, config) for each labelled variation of `base` at each sparsity (all validated here)."""
    return [(label, base.replace(sparsity=s, **changes)) for label, changes in label_configs for s in sparsities]


def sweep(
    data: Dataset,
    settings: Settings = Settings(),
    algorithms: Sequence[str] = ("swat", "saw", "meprop"),
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
    base: SwatConfig = DEFAULT_CONFIG,
    csv: PathLike | None = None,
    png: PathLike | None = None,
) -> list[dict[str, Any]]:
    """Accuracy vs sparsity for several algorithms, against the dense baseline (Fig. 4)."""
    points = _configs([(a, {"algorithm": a}) for a in algorithms], sparsities, base)
    return accuracy_grid(data, settings, "sweep", points, csv, png)


def sensitivity(
    data: Dataset,
    settings: Settings = Settings(),
    sites: Sequence[str] = SITES,
    sparsities: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    base: SwatConfig = DEFAULT_CONFIG,
    csv: PathLike | None = None,
    png: PathLike | None = None,
) -> list[dict[str, Any]]:
    """Sparsify one site at a time: how much accuracy each of fw_w, fw_a, bw_w, bw_a, bw_g costs (Fig. 2a/b)."""
    points = _configs([(site, {"sites": {site}}) for site in sites], sparsities, base)
    return accuracy_grid(data, settings, "sensitivity", points, csv, png)


def granularity(
    data: Dataset,
    settings: Settings = Settings(),
    granularities: Sequence[str] = GRANULARITIES,
    sparsities: Sequence[float] = (0.7, 0.9),
    base: SwatConfig = DEFAULT_CONFIG,
    csv: PathLike | None = None,
    png: PathLike | None = None,
) -> list[dict[str, Any]]:
    """The Top-K granularities compared at a few sparsities (Fig. 3), with `base`'s algorithm."""
    points = _configs([(g, {"granularity": g}) for g in granularities], sparsities, base)
    return accuracy_grid(data, settings, "granularity", points, csv, png)


def periodic(
    data: Dataset,
    settings: Settings = Settings(),
    periods: Sequence[int] = (1, 100),
    sparsity: float = 0.9,
    base: SwatConfig = DEFAULT_CONFIG,
    every: int = 1,
    csv: PathLike | None = None,
    png: PathLike | None = None,
) -> list[dict[str, Any]]:
    """The achieved density of every site at every step (one in `every`) for each Top-K period (Fig. 10)."""
    configs = [(f"period {p}", base.replace(sparsity=sparsity, period=p)) for p in periods]
    csv_path, png_path = check_outputs(csv, png)
    build_model(settings.model, data)
    with _outputs(csv_path, png_path, "periodic") as rows:
        for (label, config), period in zip(configs, periods, strict=True):
            def watch(model: nn.Module, period: int = period) -> Any:
                return monitor(model, every=every, on_record=lambda r: rows.write({"period": period, **asdict(r)}))
            run(data, settings, config, label, watch=watch)
    return rows.rows


def angle(csv: PathLike | None = None, png: PathLike | None = None, **options: Any) -> AngleStudy:
    """The Fig. 9 study: `swat_fx.analysis.angle_study(**options)`, written as the rows of `angle_rows`."""
    csv_path, png_path = check_outputs(csv, png)
    study = angle_study(**options)
    with _outputs(csv_path, png_path, "angle") as rows:
        for row in angle_rows(study):
            rows.write(row)
    return study


def angle_rows(study: AngleStudy, bin_width: float = 0.5) -> list[dict[str, Any]]:
    """The study as long-format rows: panel `curve` (mean/std angle per Top-K %), `delta` (mean/std Top-K %
    needed per δ, in `angle`), `histogram` (fraction of trials per angle bin, per Top-K % or "random")."""
    rows: list[dict[str, Any]] = [
        {"panel": "curve", "label": "", "topk_percent": p, "angle": m, "fraction": "", "std": s}
        for p, m, s in zip(study.percents, study.mean_angle, study.std_angle, strict=True)
    ]
    rows += [{"panel": "delta", "label": "", "topk_percent": m, "angle": d, "fraction": "", "std": s}
             for d, m, s in zip(study.deltas, study.needed_mean, study.needed_std, strict=True)]
    samples = {f"top-{p:g}%": (p, a) for p, a in study.distributions.items()}
    samples["random"] = ("", study.random_angles)
    top = max(float(a.max()) for _, a in samples.values())
    bins = np.arange(0.0, top + bin_width, bin_width)
    for label, (percent, angles) in samples.items():
        counts, _ = np.histogram(angles, bins)
        rows += [{"panel": "histogram", "label": label, "topk_percent": percent, "angle": b + bin_width / 2,
                  "fraction": c / len(angles), "std": ""} for b, c in zip(bins[:-1], counts, strict=True) if c]
    return rows


def plot(csv: PathLike, png: PathLike | None = None) -> Path:
    """Re-draw any experiment's plot from its CSV (the kind is recognised from the columns)."""
    return plotting.plot_csv(csv, png)
