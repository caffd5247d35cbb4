"""One training step of ORT training artifacts against the eager model they were exported from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import swat_fx


def ort_step_matches_eager(transformed: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, out_dir: Path,
                           atol: float, **export_options: object) -> list[str]:
    """Export `transformed` for ORT training (SGD, cross-entropy), run one step on (x, labels) and check
    its loss and every parameter's gradient against eager; return the parameters without a gradient."""
    from swat_fx.export import load_ort_training  # onnxruntime is loaded only where a test needs it

    artifacts = load_ort_training(swat_fx.export_ort_training(transformed, [x], out_dir, optimizer="sgd",
                                                              **export_options))
    artifacts.module.train()
    loss, *_ = artifacts.module(x.numpy(), labels.numpy())
    expected = F.cross_entropy(transformed(x), labels)
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    unused = []
    for name, param in transformed.named_parameters():
        if param.grad is None:
            unused.append(name)
            continue
        np.testing.assert_allclose(artifacts.state.parameters[name].grad, param.grad.numpy(), rtol=1e-4,
                                   atol=atol, err_msg=name)
    return unused
