"""The benchmark script runs (quick mode) and prints every row; no timing is asserted."""

from __future__ import annotations

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
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_step import COMPILED, VARIANTS

    rows = json.loads(out.read_text())
    for model in ("resnet18_cifar", "resnet50"):
        assert f"| {model} | dense PyTorch |" in result.stdout
        for variant in [*VARIANTS, *(COMPILED if model == "resnet18_cifar" else ())]:  # quick: compiled R18
            assert f"| {model} | {variant} |" in result.stdout
            assert any(r["model"] == model and r["variant"] == variant for r in rows)
    assert all(r["step_ms"] > 0 and r["saved_mb"] > 0 for r in rows)


def test_kernels_benchmark_prints_every_kernel() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--shape", "4", "8", "16", "16", "--repeats", "2"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    for what in ("exact k-th largest |v|, normal", "exact k-th largest |v|, relu, density 0.7",
                 "threshold and count", "compress", "decompress", "ReLU forward + backward"):
        assert what in result.stdout
