"""The sparse-accelerator IR and cost model (issue 4), against hand-computed values.

Conventions under test (README, "Sparse-accelerator cost model"): a MAC is 2 FLOPs; conv MACs =
numel(Y) · C_in/groups · Πkernel; BN 5 / 4 / 5 FLOPs per element (fwd / dX / dγdβ); ReLU 1 and 1;
max-pool (window − 1) and 1 per output; avg-pool window and window per output; add 1 per output and
0 backward; softmax cross-entropy 4 and 2 per logit; SGD update 6 per parameter; Top-K: |v| per
element + per score (compare + (2 + 2 ln 2)/period selection). Bitmap = ceil(n/8) + nnz · 4 bytes,
CSR = nnz · (4 + 4) + (rows + 1) · 4 bytes.
"""

from __future__ import annotations

import copy
import json
import math

import networkx as nx
import pytest
import torch
import torch.nn as nn

import swat_fx
from swat_fx import models
from swat_fx.accel import Accelerator, ShapePropagationError
from swat_fx.lab.cli import main as cli
from swat_fx.lab.data import load_digits

SELECT = 2 + 2 * math.log(2)  # Top-K selection comparisons per score


class TwoConv(nn.Module):
    """A dense first conv, then a conv with groups, stride and dilation, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(4, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 12, kernel_size=3, stride=2, padding=1, dilation=2, groups=4)
        self.fc = nn.Linear(12 * 5 * 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(self.first(x)), 1))


class Block(nn.Module):
    """conv-BN-ReLU-maxpool, a residual conv, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool(self.relu(self.bn(self.conv1(x))))
        return self.fc(torch.flatten(self.avg(self.conv2(p) + p), 1))


def ir_of(model: nn.Module, shape: tuple[int, ...], **options: object) -> nx.DiGraph:
    torch.manual_seed(0)
    return swat_fx.to_accel_ir(swat_fx.transform(model, **options), torch.randn(shape))


def reads(ir: nx.DiGraph, node: str, role: str) -> dict:
    (ref,) = [r for r in ir.nodes[node]["reads"] if r["role"] == role]
    return ref


# ---------------------------------------------------------------------------------------- FLOPs


def test_conv_and_linear_flops_with_groups_stride_dilation() -> None:
    ir = ir_of(TwoConv(), (2, 4, 11, 11), sparsity=0.75)
    # conv: H_out = floor((11 + 2·1 − 2·(3 − 1) − 1) / 2 + 1) = 5, Y = [2, 12, 5, 5] (600 entries),
    # each a dot product of C_in/groups · 3 · 3 = 2 · 9 = 18: 10 800 MACs; bias 600 adds.
    macs, y = 600 * 18, 600
    conv = {phase: ir.nodes[f"conv/{phase}"] for phase in ("fwd", "bwd_input", "bwd_weight")}
    assert conv["fwd"]["flops_dense"] == 2 * macs + y
    assert conv["bwd_input"]["flops_dense"] == 2 * macs
    assert conv["bwd_weight"]["flops_dense"] == 2 * macs + y
    # SWAT at 75 %: W_s in the forward and dX, X_s in dW, each a density of 0.25.
    assert conv["fwd"]["flops_effective"] == pytest.approx(2 * macs * 0.25 + y)
    assert conv["bwd_input"]["flops_effective"] == pytest.approx(2 * macs * 0.25)
    assert conv["bwd_weight"]["flops_effective"] == pytest.approx(2 * macs * 0.25 + y)
    # linear: X = [2, 300], W = [5, 300]: 2 · 5 · 300 MACs, 10 bias adds.
    assert ir.nodes["fc/fwd"]["flops_dense"] == 2 * (2 * 5 * 300) + 10
    assert ir.nodes["fc/bwd_input"]["flops_dense"] == 2 * (2 * 5 * 300)
    assert ir.nodes["fc/bwd_weight"]["flops_dense"] == 2 * (2 * 5 * 300) + 10
    # first conv (dense, input is the data): [2, 8, 11, 11] outputs · 4 · 9, no input gradient.
    assert ir.nodes["first/fwd"]["flops_dense"] == 2 * (2 * 8 * 121 * 36) + 2 * 8 * 121
    assert "first/bwd_input" not in ir


