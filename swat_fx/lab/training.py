"""A plain training loop, as a user would write it: used by the CLI, the experiments and the end-to-end tests.

Per-epoch results go to callbacks (`EpochLog`), so a CSV log, a plot or an early stop need no change to
the loop. A Ctrl-C (KeyboardInterrupt) closes the progress bar and propagates: whatever a callback wrote
(a `CsvLog` flushes every row) stays on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from swat_fx.contract import sites
from swat_fx.lab import distributed
from swat_fx.lab.data import Dataset


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


def achieved_sparsity(model: nn.Module) -> float:
    """Mean sparsity achieved at the last training step over the model's SWAT sites (0 for a dense model)."""
    densities = [float(site.density) for _, site in sites(model)]
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
    receives an `EpochLog` after every epoch (in order; one may raise to stop the run). In a process
    group (`torchrun`), the model trains under DDP, each rank on its slice of every batch (a batch
    smaller than the group is skipped), the logs hold the totals of all ranks, and only rank 0 shows
    the progress bar.
    """
    callbacks = list(callbacks)
    where = distributed.ranks()
    step_module = distributed.parallel(model, where)
    progress = progress and where.main
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(data.y_train) // batch_size)
    result = TrainResult(accuracy=0.0)
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=True) as bar:
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(data.y_train), generator=generator)
            total, correct, seen = 0.0, 0, 0
            for i in range(0, len(order), batch_size):
                bar.update()
                if len(order[i:i + batch_size]) < where.world:
                    continue
                batch = order[i:i + batch_size].tensor_split(where.world)[where.rank]
                logits = step_module(data.x_train[batch])
                loss = F.cross_entropy(logits, data.y_train[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                correct += int((logits.argmax(1) == data.y_train[batch]).sum())
                seen += len(batch)
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}",
                                    sparsity=f"{achieved_sparsity(model):.2f}", refresh=False)
            total, correct, seen = distributed.summed([total, correct, seen], where)
            log = EpochLog(epoch=epoch, loss=total / seen, train_accuracy=correct / seen,
                           test_accuracy=evaluate(model, data.x_test, data.y_test),
                           sparsity=achieved_sparsity(model))
            result.epoch_loss.append(log.loss)
            result.epoch_accuracy.append(log.test_accuracy)
            bar.set_postfix(loss=f"{log.loss:.3f}", test_acc=f"{log.test_accuracy:.3f}", sparsity=f"{log.sparsity:.2f}")
            for callback in callbacks:
                callback(log)
    result.accuracy = result.epoch_accuracy[-1] if result.epoch_accuracy else evaluate(model, data.x_test, data.y_test)
    return result
