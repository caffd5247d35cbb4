"""The benchmark script runs (quick mode) and prints every row; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_step_benchmark_quick_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=True,
    )
    # loaded by path: a `benchmarks` folder on sys.path would shadow installed packages (`kernels`)
    spec = importlib.util.spec_from_file_location("swat_fx_benchmark_train_step", ROOT / "benchmarks" / "train_step.py")
    train_step = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(train_step)
    COMPILED, VARIANTS = train_step.COMPILED, train_step.VARIANTS

    rows = json.loads(out.read_text())
    for model in ("resnet18_cifar", "resnet50"):
        assert f"| {model} | dense PyTorch |" in result.stdout
        for variant in [*VARIANTS, *(COMPILED if model == "resnet18_cifar" else ())]:  # quick: compiled R18
            assert f"| {model} | {variant} |" in result.stdout
            assert any(r["model"] == model and r["variant"] == variant for r in rows)
    assert all(r["step_ms"] > 0 and r["dense_ms"] > 0 and r["time_ratio"] > 0 and r["saved_mb"] > 0 for r in rows)
    eager_rebuilding = [r for r in rows if r["variant"].startswith("unstructured") and "compile" not in r["variant"]]
    assert eager_rebuilding and all(r["scratch_mb"] > 0 for r in eager_rebuilding)
    assert all(r["scratch_mb"] == 0 for r in rows if r["variant"] == "dense PyTorch")


def test_kernels_benchmark_prints_every_kernel() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--shape", "4", "8", "16", "16", "--repeats", "2"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    for what in ("exact k-th largest |v|, normal", "exact k-th largest |v|, relu, density 0.7",
                 "exact k-th largest |v|, normal, density 0.3, last threshold 0.2 % away",
                 "threshold and count", "compress", "decompress", "ReLU forward + backward", "BatchNorm forward"):
        assert what in result.stdout


def test_ablations_benchmark_prints_every_variant() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablations.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, check=True)
    for what in ("dense PyTorch", "SWAT, workspace", "SWAT, no workspace", "scratch held", "SWAT, batch_norm",
                 "SWAT, no batch_norm"):
        assert what in result.stdout
