"""The ONNX Top-K subgraphs against the eager masks (`swat_fx.masks.topk_mask`), run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from swat_fx.backends.ort.builder import NodeBuilder
from swat_fx.backends.ort.graph import TensorInfo
from swat_fx.backends.ort.topk_nodes import SUPPORTED_GRANULARITIES, sparsify
from swat_fx.masks import apply_mask, mask_layout, topk_mask

ort = pytest.importorskip("onnxruntime")

# (role, layer, shape): conv weights/inputs of rank 3-5, linear weights and inputs with leading dims
CASES = [
    ("weight", "conv", (6, 4, 3, 3)),
    ("weight", "conv", (4, 2, 5)),
    ("weight", "linear", (7, 12)),
    ("input", "conv", (3, 4, 5, 5)),
    ("input", "conv", (2, 3, 4, 3, 2)),
    ("input", "linear", (5, 12)),
    ("input", "linear", (2, 3, 12)),
    ("grad", "conv", (3, 4, 5, 5)),
    ("grad", "linear", (5, 7)),
]


def _run_mask(t: np.ndarray, role: str, layer: str, granularity: str, density: float, dynamic: bool) -> np.ndarray:
    shape = tuple(None if dynamic and d == 0 and role != "weight" else n for d, n in enumerate(t.shape))
    b = NodeBuilder("/test")
    out = sparsify(b, "t", TensorInfo(np.dtype(np.float32), shape), role, layer, granularity, density)
    graph = helper.make_graph(
        b.nodes, "mask", [helper.make_tensor_value_info("t", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"t": t})[0]


def _eager(t: np.ndarray, role: str, layer: str, granularity: str, density: float) -> np.ndarray:
    x = torch.from_numpy(t)
    return apply_mask(x, topk_mask(x, density, mask_layout(role, layer, granularity, x.dim()))).numpy()


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
@pytest.mark.parametrize("granularity", SUPPORTED_GRANULARITIES)
@pytest.mark.parametrize(("role", "layer", "shape"), CASES, ids=lambda c: str(c))
def test_onnx_topk_equals_eager_mask(role: str, layer: str, shape: tuple[int, ...], granularity: str,
                                     dynamic: bool) -> None:
    rng = np.random.default_rng(0)
    t = rng.standard_normal(shape).astype(np.float32)
    t.flat[::7] = t.flat[1]  # ties at many places, some of them at the threshold
    for density in (0.3, 0.5, 0.9):
        np.testing.assert_array_equal(_run_mask(t, role, layer, granularity, density, dynamic),
                                      _eager(t, role, layer, granularity, density))


def test_non_finite_values_are_always_kept() -> None:
    t = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    t[0, 0], t[1, 1], t[2, 2] = np.nan, np.inf, -np.inf
    out = _run_mask(t, "input", "linear", "nchw", 0.1, dynamic=True)
    assert np.isnan(out[0, 0]) and out[1, 1] == np.inf and out[2, 2] == -np.inf
    np.testing.assert_array_equal(out, _eager(t, "input", "linear", "nchw", 0.1))
