"""Every `swat-fx` command end to end in a tiny configuration: the CSV it writes and the PNG it draws."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from swat_fx.lab import plotting
from swat_fx.lab.cli import main
from swat_fx.monitor import COLUMNS as MONITOR_COLUMNS

TINY = ["--dataset", "synthetic", "--max-samples", "48", "--batch-size", "16", "--epochs", "1", "--quiet"]


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def assert_drawn(png: Path) -> None:
    """The PNG opens, and is not blank: it has dark pixels (lines, text) on a light background."""
    with Image.open(png) as image:
        gray = image.convert("L")
        assert image.width > 200 and image.height > 200
        histogram = gray.histogram()
    dark = sum(histogram[:128]) / (gray.width * gray.height)
    assert 0.005 < dark < 0.5, dark
    assert png.stat().st_size < 100_000


def _run(tmp_path: Path, command: str, *args: str, tiny: bool = True) -> tuple[list[str], list[dict[str, str]]]:
    out_csv, out_png = tmp_path / f"{command}.csv", tmp_path / f"{command}.png"
    argv = [command, *(TINY if tiny else []), *args, "--csv", str(out_csv), "--plot", str(out_png)]
    assert main(argv) == 0
    assert_drawn(out_png)
    columns, rows = _rows(out_csv)
    assert tuple(columns) == plotting.COLUMNS[command]
    return columns, rows


def test_train_logs_each_epoch_and_monitors_each_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rows = _run(tmp_path, "train", "--epochs", "2", "--monitor", str(tmp_path / "steps.csv"), "--angle")
    assert [(r["run"], r["epoch"]) for r in rows] == [("dense", "1"), ("dense", "2"), ("swat 70%", "1"),
                                                     ("swat 70%", "2")]
    assert float(rows[0]["sparsity"]) == 0 and float(rows[-1]["sparsity"]) == pytest.approx(0.7, abs=0.01)
    out = capsys.readouterr().out
    assert "dense" in out and "swat 70%" in out and "conv2" in out
    columns, steps = _rows(tmp_path / "steps.csv")
    assert tuple(columns) == MONITOR_COLUMNS
    assert len(steps) == 2 * 3 * 6  # epochs x steps per epoch x sites
    assert all(0 < float(s["angle"]) < 90 for s in steps)
    assert main(["plot", str(tmp_path / "steps.csv")]) == 0
    assert_drawn(tmp_path / "steps.png")


def test_train_one_run_of_another_model_and_algorithm(tmp_path: Path) -> None:
    _, rows = _run(tmp_path, "train", "--no-dense", "--model", "mlp", "--algorithm", "meprop", "--sparsity", "0.5",
                   "--granularity", "chw", "--period", "2")
    assert [r["run"] for r in rows] == ["meprop 50%"]


def test_sweep(tmp_path: Path) -> None:
    _, rows = _run(tmp_path, "sweep", "--algorithms", "swat", "saw", "--sparsities", "0.5", "0.8")
    assert [(r["algorithm"], float(r["sparsity"])) for r in rows] == [
        ("dense", 0.0), ("swat", 0.5), ("swat", 0.8), ("saw", 0.5), ("saw", 0.8)]


def test_sensitivity(tmp_path: Path) -> None:
    _, rows = _run(tmp_path, "sensitivity", "--sparsities", "0.8")
    assert [r["site"] for r in rows] == ["dense", "fw_w", "fw_a", "bw_w", "bw_a", "bw_g"]
    assert all(float(r["achieved_sparsity"]) == pytest.approx(0.8, abs=0.02) for r in rows[1:])


def test_granularity(tmp_path: Path) -> None:
    _, rows = _run(tmp_path, "granularity", "--sparsities", "0.6", "--algorithm", "saw", "--dense-last")
    assert [r["granularity"] for r in rows] == ["dense", "nchw", "chw", "hw", "kernel", "filter"]


def test_periodic(tmp_path: Path) -> None:
    _, rows = _run(tmp_path, "periodic", "--periods", "1", "2", "--sparsity", "0.9")
    assert len(rows) == 2 * 3 * 6  # periods x steps x sites
    assert {r["period"] for r in rows} == {"1", "2"}
    assert all(float(r["target_density"]) == pytest.approx(0.1) for r in rows)


def test_angle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rows = _run(tmp_path, "angle", "--dim", "100", "--trials", "50", "--deltas", "10", "20", tiny=False)
    panels = [r["panel"] for r in rows]
    assert panels.count("curve") == 100 and panels.count("delta") == 2 and "histogram" in panels
    assert "random" in {r["label"] for r in rows}
    assert "two independent ones are" in capsys.readouterr().out


def test_plot_redraws_every_kind(tmp_path: Path) -> None:
    _run(tmp_path, "sweep", "--algorithms", "meprop", "--sparsities", "0.5")
    (tmp_path / "sweep.png").unlink()
    assert main(["plot", str(tmp_path / "sweep.csv"), "-o", str(tmp_path / "again.png")]) == 0
    assert_drawn(tmp_path / "again.png")
    assert main(["plot", str(tmp_path / "sweep.csv")]) == 0
    assert_drawn(tmp_path / "sweep.png")