def test_linear_with_leading_dims() -> None:
    model = nn.Sequential(nn.Linear(7, 4), nn.Linear(4, 6))
    ir = ir_of(model, (2, 3, 7), sparsity=0.5)
    # X = [2, 3, 4]: 2 · 3 · 6 outputs, each 4 MACs.
    assert ir.nodes["1/fwd"]["macs"] == 2 * 3 * 6 * 4
    assert ir.nodes["1/bwd_input"]["flops_dense"] == 2 * (2 * 3 * 6 * 4)


def test_other_ops_follow_the_conventions() -> None:
    ir = ir_of(Block(), (2, 3, 8, 8), sparsity=0.5, period=4)
    n = 2 * 4 * 8 * 8  # conv1 / BN / ReLU output entries
    assert [ir.nodes[f"bn/{p}"]["flops_dense"] for p in ("fwd", "bwd_input", "bwd_weight")] == [5 * n, 4 * n, 5 * n]
    assert [ir.nodes[f"relu/{p}"]["flops_dense"] for p in ("fwd", "bwd_input")] == [n, n]
    pooled = 2 * 4 * 4 * 4  # 3x3/2 max-pool with padding 1: 8 -> 4
    assert [ir.nodes[f"pool/{p}"]["flops_dense"] for p in ("fwd", "bwd_input")] == [pooled * 8, pooled]
    assert [ir.nodes[f"add/{p}"]["flops_dense"] for p in ("fwd", "bwd_input")] == [pooled, 0]
    assert ir.nodes["pool/grad_sum"]["flops_dense"] == pooled  # p feeds conv2 and the add
    assert [ir.nodes[f"avg/{p}"]["flops_dense"] for p in ("fwd", "bwd_input")] == [8 * 16, 8 * 16]
    assert [ir.nodes[f"<loss>/{p}"]["flops_dense"] for p in ("fwd", "bwd_input")] == [4 * 6, 2 * 6]
    assert ir.nodes["bn/update"]["flops_dense"] == 6 * 8
    assert ir.nodes["conv2/update"]["flops_dense"] == 6 * 144
    # Top-K of conv2's weight [4, 4, 3, 3] (144 entries, whole tensor), exact every 4 steps.
    assert ir.nodes["swat.conv2.w_topk/sparsify"]["flops_dense"] == pytest.approx(144 + 144 * (1 + SELECT / 4))


def test_structured_topk_ranks_units() -> None:
    ir = ir_of(Block(), (2, 3, 8, 8), sparsity=0.5, granularity="filter")
    # 144 |v| + 144 sums into 4 filter scores, then compare + selection per score.
    assert ir.nodes["swat.conv2.w_topk/sparsify"]["flops_dense"] == pytest.approx(2 * 144 + 4 * (1 + SELECT))


