"""A plain training loop, as a user would write it: used by the CLI, the experiments and the end-to-end tests.

Per-epoch results go to callbacks (`EpochLog`), so a CSV log, a plot or an early stop need no change to
the loop. A Ctrl-C (KeyboardInterrupt) closes the progress bar and propagates: whatever a callback wrote
(a `CsvLog` flushes every row) stays on disk.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from swat_fx.data import Dataset
from swat_fx.topk import TopK


@dataclass
class TrainResult:
    """Final test accuracy, and the mean training loss and test accuracy of every epoch."""

    accuracy: float
    epoch_loss: list[float] = field(default_factory=list)
    epoch_accuracy: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EpochLog:
    """What one epoch achieved; `sparsity` is the mean achieved sparsity of the SWAT sites (0 if dense)."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    sparsity: float


EpochCallback = Callable[[EpochLog], None]


class CsvLog:
    """A CSV file written row by row and flushed, so an interrupted run keeps every finished row."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.rows = 0
        self._file = open(path, "w", newline="")  # noqa: SIM115 - closed by close() / the context manager
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({key: _cell(value) for key, value in row.items()})
        self._file.flush()
        self.rows += 1

    def __call__(self, log: EpochLog) -> None:
        self.write(asdict(log))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _cell(value: Any) -> Any:
    """Floats with enough digits to compare, without float noise (0.30000000000000004)."""
    return f"{value:.6g}" if isinstance(value, float) else value


def achieved_sparsity(model: nn.Module) -> float:
    """Mean sparsity achieved at the last training step over the model's SWAT sites (0 for a dense model)."""
    densities = [float(m.density) for m in model.modules() if isinstance(m, TopK)]
    return 1.0 - sum(densities) / len(densities) if densities else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode (SWAT's forward then uses the exact Top-K of the current weights)."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    model.train(was_training)
    return correct / len(y)


def train(
    model: nn.Module,
    data: Dataset,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    callbacks: Iterable[EpochCallback] = (),
) -> TrainResult:
    """Train with Adam and cross-entropy; shuffling is seeded so runs are reproducible.

    The progress bar shows the loss, the training accuracy and the achieved sparsity; each callback
    receives an `EpochLog` after every epoch (in order; one may raise to stop the run).
    """
    callbacks = list(callbacks)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(data.y_train) // batch_size)
    result = TrainResult(accuracy=0.0)
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=True) as bar:
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(data.y_train), generator=generator)
            total, correct = 0.0, 0
            for i in range(0, len(order), batch_size):
                batch = order[i:i + batch_size]
                logits = model(data.x_train[batch])
                loss = F.cross_entropy(logits, data.y_train[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                correct += int((logits.argmax(1) == data.y_train[batch]).sum())
                bar.update()
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / (i + len(batch)):.3f}",
                                    sparsity=f"{achieved_sparsity(model):.2f}", refresh=False)
            log = EpochLog(epoch=epoch, loss=total / len(order), train_accuracy=correct / len(order),
                           test_accuracy=evaluate(model, data.x_test, data.y_test),
                           sparsity=achieved_sparsity(model))
            result.epoch_loss.append(log.loss)
            result.epoch_accuracy.append(log.test_accuracy)
            bar.set_postfix(loss=f"{log.loss:.3f}", test_acc=f"{log.test_accuracy:.3f}", sparsity=f"{log.sparsity:.2f}")
            for callback in callbacks:
                callback(log)
    result.accuracy = result.epoch_accuracy[-1] if result.epoch_accuracy else evaluate(model, data.x_test, data.y_test)
    return result
