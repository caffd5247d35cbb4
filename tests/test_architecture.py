"""The architecture's promises: one backend-neutral SWAT graph whatever the eager storage choice, pass
contracts checked and named, kinds instead of strings, a light core, and the layout rules of SPEC §5."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import swat_fx
from swat_fx import models
from swat_fx.backends.eager import kernels
from swat_fx.backends.eager.formats import Format, Kernel
from swat_fx.contract import OP_META, record_of
from swat_fx.passes import (
    AssignBudgets,
    FindWeightProducts,
    InsertSparsification,
    PassContractError,
    PassManager,
    SwatPass,
)
from swat_fx.passes.conditions import BACKEND_NEUTRAL
from swat_fx.topk import TopK

ROOT = Path(__file__).resolve().parents[1]
EAGER_CHOICES = [("auto", "nchw"), ("masked", "nchw"), ("compressed", "nchw"), ("compact", "filter")]


def _resnet(kernel: str, granularity: str) -> fx.GraphModule:
    torch.manual_seed(0)  # ImageNet stem: ReLU -> max-pool, which `compressed` lowers to its own kernels
    return swat_fx.transform(models.resnet18(num_classes=10), 0.7, kernel=kernel, granularity=granularity)


# ------------------------------------------------------------------ one neutral graph, any eager lowering


@pytest.mark.parametrize(("kernel", "granularity"), EAGER_CHOICES)
def test_every_eager_choice_keeps_the_same_neutral_graph_and_state(kernel: str, granularity: str) -> None:
    lowered, masked = _resnet(kernel, granularity), _resnet("masked", granularity)
    assert swat_fx.swat_graph(lowered).code == swat_fx.swat_graph(masked).code
    assert list(lowered.state_dict()) == list(masked.state_dict())
    neutral = swat_fx.swat_graph(lowered).code
    assert "format =" not in neutral and "kernel =" not in neutral and "swat_fx_backends" not in neutral


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "granularity"), EAGER_CHOICES)
def test_onnx_export_and_cost_model_read_any_eager_choice(kernel: str, granularity: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 32, 32)
    lowered, masked = _resnet(kernel, granularity), _resnet("masked", granularity)
    session = swat_fx.load_onnx(swat_fx.export_onnx(lowered, x, tmp_path / "model.onnx"))
    (y,) = session.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), lowered.eval()(x), rtol=1e-4, atol=1e-4)
    cost, expected = swat_fx.estimate_cost(lowered, x), swat_fx.estimate_cost(masked, x)
    assert cost.as_dict() == expected.as_dict() and cost.flops.swat < cost.flops.dense


def test_the_neutral_graph_shares_the_models_parameters_and_sites() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    graph = swat_fx.swat_graph(model)
    assert dict(graph.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert all(p is model.get_parameter(name) for name, p in graph.named_parameters())
    assert graph.get_submodule("swat.conv2.w_topk") is model.get_submodule("swat.conv2.w_topk")


def test_records_are_immutable_and_free_of_graph_nodes() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    records = [record_of(n) for n in model.graph.nodes if OP_META in n.meta]
    assert records and all(r.sparsity is not None for r in records)
    with pytest.raises(AttributeError):
        records[0].sparsity = 0.1  # type: ignore[misc]
    assert not any(isinstance(v, fx.Node) for r in records for v in vars(r).values())


# ------------------------------------------------------------------------------------ pass contracts


def test_transforming_a_transformed_model_says_so() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    with pytest.raises(swat_fx.AlreadyTransformedError, match="already transformed by swat_fx"):
        swat_fx.transform(model, 0.5)
    with pytest.raises(swat_fx.AlreadyTransformedError):
        swat_fx.transform(copy.deepcopy(model), 0.5)


def test_a_pass_run_out_of_order_is_named_with_its_precondition() -> None:
    traced = fx.symbolic_trace(models.small_cnn())
    with pytest.raises(PassContractError, match=r"pass InsertSparsification: requires a sparsity on every"):
        PassManager([FindWeightProducts(), InsertSparsification()])(traced)
    again = PassManager([FindWeightProducts(), AssignBudgets(swat_fx.SwatConfig()), InsertSparsification()])
    transformed = again(fx.symbolic_trace(models.small_cnn()))
    with pytest.raises(PassContractError, match=r"pass FindWeightProducts: requires a graph without SWAT nodes"):
        PassManager([FindWeightProducts()])(transformed)


class _UseBeforeDefinition(SwatPass):
    """Deliberately broken: the first op reads the output of the last one."""

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes = [n for n in gm.graph.nodes if n.op == "call_module"]
        nodes[0].args = (nodes[-1],)
        return gm


class _ClaimsNeutralButSetsAFormat(SwatPass):
    ensures = (BACKEND_NEUTRAL,)

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        site = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("swat."))
        site.update_kwarg("format", Format.COMPRESSED)
        return gm


def test_the_graph_is_linted_after_each_pass_and_the_broken_pass_named() -> None:
    with pytest.raises(PassContractError, match=r"pass _UseBeforeDefinition: left an invalid graph: .*before"):
        PassManager([FindWeightProducts(), _UseBeforeDefinition(), AssignBudgets(swat_fx.SwatConfig())])(
            fx.symbolic_trace(models.small_cnn()))
    passes = [FindWeightProducts(), AssignBudgets(swat_fx.SwatConfig()), InsertSparsification(),
              _ClaimsNeutralButSetsAFormat()]
    with pytest.raises(PassContractError, match=r"pass _ClaimsNeutralButSetsAFormat: ensures a backend-neutral"):
        PassManager(passes)(fx.symbolic_trace(models.small_cnn()))


def test_a_graph_module_keeps_its_tracing_unless_options_ask_to_trace_it_again() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).relu()

    class BlockLeaf(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return name == "block" or super().is_leaf_module(m, name)

    root = nn.Sequential()
    root.block, root.head = Block(), nn.Conv2d(4, 2, 1)
    gm = fx.GraphModule(root, BlockLeaf().trace(root))  # the user made `block` a leaf
    with pytest.warns(UserWarning, match=r"leaves 1 of the 2 weight products of .* dense: 1 inside a leaf module"):
        kept = swat_fx.transform(gm, 0.5, sparsify_first=True)
    assert [(i.name, i.sparsified, i.dense_reason) for i in swat_fx.layers(kept)] == [
        ("block", False, swat_fx.DenseReason.LEAF_MODULE), ("head", True, None)]
    retraced = swat_fx.transform(gm, 0.5, sparsify_first=True, leaf_modules=(nn.ReLU,))
    assert [i.name for i in swat_fx.layers(retraced)] == ["block.conv", "head"]


# -------------------------------------------------------------------------------- kinds, not strings


def test_unknown_kernel_and_format_are_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown kernel 'fast'; valid values are: 'auto', 'masked'"):
        swat_fx.transform(models.small_cnn(), 0.7, kernel="fast")
    with pytest.raises(TypeError, match="StorageFormat"):
        TopK(0.5, "nchw", "input", "conv")(torch.randn(2, 3, 4, 4), format="compressed")
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    args = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    for bad in ("masked", Kernel.AUTO):
        with pytest.raises(ValueError, match="eager kernel of a lowered op"):
            kernels.conv(x, w, None, kernel=bad, **args)


def test_compact_fallback_is_visible() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1))
    with pytest.warns(UserWarning, match=r"layer '1' runs the masked kernel instead of kernel='compact'.*groups=2"):
        explicit = swat_fx.transform(model, 0.5, granularity="filter", kernel="compact")
    with pytest.warns(UserWarning, match=r"layer '1' runs the masked kernel .*kernel='auto'.*groups=2"):
        auto = swat_fx.transform(model, 0.5, granularity="filter")
    for transformed in (explicit, auto):
        infos = {i.name: i for i in swat_fx.layers(transformed)}
        assert (infos["1"].kernel, infos["2"].kernel, infos["0"].kernel) == (Kernel.MASKED, Kernel.COMPACT, None)
        assert "groups=2" in infos["1"].note and infos["2"].note is None


def test_layers_leaves_the_models_graph_and_modes_alone() -> None:
    model = swat_fx.transform(models.small_cnn(), 0.7)
    model.get_submodule("bn1").eval()  # a mixed-mode model, as a user may make one
    modes = {name: m.training for name, m in model.named_modules()}
    infos = swat_fx.layers(model, [torch.randn(2, 1, 28, 28)])
    assert infos[1].input_shape is not None and infos[1].output_shape is not None
    assert not any("tensor_meta" in node.meta for node in model.graph.nodes)
    assert {name: m.training for name, m in model.named_modules()} == modes


# ------------------------------------------------------------------------------- light core, layout


@pytest.mark.slow
def test_import_swat_fx_loads_neither_the_lab_nor_optional_backends() -> None:
    heavy = ("sklearn", "tqdm", "matplotlib", "onnx", "onnxruntime", "networkx", "pandas",
             "swat_fx.lab", "swat_fx.backends.ort", "swat_fx.backends.accel")
    code = ("import sys, torch; before = set(sys.modules); import swat_fx, swat_fx.models; "
            "swat_fx.transform(swat_fx.models.small_cnn(), 0.7); "
            f"new = set(sys.modules) - before; heavy = {heavy!r}; "
            "loaded = sorted(m for m in new if any(m == h or m.startswith(h + '.') for h in heavy)); "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def _imports(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return imported


def test_passes_never_import_backends_and_backends_never_import_each_other() -> None:
    for path in (ROOT / "passes").glob("*.py"):
        assert not any(m.startswith("swat_fx.backends") for m in _imports(path)), path
    backends = [p.name for p in (ROOT / "backends").iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert set(backends) >= {"eager", "ort", "accel"}
    for backend in backends:
        others = tuple(f"swat_fx.backends.{b}" for b in backends if b != backend)
        for path in (ROOT / "backends" / backend).glob("*.py"):
            assert not any(m.startswith(others) for m in _imports(path)), path


def test_core_modules_never_import_the_lab() -> None:
    for path in (ROOT / "swat_fx").glob("*.py"):
        assert not any(m.startswith("swat_fx.lab") for m in _imports(path)), path


def test_the_neutral_graph_trains_like_the_model_one_step_per_site() -> None:
    torch.manual_seed(0)
    model = swat_fx.transform(models.resnet18(num_classes=10, stem="cifar"), 0.7, period=2)
    graph = swat_fx.swat_graph(model)
    twin = copy.deepcopy(model)
    for step in range(3):
        x = torch.randn(2, 3, 32, 32)
        graph(x).square().sum().backward()
        twin(x).square().sum().backward()
        assert {int(site.step) for _, site in swat_fx.contract.sites(model)} == {step + 1}
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_layers_sharing_an_activation_agree_on_its_format() -> None:
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.plain, self.grouped = nn.Conv2d(8, 4, 3), nn.Conv2d(8, 4, 3, groups=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x).relu()
            return self.plain(x) + self.grouped(x)

    with pytest.warns(UserWarning, match="layer 'plain' runs the masked kernel.*shares its X_s"):
        model = swat_fx.transform(Fork(), 0.5, granularity="filter", kernel="compact")
    infos = {i.name: i for i in swat_fx.layers(model)}
    assert infos["plain"].kernel is infos["grouped"].kernel is Kernel.MASKED
    assert model.get_submodule("swat.plain.x_topk") is not None
    with pytest.raises(AttributeError):
        model.get_submodule("swat.grouped.x_topk")  # one X_s site for both
    model(torch.randn(2, 3, 8, 8)).sum().backward()
