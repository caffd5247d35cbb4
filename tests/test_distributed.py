"""DDP and FSDP2 on 2 gloo processes (torchrun on localhost) against one process with the global batch.

Per-sample granularity (`chw`): every rank ranks its own samples as one process would, and stored
activation thresholds are averaged over the ranks at each refresh, so 2 ranks x 4 samples equal 1 x 8
at every period. Without that all-reduce (`sync_thresholds=False`) they differ between refreshes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch

import swat_fx

pytestmark = pytest.mark.slow
SPECS = ["ddp:chw:1", "ddp:chw:3", "fsdp:chw:1", "fsdp:chw:3", "ddp:chw:3:nosync", "ddp:chw:3:half"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2` on localhost, single-threaded ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("distributed") / "results.pt"
    torchrun(str(Path(worker.__file__)), str(out), *SPECS)
    return torch.load(out, weights_only=True)


def _single(period: int, sync: bool = True, steps: slice = slice(None), model: torch.nn.Module | None = None):
    if model is None:
        model = swat_fx.transform(worker.net(), 0.7, granularity="chw", period=period, sync_thresholds=sync)
    worker.train(model, worker.batches()[steps])
    return model


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in b if not k.startswith("swat."))


@pytest.mark.parametrize("spec", ["ddp:chw:1", "ddp:chw:3", "fsdp:chw:1", "fsdp:chw:3"])
def test_two_ranks_equal_one_process_with_the_global_batch(results, spec: str) -> None:
    period = int(spec.split(":")[2])
    expected = _single(period).state_dict()
    actual = results[spec]
    assert actual.keys() == expected.keys()
    assert _max_difference(actual, expected) < 1e-5
    for key in expected:  # the SWAT state too: steps, and thresholds averaged over the ranks (the
        if key.startswith("swat.") and not key.endswith(".density"):  # density achieved is each rank's own
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_without_the_threshold_all_reduce_ranks_drift(results) -> None:
    expected = _single(3, sync=False).state_dict()
    assert _max_difference(results["ddp:chw:3:nosync"], expected) > 1e-5


def test_a_rank_0_checkpoint_resumes_in_one_process(results) -> None:
    resumed = swat_fx.transform(worker.net(), 0.7, granularity="chw", period=3)
    resumed.load_state_dict(results["ddp:chw:3:half"])
    _single(3, model=resumed, steps=slice(worker.STEPS // 2, None))
    assert _max_difference(resumed.state_dict(), _single(3).state_dict()) < 1e-5


def test_torchrun_runs_the_train_command_with_one_csv(tmp_path: Path) -> None:
    csv = tmp_path / "runs.csv"
    done = torchrun("-m", "swat_fx.lab.cli", "train", "--epochs", "2", "--max-samples", "256", "--quiet",
                    "--csv", str(csv))
    assert done.stdout.count("test accuracy") == 2  # dense and SWAT, printed by rank 0 only
    assert "2 processes" in done.stdout
    rows = csv.read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # header, then one row per run and epoch
