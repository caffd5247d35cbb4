"""The experiments' figures, drawn with matplotlib from their rows (in memory or read back from a CSV).

matplotlib is imported inside the functions, and figures are drawn on a bare `Figure` (no pyplot, no
display, no change to a notebook's backend), so `import swat_fx` never needs matplotlib. Each CSV kind
is recognised from its columns, so `swat-fx plot results.csv` re-draws any experiment.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from swat_fx.lab.training import EpochLog
from swat_fx.monitor import COLUMNS as MONITOR_COLUMNS

FORMATS: tuple[str, ...] = (".png", ".pdf", ".svg")
_GRID = ("sparsity", "accuracy", "delta", "achieved_sparsity", "seconds")
# The columns of each experiment's CSV, in order: they identify the kind when a CSV is read back.
COLUMNS: dict[str, tuple[str, ...]] = {
    "train": ("run", *(f.name for f in fields(EpochLog))),
    "sweep": ("algorithm", *_GRID),
    "sensitivity": ("site", *_GRID),
    "granularity": ("granularity", *_GRID),
    "periodic": ("period", *MONITOR_COLUMNS),
    "monitor": MONITOR_COLUMNS,
    "angle": ("panel", "label", "topk_percent", "angle", "fraction", "std"),
}
Row = Mapping[str, Any]

_MARKERS = {"swat": "*", "saw": "o", "meprop": "x"}
_ROLE_STYLE = {"weight": "-", "input": "--", "grad": ":"}
_FORWARD_SITES = ("fw_w", "fw_a")


def require() -> None:
    """Fail early, with the install hint, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ValueError("plots need matplotlib: pip install 'swat-fx[plot]'") from error


def _num(value: Any) -> float:
    return math.nan if value in ("", None) else float(value)


def _groups(rows: Iterable[Row], *keys: str) -> dict[tuple[str, ...], list[Row]]:
    """Rows grouped by the string value of `keys`, in order of first appearance."""
    groups: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(str(row[k]) for k in keys)].append(row)
    return groups


def _xy(rows: Sequence[Row], x: str, y: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    pairs = sorted((_num(r[x]), _num(r[y]) * scale) for r in rows)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _figure(panels: int, title: str, sharey: bool = False) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels + 0.8, 3.6))
    axes = fig.subplots(1, panels, squeeze=False, sharey=sharey)
    fig.suptitle(title)
    return fig, list(axes[0])


# ----------------------------------------------------------------------------------------------- kinds


def _train(rows: Sequence[Row]) -> Any:
    fig, (acc, loss) = _figure(2, "Validation curve")
    for (label,), group in _groups(rows, "run").items():
        (line,) = acc.plot(*_xy(group, "epoch", "test_accuracy", 100), marker=".", label=f"{label} (test)")
        acc.plot(*_xy(group, "epoch", "train_accuracy", 100), color=line.get_color(), linestyle="--", alpha=0.5,
                 label=f"{label} (train)")
        loss.plot(*_xy(group, "epoch", "loss"), color=line.get_color(), marker=".", label=label)
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    for ax in (acc, loss):
        ax.legend(fontsize="small")
    return fig


def _accuracy_lines(ax: Any, rows: Sequence[Row], key: str, y: str, labels: Iterable[str] | None = None) -> None:
    """One line per label of `key`, `y` (as %) against sparsity (%); the dense baseline as a dashed line."""
    groups = _groups(rows, key)
    dense = groups.pop(("dense",), [])
    wanted = set(labels) if labels is not None else None
    for (label,), group in groups.items():
        if wanted is None or label in wanted:
            ax.plot(*_xy(group, "sparsity", y, 100), marker=_MARKERS.get(label, "o"), markersize=8, label=label)
    if dense:
        ax.axhline(_num(dense[0][y]) * 100, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_xticks(sorted({_num(r["sparsity"]) for r in rows} - {0.0}))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v * 100:g}")
    ax.legend(fontsize="small")


def _grid(title: str, key: str) -> Callable[[Sequence[Row]], Any]:
    def draw(rows: Sequence[Row]) -> Any:
        fig, (ax,) = _figure(1, title)
        _accuracy_lines(ax, rows, key, "accuracy")
        ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)")
        return fig
    return draw


def _sensitivity(rows: Sequence[Row]) -> Any:
    fig, axes = _figure(2, "Sensitivity: one site sparsified at a time", sharey=True)
    backward = {str(r["site"]) for r in rows} - set(_FORWARD_SITES) - {"dense"}
    for ax, (part, sites) in zip(axes, (("forward", _FORWARD_SITES), ("backward", sorted(backward))), strict=True):
        _accuracy_lines(ax, rows, "site", "delta", sites)
        ax.set(xlabel="sparsity (%)", ylabel="accuracy change vs dense (points)", title=f"{part} pass")
    return fig


def _site_lines(ax: Any, rows: Sequence[Row], y: str, transform: Callable[[float], float] = float) -> None:
    for (layer, role), group in _groups(rows, "layer", "role").items():
        xs, ys = _xy(group, "step", y)
        ax.plot(xs, [transform(v) for v in ys], linestyle=_ROLE_STYLE.get(role, "-"), linewidth=1,
                marker="." if len(xs) < 20 else None, label=f"{layer} {role}")


