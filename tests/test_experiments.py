"""Experiments as functions: data loading and validation, model sizing, outputs, Ctrl-C safety."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from swat_fx.lab import experiments, plotting
from swat_fx.lab.data import load_dataset, load_npz, synthetic
from swat_fx.lab.experiments import Settings
from swat_fx.lab.training import EpochLog

TINY = Settings(epochs=2, batch_size=16, progress=False)


def _data(samples: int = 48, shape: tuple[int, ...] = (1, 8, 8)):
    return synthetic(samples=samples, shape=shape).subset(samples)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_synthetic_is_seeded_and_learnable() -> None:
    a, b = synthetic(seed=3), synthetic(seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, synthetic(seed=4).x_train)
    run = experiments.run(synthetic(samples=400), Settings(epochs=4, progress=False), None, "dense")
    assert run.result.accuracy > 0.5


def test_npz_data_is_loaded_and_sized_to_the_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.random((40, 3, 6, 6), dtype=np.float32), y=rng.integers(0, 4, 40))
    np.savez(tmp_path / "gray.npz", x=rng.random((40, 8, 8)), y=rng.integers(0, 3, 40).astype(np.float64))
    rgb = load_npz(tmp_path / "rgb.npz")
    assert rgb.input_shape == (3, 6, 6) and rgb.num_classes == 4 and len(rgb.y_train) + len(rgb.y_test) == 40
    assert load_dataset(str(tmp_path / "gray.npz")).input_shape == (1, 8, 8)
    for name in ("small_cnn", "mlp"):
        model = experiments.build_model(name, rgb)
        assert model(rgb.x_train[:5]).shape == (5, 4)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"inputs": np.zeros((4, 8)), "y": np.zeros(4)}, "no array named 'x'"),
    ({"x": np.zeros((4, 8))}, "no array named 'y'"),
    ({"x": np.zeros((4, 8)), "y": np.array([0, 1, -1, 2])}, "labels out of range"),
    ({"x": np.zeros((4, 8)), "y": np.array([0.5, 1, 1, 2])}, "integer class labels"),
    ({"x": np.zeros((4, 8)), "y": np.zeros(3, dtype=int)}, "4 samples but y has 3"),
    ({"x": np.full((4, 8), np.nan), "y": np.zeros(4, dtype=int)}, "NaN"),
    ({"x": np.zeros(4), "y": np.zeros(4, dtype=int)}, "shape"),
])
def test_bad_npz_files_are_named_with_their_problem(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as error:
        load_npz(path)
    assert str(path) in str(error.value)


def test_labels_beyond_num_classes_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "five.npz"
    np.savez(path, x=np.zeros((6, 4)), y=np.arange(6))
    with pytest.raises(ValueError, match=r"five.npz: labels out of range: they span 0..5, but must lie in \[0, 3\)"):
        load_npz(path, num_classes=3)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz: no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_shapes_that_do_not_fit_fail_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "flat.npz", x=np.zeros((10, 64), dtype=np.float32), y=np.arange(10) % 2)
    data = load_npz(tmp_path / "flat.npz")
    monkeypatch.setattr(experiments, "train_loop", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"flat.npz: samples of shape \[64\] do not fit model small_cnn"):
        experiments.sweep(data, TINY)
    with pytest.raises(ValueError, match="do not fit model resnet18_cifar"):
        experiments.train(data, Settings(model="resnet18_cifar", progress=False))


@pytest.mark.parametrize(("csv_name", "png_name", "message"), [
    ("afile/out.csv", None, "cannot create its folder"),
    ("out.txt", None, "must end in .csv"),
    (None, "out.jpg", "must end in .png or .pdf or .svg"),
    ("adir", None, "must end in .csv"),
    ("adir.csv", None, "is a folder"),
])
def test_unwritable_outputs_fail_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 csv_name: str | None, png_name: str | None, message: str) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.csv").mkdir()
    monkeypatch.setattr(experiments, "train_loop", lambda *a, **k: pytest.fail("training started"))
    csv_path = tmp_path / csv_name if csv_name else None
    png_path = tmp_path / png_name if png_name else None
    with pytest.raises(ValueError, match=message) as error:
        experiments.granularity(_data(), TINY, csv=csv_path, png=png_path)
    assert str(csv_path or png_path) in str(error.value)


def test_interrupted_training_keeps_the_rows_written_so_far(tmp_path: Path) -> None:
    def ctrl_c(log: EpochLog) -> None:
        if log.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiments.train(_data(), Settings(epochs=5, batch_size=16, progress=False), csv=tmp_path / "log.csv",
                          png=tmp_path / "log.png", callbacks=[ctrl_c])
    rows = _rows(tmp_path / "log.csv")
    assert [(r["run"], r["epoch"]) for r in rows] == [("dense", "1"), ("dense", "2")]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert not (tmp_path / "log.png").exists()


def test_interrupted_grid_keeps_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run, calls = experiments.run, []

    def run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(experiments, "run", run)
    with pytest.raises(KeyboardInterrupt):
        experiments.sweep(_data(), TINY, sparsities=(0.5, 0.9), csv=tmp_path / "sweep.csv")
    rows = _rows(tmp_path / "sweep.csv")
    assert [(r["algorithm"], r["sparsity"]) for r in rows] == [("dense", "0"), ("swat", "0.5")]


def test_every_grid_experiment_shares_the_runner(tmp_path: Path) -> None:
    data = _data()
    rows = experiments.sensitivity(data, TINY, sites=("fw_a", "bw_g"), sparsities=(0.8,), csv=tmp_path / "s.csv")
    assert [r["site"] for r in rows] == ["dense", "fw_a", "bw_g"]
    assert rows[0]["delta"] == 0.0 and rows[1]["delta"] == pytest.approx(rows[1]["accuracy"] - rows[0]["accuracy"])
    assert rows[1]["achieved_sparsity"] == pytest.approx(0.8, abs=0.02)
    assert list(_rows(tmp_path / "s.csv")[0]) == list(plotting.COLUMNS["sensitivity"])
    rows = experiments.periodic(data, TINY, periods=(2,), sparsity=0.5, every=1)
    assert len(rows) == 2 * 3 * 6 and {r["period"] for r in rows} == {2}


def test_plot_rejects_an_unknown_csv(tmp_path: Path) -> None:
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv: columns a, b match no experiment"):
        experiments.plot(tmp_path / "other.csv")
    (tmp_path / "empty.csv").write_text(",".join(plotting.COLUMNS["sweep"]) + "\n")
    with pytest.raises(ValueError, match="no rows"):
        experiments.plot(tmp_path / "empty.csv")
