"""A training step reads nothing back from the device: no scalar reads, `nonzero`, `masked_select` or
boolean indexing (counted below autograd by `swat_fx.syncs.HostSyncCounter`), at refresh steps and
between them. On a GPU each would stall the stream; under `torch.compile` each would break the graph."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import swat_fx
from swat_fx import models
from swat_fx.backends.eager.formats import Format
from swat_fx.contract import site_nodes
from swat_fx.syncs import HostSyncCounter


def _syncs_per_step(model: torch.nn.Module, steps: int, shape: tuple[int, ...] = (4, 3, 16, 16)) -> list[int]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(shape), torch.tensor([0, 1, 2, 3])
    counts = []
    for _ in range(steps):
        with HostSyncCounter() as counter:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        counts.append(counter.count)
    return counts


@pytest.mark.parametrize(("granularity", "kernel"), [
    *itertools.product(["nchw", "chw", "hw", "kernel", "filter"], ["masked", "compressed"]), ("nchw", "auto")])
@pytest.mark.parametrize("algorithm", ["swat", "saw", "meprop"])
@pytest.mark.parametrize("period", [1, 3])
def test_a_training_step_never_reads_the_device(granularity: str, kernel: str, algorithm: str, period: int) -> None:
    torch.manual_seed(0)
    model = swat_fx.transform(models.small_cnn(), 0.7, granularity=granularity, kernel=kernel, algorithm=algorithm,
                              period=period)
    assert _syncs_per_step(model, steps=4, shape=(4, 1, 8, 8)) == [0, 0, 0, 0]


@pytest.mark.parametrize("period", [1, 3])
def test_a_resnet_training_step_never_reads_the_device(period: int) -> None:
    torch.manual_seed(0)
    model = swat_fx.transform(models.resnet18(num_classes=4, stem="cifar"), 0.7, period=period)
    assert _syncs_per_step(model, steps=3) == [0, 0, 0]


def test_compact_kernels_read_one_count_per_site() -> None:
    """Computing on the kept filters only needs their number on the host (a data-dependent shape)."""
    torch.manual_seed(0)
    model = swat_fx.transform(models.resnet18(num_classes=4, stem="cifar"), 0.7, granularity="filter",
                              kernel="compact", period=3)
    compact_sites = [node for node in site_nodes(model) if node.kwargs.get("format") in (Format.FILTERS,
                                                                                          Format.CHANNELS)]
    assert compact_sites
    assert _syncs_per_step(model, steps=3) == [len(compact_sites)] * 3


def test_the_counter_sees_scalar_reads_and_boolean_indexing() -> None:
    t = torch.randn(10)
    with HostSyncCounter() as counter:
        float(t.sum())
        t[t > 0].sum()
        torch.nonzero(t)
        (t * 2).sum()
    assert counter.by_op == {"scalar read (.item(), float(), int(), bool())": 1, "boolean indexing": 1,
                             "nonzero": 1}
