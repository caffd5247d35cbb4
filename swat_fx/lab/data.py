"""Datasets that need no download: scikit-learn's digits, a seeded synthetic set, and a user's `.npz`.

Every loader validates its input completely before returning, so a bad file fails with a message that
names the file and the problem before any model is built or trained.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS: tuple[str, ...] = ("digits", "synthetic")


@dataclass(frozen=True)
class Dataset:
    """A train/test split of image tensors [N, C, H, W] and integer labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample (without the batch dim)."""
        return tuple(self.x_train.shape[1:])

    def subset(self, max_samples: int) -> Dataset:
        """At most `max_samples` training and test samples each (quick runs, tests)."""
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        return Dataset(self.name, self.x_train[:max_samples], self.y_train[:max_samples],
                       self.x_test[:max_samples], self.y_test[:max_samples], self.num_classes)


def _split(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, test_fraction: float,
           seed: int) -> Dataset:
    """A seeded random train/test split (at least one sample on each side)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = min(len(y) - 1, max(1, round(len(y) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, x[train], y[train], x[test], y[test], num_classes=num_classes)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 1,797 8×8 handwritten digits of `sklearn.datasets.load_digits`, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return _split("digits", x, y, 10, test_fraction, seed)


def synthetic(
    samples: int = 2000,
    num_classes: int = 10,
    shape: tuple[int, ...] = (1, 8, 8),
    noise: float = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Seeded Gaussian blobs around one random prototype per class, shaped like digits by default.

    Learnable but not trivial at `noise=1`, with no file at all: for quick runs and tests.
    """
    if samples < 2 or num_classes < 2:
        raise ValueError(f"synthetic needs samples >= 2 and num_classes >= 2, got {samples} and {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=generator)
    y = torch.arange(samples) % num_classes
    x = prototypes[y] + noise * torch.randn((samples, *shape), generator=generator)
    return _split("synthetic", x, y, num_classes, test_fraction, seed)


def load_npz(
    path: str | Path, num_classes: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """A user's data: an `.npz` with `x` (samples first: [N, C, H, W], [N, H, W] or [N, F]) and `y`
    (integer labels in [0, num_classes)); `num_classes` defaults to max(y) + 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"dataset file {path}: not a readable .npz archive ({error})") from error
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise ValueError(f"dataset file {path}: no array named {' or '.join(map(repr, missing))} "
                         f"(found: {found}); save it with numpy.savez(path, x=inputs, y=labels)")
    x, y = _check_inputs(path, arrays["x"]), _check_labels(path, arrays["y"], num_classes)
    if len(x) != len(y):
        raise ValueError(f"dataset file {path}: x has {len(x)} samples but y has {len(y)} labels")
    classes = num_classes if num_classes is not None else int(y.max()) + 1
    return _split(path.name, torch.from_numpy(x), torch.from_numpy(y), classes, test_fraction, seed)


def _check_inputs(path: Path, x: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise ValueError(f"dataset file {path}: x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"dataset file {path}: x must be [samples, features...] with at least 2 samples, "
                         f"got shape {list(x.shape)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"dataset file {path}: x contains NaN or infinite values")
    return x[:, None] if x.ndim == 3 else x  # [N, H, W] images get their channel dim


def _check_labels(path: Path, y: np.ndarray, num_classes: int | None) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(f"dataset file {path}: y must be one label per sample (1-D), got shape {list(y.shape)}")
    if y.size == 0:
        raise ValueError(f"dataset file {path}: y is empty")
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"dataset file {path}: y must hold integer class labels, got dtype {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, number of classes)"
        raise ValueError(f"dataset file {path}: labels out of range: they span {low}..{high}, "
                         f"but must lie in {bound}")
    return y.astype(np.int64)


def load_dataset(name: str, seed: int = 0, num_classes: int | None = None, max_samples: int | None = None) -> Dataset:
    """`digits`, `synthetic`, or the path of an `.npz` file (what the CLI's `--dataset` accepts);
    `num_classes` applies to the last two (default: 10 for synthetic, max label + 1 for a file)."""
    if name == "digits":
        data = load_digits(seed=seed)
    elif name == "synthetic":
        data = synthetic(seed=seed, num_classes=num_classes or 10)
    elif name.endswith(".npz"):
        data = load_npz(name, num_classes=num_classes, seed=seed)
    else:
        raise ValueError(f"unknown dataset {name!r}: use {', '.join(DATASETS)} or the path of an .npz file "
                         "with arrays x and y")
    return data.subset(max_samples) if max_samples is not None else data
