"""Bad input fails before training with a message naming the file and the problem; Ctrl-C keeps the CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from swat_fx.lab import experiments
from swat_fx.lab.cli import main

TINY = ["--max-samples", "48", "--batch-size", "16", "--quiet"]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiments, "train_loop", lambda *a, **k: pytest.fail("training started"))


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize("command", ["train", "sweep", "sensitivity", "granularity", "periodic"])
def test_bad_dataset_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((8, 1, 8, 8)))
    np.savez(tmp_path / "range.npz", x=np.zeros((8, 1, 8, 8)), y=np.array([0, 1, 2, 3, 0, 1, 2, -3]))
    np.savez(tmp_path / "flat.npz", x=np.zeros((8, 64)), y=np.arange(8) % 2)
    err = _error([command, "--dataset", str(tmp_path / "nolabels.npz")], capsys)
    assert "nolabels.npz" in err and "no array named 'y'" in err
    err = _error([command, "--dataset", str(tmp_path / "range.npz")], capsys)
    assert "range.npz" in err and "labels out of range" in err
    err = _error([command, "--dataset", str(tmp_path / "range.npz"), "--num-classes", "2"], capsys)
    assert "labels out of range" in err
    err = _error([command, "--dataset", str(tmp_path / "flat.npz")], capsys)
    assert "flat.npz" in err and "do not fit model small_cnn" in err
    err = _error([command, "--dataset", str(tmp_path / "absent.npz")], capsys)
    assert "absent.npz: no such file" in err


@pytest.mark.usefixtures("no_training")
def test_unwritable_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    blocked = str(tmp_path / "file" / "out.csv")
    for argv in (["train", "--csv", blocked], ["sweep", "--plot", str(tmp_path / "file" / "x.png")],
                 ["train", "--monitor", blocked], ["periodic", "--csv", str(tmp_path)]):
        err = _error([*argv, *TINY], capsys)
        assert str(tmp_path) in err and ("cannot create its folder" in err or "must end in .csv" in err), err
    assert "must end in .png" in _error(["plot", blocked, "-o", str(tmp_path / "x.gif")], capsys)
    assert "no such file" in _error(["plot", str(tmp_path / "none.csv")], capsys)


@pytest.mark.usefixtures("no_training")
def test_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert "[0, 1)" in _error(["sweep", "--sparsities", "0.5", "1.5", *TINY], capsys)
    assert "period must be" in _error(["periodic", "--periods", "0", *TINY], capsys)
    assert "--epochs" in _error(["train", "--epochs", "0", *TINY], capsys)
    assert "unknown dataset" in _error(["train", "--dataset", "cifar10"], capsys)
    assert "sparsifies nothing" in _error(["train", "--algorithm", "dense", "--monitor", "m.csv", *TINY], capsys)


def test_ctrl_c_keeps_the_csv_written_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    real_evaluate, calls = experiments.train_loop.__globals__["evaluate"], []

    def evaluate(*args, **kwargs):  # the end of every epoch: Ctrl-C during the third one
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setitem(experiments.train_loop.__globals__, "evaluate", evaluate)
    out = tmp_path / "log.csv"
    assert main(["train", "--dataset", "synthetic", "--epochs", "5", "--csv", str(out), *TINY]) == 130
    assert "interrupted" in capsys.readouterr().err
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["run"], r["epoch"]) for r in rows] == [("dense", "1"), ("dense", "2")]


@pytest.mark.parametrize("bug", [lambda *a, **k: {}["missing"], lambda *a, **k: None.attribute,
                                 lambda *a, **k: int("a ValueError outside swat_fx")])
def test_a_bug_shows_its_traceback(monkeypatch: pytest.MonkeyPatch, bug) -> None:
    monkeypatch.setattr(experiments, "train", bug)
    with pytest.raises((KeyError, AttributeError, ValueError)):
        main(["train", *TINY])
