"""A plain training loop, as a user would write it: used by the CLI and the end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from swat_fx.data import Dataset


@dataclass
class TrainResult:
    """Final test accuracy, and the mean training loss and test accuracy of every epoch."""

    accuracy: float
    epoch_loss: list[float] = field(default_factory=list)
    epoch_accuracy: list[float] = field(default_factory=list)


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
) -> TrainResult:
    """Train with Adam and cross-entropy; shuffling is seeded so runs are reproducible."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(data.y_train) // batch_size)
    result = TrainResult(accuracy=0.0)
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=True) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(data.y_train), generator=generator)
            total = 0.0
            for i in range(0, len(order), batch_size):
                batch = order[i:i + batch_size]
                loss = F.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            result.epoch_loss.append(total / len(order))
            result.epoch_accuracy.append(evaluate(model, data.x_test, data.y_test))
            bar.set_postfix(loss=f"{result.epoch_loss[-1]:.3f}", test_acc=f"{result.epoch_accuracy[-1]:.3f}")
    result.accuracy = result.epoch_accuracy[-1] if result.epoch_accuracy else evaluate(model, data.x_test, data.y_test)
    return result