def test_products_match_torch_flop_counter() -> None:
    """torch.utils.flop_counter counts conv/linear/matmul forward and backward at 2 FLOPs a MAC, without
    bias; a dense training step's products must agree with it exactly."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, x = Block(), torch.randn(2, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    ir = swat_fx.to_accel_ir(swat_fx.transform(model, algorithm="dense"), x)
    assert sum(2 * a["macs"] for _, a in ir.nodes(data=True)) == counter.get_total_flops()


def test_resnet50_forward_is_the_quoted_4_1_gmacs() -> None:
    ir = ir_of(models.resnet50(), (1, 3, 224, 224), algorithm="dense")
    forward = sum(a["flops_dense"] for _, a in ir.nodes(data=True) if a["phase"] == "fwd")
    assert forward / 2 == pytest.approx(4.1e9, rel=0.02)
    assert sum(a["op"] in ("conv2d", "linear") and a["phase"] == "fwd" for _, a in ir.nodes(data=True)) == 53 + 1


# ---------------------------------------------------------------------------------------- structure


def test_resnet18_structure() -> None:
    ir = ir_of(models.resnet18(), (1, 3, 32, 32), sparsity=0.8)
    assert nx.is_directed_acyclic_graph(ir)
    forward = [n for n, a in ir.nodes(data=True) if a["op"] in ("conv2d", "linear") and a["phase"] == "fwd"]
    assert len(forward) == 21
    for node in forward:
        layer = node.removesuffix("/fwd")
        assert f"{layer}/bwd_weight" in ir
        assert (f"{layer}/bwd_input" in ir) == (layer != "conv1")  # no gradient to the images
    backward = [n for n, a in ir.nodes(data=True) if a["phase"].startswith("bwd") and a["fx_node"]]
    for node in backward:
        forward_node = node.rsplit("/", 1)[0] + "/fwd"
        if forward_node in ir:
            assert nx.has_path(ir, forward_node, node), node
    phases = {a["phase"] for _, a in ir.nodes(data=True)}
    assert phases == {"fwd", "bwd_input", "bwd_weight", "sparsify", "update"}
    # 20 sparsified layers, each with a weight Top-K; the three downsample convs share X_s with the
    # first conv of their block (same input, same density), so 17 activation Top-Ks
    roles = [a["role"] for _, a in ir.nodes(data=True) if a["op"] == "topk"]
    assert (roles.count("weight"), roles.count("input")) == (20, 17)


def test_edges_are_tensor_dependencies() -> None:
    ir = ir_of(TwoConv(), (2, 4, 11, 11), sparsity=0.75)
    assert ir.has_edge("swat.conv.w_topk/sparsify", "conv/fwd")  # W_s
    assert ir.has_edge("swat.conv.w_topk/sparsify", "conv/bwd_input")
    assert ir.has_edge("swat.conv.x_topk/sparsify", "conv/bwd_weight")  # X_s
    assert ir.has_edge("first/fwd", "swat.conv.x_topk/sparsify")
    assert ir.has_edge("conv/bwd_weight", "conv/update")
    assert not ir.has_edge("conv/fwd", "conv/bwd_input")  # dX needs G and W_s only


# ---------------------------------------------------------------------------------------- semantics


def test_dense_algorithm_gives_no_reduction() -> None:
    report = swat_fx.estimate_cost(swat_fx.transform(models.small_cnn(), algorithm="dense"), torch.randn(4, 1, 8, 8))
    for pair in (report.flops, report.param_bytes_bwd, report.activation_bytes_per_sample, report.cycles):
        assert pair.dense > 0 and pair.reduction == 0
    assert report.speedup == 1


def test_dense_baseline_of_a_swat_ir_is_the_dense_ir() -> None:
    x = torch.randn(2, 3, 8, 8)
    dense = swat_fx.estimate_cost(swat_fx.transform(Block(), algorithm="dense"), x, accelerator="balanced")
    swat = swat_fx.estimate_cost(swat_fx.transform(Block(), 0.7), x, accelerator="balanced")
    for name in ("flops", "dram_bytes", "param_bytes_bwd", "activation_bytes_per_sample", "cycles"):
        assert getattr(swat, name).dense == pytest.approx(getattr(dense, name).swat), name


def test_reduction_grows_with_sparsity() -> None:
    x = torch.randn(2, 3, 8, 8)
    reports = [swat_fx.estimate_cost(swat_fx.transform(Block(), s), x) for s in (0.5, 0.7, 0.9)]
    for name in ("flops", "param_bytes_bwd", "activation_bytes_per_sample", "cycles"):
        values = [getattr(r, name).reduction for r in reports]
        assert 0 < values[0] < values[1] < values[2], name


def test_saw_has_a_dense_forward() -> None:
    ir = ir_of(TwoConv(), (2, 4, 11, 11), sparsity=0.75, algorithm="saw")
    fwd, dx, dw = (ir.nodes[f"conv/{p}"] for p in ("fwd", "bwd_input", "bwd_weight"))
    assert fwd["flops_effective"] == fwd["flops_dense"]
    assert reads(ir, "conv/fwd", "W")["density"] == 1.0
    assert dx["flops_effective"] == pytest.approx(0.25 * dx["flops_dense"])
    assert reads(ir, "conv/bwd_input", "W")["density"] == 0.25
    assert reads(ir, "conv/bwd_weight", "X")["density"] == 0.25
    assert dw["density_a"] == 0.25


def test_meprop_sparsifies_the_gradient_operand() -> None:
    ir = ir_of(TwoConv(), (2, 4, 11, 11), sparsity=0.75, algorithm="meprop")
    assert ir.nodes["conv/fwd"]["flops_effective"] == ir.nodes["conv/fwd"]["flops_dense"]
    g_topk = "swat.conv.g_topk/sparsify"
    assert ir.nodes[g_topk]["role"] == "grad"
    assert nx.has_path(ir, "fc/bwd_input", g_topk)  # G_s is cut from the gradient that arrives
    for phase, operand in (("bwd_input", "density_a"), ("bwd_weight", "density_b")):
        node = f"conv/{phase}"
        assert ir.has_edge(g_topk, node)
        assert ir.nodes[node][operand] == 0.25
    assert reads(ir, "conv/bwd_input", "W")["density"] == 1.0
    assert reads(ir, "conv/bwd_weight", "X")["density"] == 1.0
    # dW = X^T G_s: 10 800 MACs at G density 0.25, plus db = ΣG_s (600 adds)
    assert ir.nodes["conv/bwd_weight"]["flops_effective"] == pytest.approx(2 * 10800 * 0.25 + 600)


def test_fw_a_masks_the_input_gradient() -> None:
    ir = ir_of(TwoConv(), (2, 4, 11, 11), sparsity=0.75, sites={"fw_a"})
    assert reads(ir, "conv/fwd", "X")["density"] == 0.25
    mask = ir.nodes["swat.conv.x_topk/sparsify_bwd"]
    assert mask["phase"] == "sparsify" and mask["writes"][0]["density"] == 0.25
    assert ir.has_edge("conv/bwd_input", "swat.conv.x_topk/sparsify_bwd")
    assert ir.has_edge("swat.conv.x_topk/sparsify_bwd", "first/bwd_weight")


def test_compressed_bytes_match_the_formulas() -> None:
    ir = ir_of(TwoConv(), (2, 4, 11, 11), sparsity=0.75)
    w_s = reads(ir, "conv/fwd", "W")  # [12, 2, 3, 3]: 216 entries, 54 kept, fp32
    assert w_s["bytes_dense"] == 216 * 4
    assert w_s["bytes_bitmap"] == pytest.approx(math.ceil(216 / 8) + 54 * 4)
    assert w_s["bytes_csr"] == pytest.approx(54 * (4 + 4) + (12 + 1) * 4)
    x_s = reads(ir, "conv/bwd_weight", "X")  # [2, 8, 11, 11]: 1936 entries, 484 kept; CSR rows = 2 samples
    assert x_s["bytes_bitmap"] == pytest.approx(math.ceil(1936 / 8) + 484 * 4)
    assert x_s["bytes_csr"] == pytest.approx(484 * 8 + 3 * 4)
    node = ir.nodes["conv/fwd"]  # reads X (dense), W_s, bias [12]; writes Y [2, 12, 5, 5]
    assert node["bytes_read_bitmap"] == pytest.approx(1936 * 4 + math.ceil(216 / 8) + 54 * 4 + 12 * 4)
    assert node["bytes_read_dense"] == (1936 + 216 + 12) * 4
    assert node["bytes_written_csr"] == 600 * 4


# ---------------------------------------------------------------------------------------- cost model


def one_linear_ir() -> nx.DiGraph:
    """Linear(8, 4) on [2, 8] with every layer sparsified at 50 % (first included)."""
    return ir_of(nn.Linear(8, 4), (2, 8), sparsity=0.5, sparsify_first=True)


@pytest.mark.parametrize(("skip", "efficiency", "fwd_work", "dw_work"), [
    # fwd: 128 product FLOPs on X (dense) · W_s (0.5) + 8 bias; dW: X_s (0.5) · G (dense) + 8
    ("none", 1.0, 136, 136),
    ("one", 1.0, 64 + 8, 64 + 8),
    ("both", 1.0, 64 + 8, 64 + 8),
    ("one", 0.5, 96 + 8, 96 + 8),
])
def test_compute_bound_cycles(skip: str, efficiency: float, fwd_work: float, dw_work: float) -> None:
    acc = Accelerator(macs_per_cycle=1, dram_bytes_per_cycle=math.inf, skip=skip, skip_efficiency=efficiency)
    report = swat_fx.estimate_cost(one_linear_ir(), accelerator=acc)
    # loss 4·8 + 2·8, update 6·(32 + 4), Top-K of W (32) and X (16) with period 1
    rest = 32 + 16 + 6 * 36 + (32 + 32 * (1 + SELECT)) + (16 + 16 * (1 + SELECT))
    assert report.cycles.dense == pytest.approx((136 + 136 + 32 + 16 + 6 * 36) / 2)
    assert report.cycles.swat == pytest.approx((fwd_work + dw_work + rest) / 2)


def test_memory_bound_cycles_and_saved_activations() -> None:
    acc = Accelerator(macs_per_cycle=1e15, dram_bytes_per_cycle=1, skip="none", format="bitmap")
    report = swat_fx.estimate_cost(one_linear_ir(), accelerator=acc)
    # dense bytes: fwd X 64 + W 128 + b 16 + Y 32; loss fwd Y 32 + loss 4 + softmax 32; loss bwd 32 + 32;
    # dW: X 64 + G 32 + dW 128 + db 16; update: W, dW, V, W', V' (5 · 128) and the same for b (5 · 16)
    dense = (64 + 128 + 16 + 32) + (32 + 4 + 32) + (32 + 32) + (64 + 32 + 128 + 16) + 5 * 128 + 5 * 16
    assert report.cycles.dense == pytest.approx(dense)
    w_s, x_s = math.ceil(32 / 8) + 16 * 4, math.ceil(16 / 8) + 8 * 4  # bitmap W_s [4, 8], X_s [2, 8]
    topk = (128 + w_s) + (64 + x_s)  # each Top-K reads the dense tensor and writes the sparse one
    swat = (64 + w_s + 16 + 32) + (32 + 4 + 32) + (32 + 32) + (x_s + 32 + 128 + 16) + 5 * 128 + 5 * 16 + topk
    assert report.cycles.swat == pytest.approx(swat)
    fused = swat_fx.estimate_cost(one_linear_ir(), accelerator=acc.replace(fuse_topk=True, format_overhead=0.1))
    assert fused.cycles.swat == pytest.approx(swat - 128 - 64 + 0.1 * 2 * (w_s + x_s))
    assert report.activation_bytes_per_sample.dense == pytest.approx(64 / 2)  # dW's X, per sample
    assert report.activation_bytes_per_sample.swat == pytest.approx(x_s / 2)


def test_parameter_and_activation_bytes_of_the_backward() -> None:
    model = models.mlp(in_features=8, hidden=(6,), num_classes=4)  # Flatten, Linear(8, 6), ReLU, Linear(6, 4)
    report = swat_fx.estimate_cost(swat_fx.transform(model, 0.5), torch.randn(2, 8))
    # Only the second linear's dX reads a weight ([4, 6], the first has no dX): dense 96 B, W_s in bitmap.
    assert report.param_bytes_bwd.dense == 24 * 4
    assert report.param_bytes_bwd.swat == pytest.approx(math.ceil(24 / 8) + 12 * 4)
    # Kept for dW: the first layer's input [2, 8] (dense) and the second's [2, 6] (X_s).
    assert report.activation_bytes_per_sample.dense == pytest.approx((64 + 48) / 2)
    assert report.activation_bytes_per_sample.swat == pytest.approx((64 + math.ceil(12 / 8) + 6 * 4) / 2)


def test_batch_norm_inputs_are_kept_dense() -> None:
    ir = ir_of(Block(), (2, 3, 8, 8), sparsity=0.5)
    report = swat_fx.estimate_cost(ir)
    kept_dense = {"x": 2 * 3 * 64, "conv1": 2 * 4 * 64, "pool": 2 * 4 * 16, "flatten": 2 * 4}  # entries
    bitmap = {name: math.ceil(n / 8) + n / 2 * 4 for name, n in kept_dense.items()}
    # dW of conv1 reads x, BN reads its input conv1; conv2 and fc read X_s (pool, flatten) in SWAT
    assert report.activation_bytes_per_sample.dense == pytest.approx(4 * sum(kept_dense.values()) / 2)
    swat = 4 * (kept_dense["x"] + kept_dense["conv1"]) + bitmap["pool"] + bitmap["flatten"]
    assert report.activation_bytes_per_sample.swat == pytest.approx(swat / 2)


def test_measured_densities_agree_with_the_eager_backend() -> None:
    data = load_digits(seed=0)
    batches = [data.x_train[i:i + 16] for i in range(0, 48, 16)]
    torch.manual_seed(0)
    model = swat_fx.transform(models.small_cnn(), 0.7, sites={"fw_w", "bw_w", "bw_a", "bw_g"}, period=2)
    ir = swat_fx.to_accel_ir(model, batches[0], densities="measured", batches=batches)
    eager = copy.deepcopy(model).train()
    sites = [(layer, slot) for layer in ("conv2", "conv3", "fc") for slot in ("w", "x", "g")]
    achieved = dict.fromkeys(sites, 0.0)
    for batch in batches:  # the eager backend trains on the same batches; each site records its density
        out = eager(batch)
        (0.5 * out.pow(2).sum()).backward()
        for layer, slot in sites:
            achieved[layer, slot] += float(eager.get_submodule(f"swat.{layer}.{slot}_topk").density) / len(batches)
    for layer in ("conv2", "conv3", "fc"):
        assert reads(ir, f"{layer}/fwd", "W")["density"] == pytest.approx(achieved[layer, "w"])
        assert reads(ir, f"{layer}/bwd_weight", "X")["density"] == pytest.approx(achieved[layer, "x"])
        assert ir.nodes[f"{layer}/bwd_input"]["density_a"] == pytest.approx(achieved[layer, "g"])
    assert len(set(achieved.values())) > 3  # measured, not the 0.3 target everywhere
    assert all(float(site.step) == 0 for site in model.swat.modules() if hasattr(site, "step"))  # untouched


def test_achieved_densities_read_the_model_state() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    x = torch.randn(4, 1, 8, 8)
    untrained = swat_fx.to_accel_ir(model, x, densities="achieved")
    assert reads(untrained, "conv2/fwd", "W")["density"] == 1.0  # before the first training step
    model.train()
    model(x).sum().backward()
    trained = swat_fx.to_accel_ir(model, x, densities="achieved")
    assert reads(trained, "conv2/fwd", "W")["density"] == pytest.approx(float(model.swat.conv2.w_topk.density))


# ---------------------------------------------------------------------------------------- export, CLI


def test_save_ir_formats(tmp_path) -> None:
    ir = ir_of(Block(), (2, 3, 8, 8), sparsity=0.5)
    data = json.loads(swat_fx.save_ir(ir, tmp_path / "step.json").read_text())
    back = nx.node_link_graph(data, edges="edges")
    assert set(back.nodes) == set(ir.nodes) and set(back.edges) == set(ir.edges)
    assert back.nodes["conv2/fwd"]["flops_dense"] == ir.nodes["conv2/fwd"]["flops_dense"]
    graphml = nx.read_graphml(swat_fx.save_ir(ir, tmp_path / "step.graphml"))
    assert set(graphml.edges) == set(ir.edges)
    assert json.loads(graphml.nodes["conv2/fwd"]["reads"])[0]["role"] == "X"
    dot = swat_fx.save_ir(ir, tmp_path / "step.dot").read_text()
    assert dot.startswith("digraph") and '"conv2/fwd" -> "<loss>/fwd"' not in dot
    assert '"swat.conv2.w_topk/sparsify" -> "conv2/fwd";' in dot
    with pytest.raises(ValueError, match="suffix"):
        swat_fx.save_ir(ir, tmp_path / "step.txt")


def test_cli_single_and_sweep(tmp_path, capsys) -> None:
    assert cli(["cost", "--model", "small_cnn", "--sparsity", "0.7", "--ir", str(tmp_path / "ir.dot")]) == 0
    out = capsys.readouterr().out
    assert "training FLOPs" in out and "top 10 layers" in out and (tmp_path / "ir.dot").exists()
    args = ["cost", "--model", "small_cnn", "--sparsity", "0.5,0.9", "--accelerator", "bandwidth_limited",
            "--json", str(tmp_path / "sweep.json"), "--plot", str(tmp_path / "fig8.png")]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "param access reduction" in out and "activation compression" in out
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["setup"]["sparsity"] for row in sweep] == [0.5, 0.9]
    assert (tmp_path / "fig8.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------- bad input


def test_shape_errors_name_the_node_and_shapes() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    with pytest.raises(ShapePropagationError, match=r"node 'conv1'.*\[2, 3, 8, 8\].*conv1.weight: \[16, 1, 3, 3\]"):
        swat_fx.to_accel_ir(model, torch.randn(2, 3, 8, 8))
    with pytest.raises(ShapePropagationError, match=r"takes 1 input\(s\) \(\w+\), but 0 example input"):
        swat_fx.to_accel_ir(model, [])
    with pytest.raises(TypeError, match=r"swat_fx\.transform"):
        swat_fx.to_accel_ir(models.small_cnn(), torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="batches"):
        swat_fx.to_accel_ir(model, torch.randn(2, 1, 8, 8), densities="measured")


@pytest.mark.parametrize("bad", [{"macs_per_cycle": 0}, {"dram_bytes_per_cycle": -1.0}, {"clock_ghz": 0.0},
                                 {"macs_per_cycle": math.nan}, {"skip_efficiency": 1.5}, {"skip": "some"},
                                 {"format": "coo"}, {"format_overhead": -0.1}])
def test_accelerator_rejects_bad_rates(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Accelerator(**bad)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="presets are: ideal, balanced, bandwidth_limited"):
        swat_fx.estimate_cost(one_linear_ir(), accelerator="tpu")


def test_an_empty_batch_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    with pytest.raises(ValueError, match="empty batch"):
        swat_fx.to_accel_ir(model, torch.randn(0, 1, 8, 8))
    assert cli(["cost", "--model", "small_cnn", "--input-shape", "0,1,8,8"]) == 2
    assert "empty batch" in capsys.readouterr().err
