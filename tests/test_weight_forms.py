"""Batched and sliced weights (SPEC §2): `bmm`, a 3-D `matmul`, batched `einsum`, and slices of a packed
parameter (`chunk`, `split`, `w[a:b]`, `narrow`, `nn.MultiheadAttention` cross-attention), under both
tracers, against the independent reference (`ref_product`, `reference_model`)."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ort_checks import ort_step_matches_eager
from reference import GRANULARITIES, ref_mask
from reference_models import count_weight_products, ref_product, reference_model

import swat_fx

SPARSITY = 0.6
ALGORITHMS = ["swat", "saw", "meprop", frozenset({"fw_a", "bw_w"}), frozenset({"fw_w", "bw_a", "bw_g"})]
CASES = [("swat", g) for g in GRANULARITIES] + [(a, "nchw") for a in ALGORITHMS[1:]]


@dataclass(frozen=True)
class Ref:
    """How a test model computes its products by the reference instead of torch."""

    sites: object
    granularity: str

    def __call__(self, kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return ref_product(kind, x, w, b, self.sites, 1 - SPARSITY, self.granularity)


def _loss(y: torch.Tensor) -> torch.Tensor:
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()


def _transform(model: nn.Module, tracer: str, x: torch.Tensor, sites: object, granularity: str) -> nn.Module:
    inputs = {"example_inputs": (x,)} if tracer == "export" else {}
    options = {"algorithm": sites} if isinstance(sites, str) else {"sites": sites}
    return swat_fx.transform(model, SPARSITY, granularity=granularity, tracer=tracer, **options, **inputs)


def _check_gradients(model: nn.Module, transformed: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    actual_x, expected_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    actual, expected = transformed(actual_x), reference(expected_x)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
    _loss(actual).backward()
    _loss(expected).backward()
    torch.testing.assert_close(actual_x.grad, expected_x.grad, rtol=1e-9, atol=1e-9)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(transformed.get_parameter(name).grad, param.grad, rtol=1e-9, atol=1e-9,
                                   msg=f"gradient of {name}")


def _check_layers_and_gradients(model: nn.Module, transformed: nn.Module, x: torch.Tensor, sites: object,
                                granularity: str, layers: list[tuple[str, tuple[int, ...], bool]]) -> None:
    """`layers()` lists (name, weight shape, sparsified) as given, as many as an independent count of the
    exported graph's products; outputs and gradients equal those of the model's reference twin (the
    same class built with `Ref`, sharing the dense first layer `stem`)."""
    infos = swat_fx.layers(transformed)
    assert [(i.name, i.weight_shape, i.sparsified) for i in infos] == layers
    assert len(infos) == count_weight_products(model, (x,))
    reference = type(model)(Ref(sites, granularity)).double()
    reference.load_state_dict(model.state_dict())
    reference.stem = model.stem  # shared: its gradient is compared once
    _check_gradients(model, transformed, reference, x)


# ------------------------------------------------------------------------------ batched weights


class Batched(nn.Module):
    """Batched weights [3, ., .] in every form: bmm, 3-D matmul, einsum (either weight layout, and
    through a transpose), `x @ W.mT`. With `ref`, every product is computed by the reference instead."""

    def __init__(self, ref: Ref | None = None) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)  # the first layer: dense by the default rule
        self.stored_in_out = nn.Parameter(torch.randn(3, 8, 6))
        self.stored_out_in = nn.Parameter(torch.randn(3, 6, 8))
        self.by_matmul = nn.Parameter(torch.randn(3, 6, 6))
        self.by_einsum_t = nn.Parameter(torch.randn(3, 6, 5))
        self.by_mT = nn.Parameter(torch.randn(3, 4, 5))
        self.through_transpose = nn.Parameter(torch.randn(3, 4, 4))
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.ref is None:
            y = torch.bmm(x, self.stored_in_out) + torch.einsum("bni,boi->bno", x, self.stored_out_in)
            y = torch.einsum("bni,bio->bno", torch.relu(y @ self.by_matmul), self.by_einsum_t)
            y = y @ self.by_mT.mT
            return torch.einsum("bni,boi->bno", y, self.through_transpose.transpose(1, 2))
        ref = self.ref
        y = ref("bmm", x, self.stored_in_out.transpose(1, 2)) + ref("bmm", x, self.stored_out_in)
        y = ref("bmm", torch.relu(ref("bmm", y, self.by_matmul.transpose(1, 2))), self.by_einsum_t.transpose(1, 2))
        y = ref("bmm", y, self.by_mT)
        return ref("bmm", y, self.through_transpose.transpose(1, 2))


@pytest.mark.parametrize(("sites", "granularity"), CASES)
@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_batched_weights_are_sparsified_and_match_the_reference(tracer: str, sites: object, granularity: str) -> None:
    torch.manual_seed(0)
    model = Batched().double()
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    with torch.no_grad():  # no ties in the weights' Top-K
        model.by_matmul.add_(torch.linspace(0, 1e-3, model.by_matmul.numel()).view_as(model.by_matmul))
    transformed = _transform(model, tracer, x, sites, granularity)
    _check_layers_and_gradients(model, transformed, x, sites, granularity, [
        ("stem", (8, 8), False), ("stored_in_out", (3, 6, 8), True), ("stored_out_in", (3, 6, 8), True),
        ("by_matmul", (3, 6, 6), True), ("by_einsum_t", (3, 5, 6), True), ("by_mT", (3, 4, 5), True),
        ("through_transpose", (3, 4, 4), True)])


@pytest.mark.parametrize("granularity", ["filter", "chw"])
def test_a_batched_weight_ranks_the_rows_of_all_its_matrices_together(granularity: str) -> None:
    """Filter granularity on [B, O, I] keeps the best of its B·O rows, whichever matrix they are in
    (a matrix ten times larger keeps all its 6 rows, and 3 of the other 12 are kept), `chw` ranks each
    row's entries."""
    torch.manual_seed(0)
    model = Batched()
    with torch.no_grad():
        model.by_matmul[1].mul_(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compact kernels do not take the batched weight
        transformed = swat_fx.transform(model, 0.5, granularity=granularity, sparsify_first=True)
    transformed(torch.randn(3, 7, 8)).sum().backward()
    used = model.by_matmul.detach().transpose(1, 2)  # [B, O, I]: `y @ by_matmul` stores it [B, I, O]
    w_s = transformed.get_submodule("swat.by_matmul.w_topk")(used)
    expected = ref_mask(used, 0.5, granularity, "weight", "linear")
    assert torch.equal(w_s != 0, expected)
    if granularity == "filter":
        assert bool(expected[1].all()) and int(expected.any(-1).sum()) == 9  # per matrix, 3 rows of each


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_batched_weight_times_a_vector_sums_the_gradients_of_its_products(tracer: str) -> None:
    """`v @ W` with v [I] and W [B, I, O] is B products of the row v: dv is their sum."""
    torch.manual_seed(0)

    class RowTimesBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 6, 4, dtype=torch.float64))

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return v @ self.weight

    model, v = RowTimesBatch(), torch.randn(6, dtype=torch.float64)
    transformed = swat_fx.transform(model, SPARSITY, tracer=tracer, sparsify_first=True,
                                    example_inputs=(v,) if tracer == "export" else None)
    assert swat_fx.layers(transformed)[0].sparsified
    w_ref = model.weight.detach().clone().requires_grad_()
    v_ref, v_own = v.clone().requires_grad_(), v.clone().requires_grad_()
    expected = ref_product("bmm", v_ref.expand(3, 1, 6), w_ref.transpose(1, 2), None, "swat", 1 - SPARSITY,
                           "nchw").squeeze(1)
    actual = transformed(v_own)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    _loss(actual).backward()
    _loss(expected).backward()
    torch.testing.assert_close(v_own.grad, v_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(transformed.weight.grad, w_ref.grad, rtol=1e-12, atol=1e-12)


def test_erk_gives_a_batched_weight_the_density_of_its_matrices() -> None:
    class Twins(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.matrix = nn.Linear(6, 6), nn.Linear(6, 6, bias=False)
            self.batched = nn.Parameter(torch.randn(3, 6, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.matrix(self.stem(x)) @ self.batched

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformed = swat_fx.transform(Twins(), SPARSITY, distribution="erk")
    sparsity = {i.name: i.sparsity for i in swat_fx.layers(transformed)}
    assert sparsity["batched"] == pytest.approx(sparsity["matrix"]) and 0 < sparsity["batched"] < 1


def test_a_batched_weight_with_broadcast_activations_matches_per_batch_products() -> None:
    """`x @ W` with x [N, I] and W [B, I, O] broadcasts x: dX sums the B products' gradients."""
    torch.manual_seed(0)

    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 6, 4, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight

    model = Broadcast()
    transformed = swat_fx.transform(model, SPARSITY, sparsify_first=True)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = model.weight.detach().clone().requires_grad_()
    expected = ref_product("bmm", x_ref.expand(3, -1, -1), w_ref.transpose(1, 2), None, "swat", 1 - SPARSITY,
                           "nchw")
    actual = transformed(x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    _loss(actual).backward()
    _loss(expected).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(transformed.weight.grad, w_ref.grad, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ sliced weights


class Packed(nn.Module):
    """Products of slices of packed parameters: `chunk`, `w[a:b]`, `narrow`, `split` (sizes and a
    size), columns of a weight stored [in, out]. With `ref`, computed by the reference."""

    def __init__(self, ref: Ref | None = None) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.packed = nn.Parameter(torch.randn(12, 8))
        self.packed_bias = nn.Parameter(torch.randn(12))
        self.split = nn.Parameter(torch.randn(12, 4))
        self.stored_in_out = nn.Parameter(torch.randn(4, 10))
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.ref is None:
            q, _, _ = self.packed.chunk(3)
            b_q, b_k, b_v = self.packed_bias.chunk(3)
            y = F.linear(x, q, b_q) + F.linear(x, self.packed[4:8], b_k) + x @ self.packed.narrow(0, 8, 4).T + b_v
            first, rest = torch.split(self.split, [4, 8])
            y = torch.relu(y @ first.T) + F.linear(y, rest.split(4)[1])
            return y @ self.stored_in_out[:, 2:7]
        ref, packed, bias = self.ref, self.packed, self.packed_bias
        y = ref("linear", x, packed[0:4], bias[0:4]) + ref("linear", x, packed[4:8], bias[4:8])
        y = y + ref("linear", x, packed[8:12]) + bias[8:12]
        y = torch.relu(ref("linear", y, self.split[0:4])) + ref("linear", y, self.split[8:12])
        return ref("linear", y, self.stored_in_out[:, 2:7].T)


@pytest.mark.parametrize(("sites", "granularity"), CASES)
@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_slices_of_a_parameter_are_sparsified_and_match_the_reference(tracer: str, sites: object,
                                                                      granularity: str) -> None:
    torch.manual_seed(0)
    model = Packed().double()
    x = torch.randn(6, 8, dtype=torch.float64)
    transformed = _transform(model, tracer, x, sites, granularity)
    _check_layers_and_gradients(model, transformed, x, sites, granularity, [
        ("stem", (8, 8), False), ("packed.rows_0_4", (4, 8), True), ("packed.rows_4_8", (4, 8), True),
        ("packed.rows_8_12", (4, 8), True), ("split.rows_0_4", (4, 4), True), ("split.rows_8_12", (4, 4), True),
        ("stored_in_out.cols_2_7", (5, 4), True)])


def test_the_state_of_a_slice_is_named_after_it_and_a_checkpoint_resumes() -> None:
    torch.manual_seed(0)
    model = Packed()
    transformed = swat_fx.transform(model, SPARSITY, period=3)
    keys = [k for k in transformed.state_dict() if k.startswith("swat.packed.")]
    assert "swat.packed.rows_4_8.w_topk.threshold" in keys and "swat.packed.rows_0_4.x_topk.threshold" in keys
    assert "rows_4_8_w_s" in transformed.code
    x = torch.randn(6, 8)
    transformed(x).sum().backward()
    resumed = swat_fx.transform(Packed(), SPARSITY, period=3)
    resumed.load_state_dict(transformed.state_dict())
    for clone in (transformed, resumed):
        clone.zero_grad()
        clone(x).sum().backward()
    assert torch.equal(transformed.packed.grad, resumed.packed.grad)


def test_a_slice_can_be_overridden_by_its_name() -> None:
    transformed = swat_fx.transform(Packed(), SPARSITY, layer_sparsity={"packed.rows_4_8": 0.0})
    dense = {i.name: i.dense_reason for i in swat_fx.layers(transformed) if not i.sparsified}
    assert dense == {"stem": swat_fx.DenseReason.FIRST_LAYER, "packed.rows_4_8": swat_fx.DenseReason.OVERRIDE}


class Slices(nn.Module):
    """Harder bounds: an uneven chunk, negative indices, narrow from the end, a slice of a slice, a chunk
    of columns (the input features), `w[:]` (the parameter itself). With `ref`, by the reference."""

    def __init__(self, ref: Ref | None = None) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.uneven = nn.Parameter(torch.randn(10, 8))
        self.columns = nn.Parameter(torch.randn(6, 8))
        self.whole = nn.Parameter(torch.randn(4, 4))
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.ref is None:
            _, _, last = self.uneven.chunk(3)  # rows 8:10
            y = torch.cat([F.linear(x, last), F.linear(x, self.uneven[-6:-2]),
                           F.linear(x, self.uneven.narrow(0, -3, 2)), F.linear(x, self.uneven[1:9][2:4])],
                          dim=-1)  # 2 + 4 + 2 + 2 features
            left, right = self.columns.chunk(2, dim=-1)
            y = F.linear(y[..., :4], left) + F.linear(y[..., 4:8], right) + y[..., 8:].sum(-1, keepdim=True)
            return F.linear(y[..., :4], self.whole[:])
        ref, w = self.ref, self.uneven
        y = torch.cat([ref("linear", x, w[8:10]), ref("linear", x, w[4:8]), ref("linear", x, w[7:9]),
                       ref("linear", x, w[3:5])], dim=-1)
        y = (ref("linear", y[..., :4], self.columns[:, :4]) + ref("linear", y[..., 4:8], self.columns[:, 4:])
             + y[..., 8:].sum(-1, keepdim=True))
        return ref("linear", y[..., :4], self.whole)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_uneven_negative_and_nested_slices_have_the_right_bounds(tracer: str) -> None:
    torch.manual_seed(0)
    model = Slices().double()
    x = torch.randn(6, 8, dtype=torch.float64)
    transformed = _transform(model, tracer, x, "swat", "nchw")
    _check_layers_and_gradients(model, transformed, x, "swat", "nchw", [
        ("stem", (8, 8), False), ("uneven.rows_8_10", (2, 8), True), ("uneven.rows_4_8", (4, 8), True),
        ("uneven.rows_7_9", (2, 8), True), ("uneven.rows_3_5", (2, 8), True), ("columns.cols_0_4", (6, 4), True),
        ("columns.cols_4_8", (6, 4), True), ("whole", (4, 4), True)])


def test_a_slice_with_bounds_known_only_at_run_time_is_reported() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.weight[: x.shape[0]])

    with pytest.warns(UserWarning, match=r"leaves 1 of the 1 weight products of Dynamic dense"):
        transformed = swat_fx.transform(Dynamic(), SPARSITY, sparsify_first=True)
    assert [(i.name, i.dense_reason) for i in swat_fx.layers(transformed)] == [
        ("weight", swat_fx.DenseReason.UNSUPPORTED_OP)]
    assert transformed(torch.randn(3, 4)).shape == (3, 3)


def test_a_strided_slice_and_an_indexed_weight_are_reported() -> None:
    class Strided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4))
            self.stack = nn.Parameter(torch.randn(2, 4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.weight[::2]) + x @ self.stack[0]

    with pytest.warns(UserWarning, match=r"leaves 2 of the 2 weight products of Strided dense: 2 an op SWAT"):
        transformed = swat_fx.transform(Strided(), SPARSITY, sparsify_first=True)
    infos = swat_fx.layers(transformed)
    assert [(i.name, i.dense_reason) for i in infos] == [("weight", swat_fx.DenseReason.UNSUPPORTED_OP),
                                                        ("stack", swat_fx.DenseReason.UNSUPPORTED_OP)]


# ------------------------------------------------------------------------------ cross-attention


class CrossAttention(nn.Module):
    def __init__(self, inputs: str, batch_first: bool) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.head = nn.Linear(16, 3)
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`inputs`: "kv" (key is value, not query: a q and a kv slice), "qkv" (three slices)."""
        x = self.stem(x)
        memory = torch.tanh(x)
        value = memory if self.inputs == "kv" else memory * 2
        return self.head(self.attention(x, memory, value, need_weights=False)[0])


@pytest.mark.parametrize(("sites", "granularity"), [("swat", "nchw"), ("swat", "filter"), ("saw", "chw"),
                                                    ("meprop", "nchw")])
@pytest.mark.parametrize(("inputs", "batch_first"), list(itertools.product(["kv", "qkv"], [True, False])))
@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_cross_attention_projections_are_sparsified_and_match_the_reference(
        tracer: str, inputs: str, batch_first: bool, sites: str, granularity: str) -> None:
    torch.manual_seed(0)
    model = CrossAttention(inputs, batch_first).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    transformed = _transform(model, tracer, x, sites, granularity)
    slices = ["rows_0_16", "rows_16_48"] if inputs == "kv" else ["rows_0_16", "rows_16_32", "rows_32_48"]
    infos = swat_fx.layers(transformed)
    assert [i.name for i in infos if i.sparsified] == [
        *(f"attention.in_proj_weight.{s}" for s in slices), "attention.out_proj", "head"]
    assert len(infos) == count_weight_products(model, (x,))
    reference = reference_model(model, sites, 1 - SPARSITY, granularity, dense={"stem"})
    _check_gradients(model, transformed, reference, x)


# ------------------------------------------------------------------------------ a weight on the left


class WeightLeft(nn.Module):
    """`W @ x` (mixing the second-last dim of x): stored [out, in], stored [in, out] (`W.T @ x`),
    batched, and by `torch.mm` on a matrix. With `ref`, computed by the reference on xᵀ."""

    def __init__(self, ref: Ref | None = None) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 6)
        self.mix = nn.Parameter(torch.randn(5, 4))
        self.stored_in_out = nn.Parameter(torch.randn(5, 3))
        self.batched = nn.Parameter(torch.randn(2, 4, 3))
        self.by_mm = nn.Parameter(torch.randn(2, 4))
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [2, 4, 6]: 4 rows mixed by the weights below
        if self.ref is None:
            y = self.stored_in_out.T @ torch.relu(self.mix @ x)
            y = torch.matmul(self.batched, y)
            return torch.mm(self.by_mm, y.sum(0))
        ref = self.ref
        y = ref("linear", torch.relu(ref("linear", x.mT, self.mix).mT).mT, self.stored_in_out.T).mT
        y = ref("bmm", y.mT, self.batched).mT
        return ref("linear", y.sum(0).mT, self.by_mm).mT


@pytest.mark.parametrize(("sites", "granularity"), CASES)
def test_a_weight_on_the_left_is_a_linear_on_the_transposed_input(sites: object, granularity: str) -> None:
    """Under export, which knows the activation's rank (symbolic tracing reports these products)."""
    torch.manual_seed(0)
    model = WeightLeft().double()
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compact kernels do not take the batched weight
        transformed = _transform(model, "export", x, sites, granularity)
    _check_layers_and_gradients(model, transformed, x, sites, granularity, [
        ("stem", (6, 6), False), ("mix", (5, 4), True), ("stored_in_out", (3, 5), True),
        ("batched", (2, 4, 3), True), ("by_mm", (2, 4), True)])


def test_a_weight_on_the_left_of_an_activation_of_unknown_rank_is_reported_by_symbolic_tracing() -> None:
    """Symbolic tracing cannot tell `W @ v` (a vector) from `W @ X`: it reports the product, export takes it."""
    class MatVec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 5))

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.weight @ v

    with pytest.warns(UserWarning, match=r"leaves 1 of the 1 weight products of MatVec dense"):
        transformed = swat_fx.transform(MatVec(), SPARSITY, sparsify_first=True)
    assert transformed(torch.randn(5)).shape == (3,)
    assert "pass example_inputs" in swat_fx.layers(transformed)[0].note
    assert swat_fx.layers(swat_fx.transform(MatVec(), SPARSITY, sparsify_first=True,
                                            example_inputs=(torch.randn(5, 2),)))[0].sparsified


def test_a_weight_times_a_vector_is_a_linear_as_it_stands() -> None:
    class MatVec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 5, dtype=torch.float64))

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.weight @ v

    torch.manual_seed(0)
    model, v = MatVec(), torch.randn(5, dtype=torch.float64)
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=(v,), sparsify_first=True)
    assert "transpose" not in transformed.code
    w_ref = model.weight.detach().clone().requires_grad_()
    expected = ref_product("linear", v, w_ref, None, "swat", 1 - SPARSITY, "nchw")
    actual = transformed(v)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    _loss(actual).backward()
    _loss(expected).backward()
    torch.testing.assert_close(transformed.weight.grad, w_ref.grad, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ other backends


class Classifier(nn.Module):
    """A body from this file and a linear head, for a cross-entropy loss."""

    def __init__(self, body: nn.Module, features: int, pool: bool) -> None:
        super().__init__()
        self.body, self.out, self.pool = body, nn.Linear(features, 4), pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.out(y.mean(1) if self.pool else y)


FORMS = ["batched", "packed", "cross_kv", "cross_qkv", "left"]


def _classifier(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    bodies = {"batched": (Batched(), 4, (3, 7, 8), True), "packed": (Packed(), 5, (6, 8), False),
              "cross_kv": (CrossAttention("kv", True), 3, (2, 5, 16), True),
              "cross_qkv": (CrossAttention("qkv", False), 3, (5, 2, 16), True),
              "left": (WeightLeft(), 6, (2, 4, 6), False)}
    body, features, shape, pool = bodies[name]
    return Classifier(body, features, pool), torch.randn(shape)


@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_ort_training_artifacts_of_batched_and_sliced_weights_match_eager(tracer: str, name: str,
                                                                          tmp_path) -> None:
    pytest.importorskip("onnxruntime.training")
    model, x = _classifier(name)
    transformed = swat_fx.transform(model, SPARSITY, tracer=tracer,
                                    example_inputs=(x,) if tracer == "export" else None)
    labels = torch.arange(x.shape[0]) % 4
    no_gradient = ort_step_matches_eager(transformed, x, labels, tmp_path / "ort", atol=1e-5, dynamic_batch=False)
    assert no_gradient == []


@pytest.mark.parametrize("name", FORMS)
def test_the_cost_model_counts_the_products_torch_counts(name: str) -> None:
    """Dense MACs of every product, forward and backward, equal torch's FLOP counter; a sliced weight
    is read, and its gradient written, for its slice only."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = _classifier(name)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.arange(x.shape[0]) % 4).backward()
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=(x,))
    ir = swat_fx.to_accel_ir(transformed, x)
    assert sum(2 * a["macs"] for _, a in ir.nodes(data=True)) == counter.get_total_flops()
    for layer in (info for info in swat_fx.layers(transformed) if ".rows_" in info.name or ".cols_" in info.name):
        forward = ir.nodes[f"{layer.name}/fwd"]
        weight = next(r for r in forward["reads"] if r["role"] == "W")
        assert math.prod(weight["shape"]) == math.prod(layer.weight_shape)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_addmm_with_a_transposed_weight_is_a_linear(tracer: str) -> None:
    class AddMM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.randn(3, 5)), nn.Parameter(torch.randn(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.addmm(self.bias, x, self.weight.t())

    x = torch.randn(4, 5)
    transformed = swat_fx.transform(AddMM(), SPARSITY, sparsify_first=True, tracer=tracer,
                                    example_inputs=(x,) if tracer == "export" else None)
    assert [(i.name, i.weight_shape, i.sparsified) for i in swat_fx.layers(transformed)] == [("weight", (3, 5), True)]