def _periodic(rows: Sequence[Row]) -> Any:
    periods = _groups(rows, "period")
    fig, axes = _figure(len(periods), "Achieved sparsity with periodic Top-K", sharey=True)
    for ax, ((period,), group) in zip(axes, periods.items(), strict=True):
        _site_lines(ax, group, "density", lambda d: 100 * (1 - d))
        ax.axhline(100 * (1 - _num(group[0]["target_density"])), color="black", linestyle="--", linewidth=1,
                   label="target")
        ax.set(xlabel="training step", ylabel="achieved sparsity (%)", title=f"period {period}")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend(fontsize="x-small", ncol=2)
    return fig


def _monitor(rows: Sequence[Row]) -> Any:
    has_angle = any(not math.isnan(_num(r["angle"])) for r in rows)
    fig, axes = _figure(3 if has_angle else 2, "SWAT sites during training")
    _site_lines(axes[0], rows, "threshold")
    axes[0].set(xlabel="training step", ylabel="Top-K threshold", yscale="log", title="threshold (K-th largest)")
    _site_lines(axes[1], rows, "nonzero", lambda d: 100 * d)
    axes[1].set(xlabel="training step", ylabel="non-zeros kept (%)", title="density")
    if has_angle:
        _site_lines(axes[2], rows, "angle")
        axes[2].set(xlabel="training step", ylabel="angle (degrees)", title="sparsification angle")
    for ax in axes:
        ax.legend(fontsize="x-small")
    return fig


def _angle(rows: Sequence[Row]) -> Any:
    panels = _groups(rows, "panel")
    fig, (hist, delta, curve) = _figure(3, "Sparsification angle of random 1000-d vectors")
    for (label,), group in _groups(panels[("histogram",)], "label").items():
        xs, ys = _xy(group, "angle", "fraction", 100)
        hist.plot(xs, ys, drawstyle="steps-mid", linestyle="--" if label == "random" else "-", label=label)
    hist.set(xlabel="angle (degrees)", ylabel="trials (%)", title="angle distribution")
    d = panels[("delta",)]
    delta.errorbar([_num(r["angle"]) for r in d], [_num(r["topk_percent"]) for r in d],
                   yerr=[_num(r["std"]) for r in d], marker="o", capsize=3, label="mean ± std over trials")
    delta.set(xlabel="δ (degrees)", ylabel="Top-K needed (%)", title="Top-K % for angle ≤ δ")
    xs, mean = _xy(panels[("curve",)], "topk_percent", "angle")
    _, std = _xy(panels[("curve",)], "topk_percent", "std")
    curve.plot(xs, mean, label="mean")
    curve.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                       [m + s for m, s in zip(mean, std, strict=True)], alpha=0.3, label="± std")
    curve.set(xlabel="Top-K (%)", ylabel="angle (degrees)", title="angle vs Top-K")
    for ax in (hist, delta, curve):
        ax.legend(fontsize="small")
    return fig


_DRAWERS: dict[str, Callable[[Sequence[Row]], Any]] = {
    "train": _train,
    "sweep": _grid("Accuracy vs sparsity", "algorithm"),
    "sensitivity": _sensitivity,
    "granularity": _grid("Top-K granularity", "granularity"),
    "periodic": _periodic,
    "monitor": _monitor,
    "angle": _angle,
}


def plot(kind: str, rows: Sequence[Row], png: str | os.PathLike[str]) -> Path:
    """Draw the figure of experiment `kind` from its rows and save it to `png`."""
    if kind not in _DRAWERS:
        raise ValueError(f"unknown plot kind {kind!r}; valid kinds: {', '.join(_DRAWERS)}")
    if not rows:
        raise ValueError(f"nothing to plot for {kind}: no rows")
    fig = _DRAWERS[kind](rows)
    fig.tight_layout()
    if Path(png).suffix.lower() == ".png":
        _save_small_png(fig, png)
    else:
        fig.savefig(png)
    return Path(png)


def _save_small_png(fig: Any, png: str | os.PathLike[str]) -> None:
    """A 256-colour PNG: line plots look the same at a fraction of the size (small enough to commit)."""
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(png, optimize=True)


def kind_of(columns: Sequence[str]) -> str:
    """The experiment kind of a CSV with these columns."""
    for kind, expected in COLUMNS.items():
        if tuple(columns) == expected:
            return kind
    raise ValueError(f"columns {', '.join(columns)} match no experiment (known: {', '.join(COLUMNS)})")


def plot_csv(path: str | os.PathLike[str], png: str | os.PathLike[str] | None = None) -> Path:
    """Re-draw the figure of an experiment's CSV (to `png`, default: the CSV's path with `.png`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path}: no such file")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        try:
            kind = kind_of(reader.fieldnames or [])
        except ValueError as error:
            raise ValueError(f"CSV file {path}: {error}") from error
        rows = list(reader)
    if not rows:
        raise ValueError(f"CSV file {path}: has a header but no rows to plot")
    return plot(kind, rows, png if png is not None else path.with_suffix(".png"))
