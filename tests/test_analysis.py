"""The sparsification angle (Fig. 9): exact cases, monotonic in density, and the random-vector study."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from swat_fx.analysis import angle_between, angle_study, sparsification_angle, topk_angles


def test_orthogonal_and_parallel_vectors_are_exact() -> None:
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    assert angle_between(e1, e2) == 90.0
    assert angle_between(e1, e1) == 0.0
    assert angle_between(e1, -e1) == 180.0
    a = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert angle_between(a, 2 * a) == 0.0
    assert angle_between(a.double(), 3 * a.double()) == pytest.approx(0.0, abs=1e-6)
    assert angle_between(torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, -5.0, 7.0])) == 90.0
    a, b = a.double(), torch.randn(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b -= (a @ b) / (a @ a) * a  # Gram-Schmidt: b orthogonal to a
    assert angle_between(a, b) == pytest.approx(90.0, abs=1e-9)


def test_sparsification_angle_exact_cases() -> None:
    assert sparsification_angle(torch.tensor([0.0, 5.0, 0.0, 0.0]), 0.25) == 0.0  # already 1-sparse
    assert sparsification_angle(torch.randn(64), 1.0) == 0.0
    assert sparsification_angle(torch.tensor([1.0, -1.0]), 0.5) == 0.0  # a tie at the threshold keeps both
    expected = math.degrees(math.atan2(1, 2))
    assert sparsification_angle(torch.tensor([2.0, 0.0, 1.0, 0.0]), 0.25) == pytest.approx(expected)
    assert sparsification_angle(torch.tensor([3.0, -4.0]), 0.5) == pytest.approx(math.degrees(math.atan2(3, 4)))
    assert sparsification_angle(torch.tensor([[3.0], [4.0], [0.0], [0.0]]), 0.25) == pytest.approx(36.869897645844)
    with pytest.raises(ValueError, match="density"):
        sparsification_angle(torch.randn(4), 0.0)


def test_angle_decreases_as_density_increases() -> None:
    t = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    angles = [sparsification_angle(t, d) for d in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)]
    assert all(a > b for a, b in itertools.pairwise(angles)), angles
    assert angles[-1] == 0.0


def test_vectorised_angles_match_the_direct_computation() -> None:
    x = np.random.default_rng(0).standard_normal((3, 200))
    angles = topk_angles(x)
    for row in range(3):
        for k in (1, 20, 57, 140, 200):
            assert angles[row, k - 1] == pytest.approx(sparsification_angle(torch.from_numpy(x[row]), k / 200))
    assert (angles[:, -1] == 0).all()


def test_random_pairs_are_near_90_degrees_in_high_dimension() -> None:
    g = torch.Generator().manual_seed(0)
    pairs = [angle_between(torch.randn(10_000, generator=g), torch.randn(10_000, generator=g)) for _ in range(20)]
    assert all(abs(a - 90.0) < 3.0 for a in pairs), pairs
    study = angle_study(dim=1000, trials=300, percents=(10, 50), deltas=(10, 30))
    assert abs(study.random_angles.mean() - 90.0) < 0.5
    assert study.random_angles.std() < 3.0


def test_study_summarises_as_in_figure_9() -> None:
    study = angle_study(dim=500, trials=200, percents=(5, 30, 70), deltas=(5, 15, 30), seed=1, chunk=64)
    assert len(study.percents) == 100 and study.mean_angle[-1] == 0.0
    assert (np.diff(study.mean_angle) < 0).all(), "angle falls as Top-K grows"
    medians = [np.median(study.distributions[p]) for p in (5.0, 30.0, 70.0)]
    assert medians[0] > medians[1] > medians[2]
    assert medians[0] < np.median(study.random_angles) - 20, "far closer than a random direction"
    assert (np.diff(study.needed_mean) < 0).all(), "a wider δ needs a smaller Top-K"
    assert all(len(a) == 200 for a in study.distributions.values())
    with pytest.raises(ValueError, match="percentages"):
        angle_study(dim=10, trials=2, percents=(0,))
