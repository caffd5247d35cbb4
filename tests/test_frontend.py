"""The front-end: both tracers, weight products at every level, no silent density, checkpoint regions.

Transformers models are tiny random-initialised ones built from config objects (nothing is downloaded).
Gradients are compared with `reference_models.reference_model`, which computes every product with
`reference.py` (its own masks and formulas) on the original, untransformed model.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ort_checks import ort_step_matches_eager
from reference_models import count_weight_products, ref_product, reference_model
from torch.export import Dim
from torch.utils.checkpoint import checkpoint

import swat_fx
from swat_fx.memory import saved_tensor_bytes

SPARSITY = 0.7
HIDDEN = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def _ids(batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(1))


def _tiny(name: str) -> tuple[nn.Module, tuple, dict]:
    """A tiny random model of the named family (hidden 64, 2 layers), example args and kwargs; no dropout."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if name == "bert":
        return transformers.BertModel(transformers.BertConfig(vocab_size=100, **HIDDEN, **no_dropout)), (_ids(),), {}
    if name == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                                               dropout=0.0, attention_dropout=0.0)
        return transformers.DistilBertModel(config), (_ids(),), {}
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=2, n_positions=32,
                                         use_cache=False, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(config), (_ids(),), {}
    if name == "llama":
        config = transformers.LlamaConfig(vocab_size=100, num_key_value_heads=1, max_position_embeddings=32,
                                          use_cache=False, bos_token_id=1, eos_token_id=2, **HIDDEN)
        return transformers.LlamaForCausalLM(config), (_ids(),), {}
    if name == "t5":
        config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                                       use_cache=False, dropout_rate=0.0, decoder_start_token_id=0)
        return transformers.T5Model(config), (_ids(),), {"decoder_input_ids": _ids(2, 5)}
    if name == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, **HIDDEN, **no_dropout)
        return transformers.ViTModel(config), (torch.randn(2, 3, 32, 32),), {}
    if name == "whisper":
        config = transformers.WhisperConfig(
            vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
            max_source_positions=16, max_target_positions=16, use_cache=False, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        return transformers.WhisperModel(config), (torch.randn(2, 16, 32),), {"decoder_input_ids": _ids(2, 4)}
    raise ValueError(name)


def _main_output(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        if getattr(output, key, None) is not None:
            return getattr(output, key)
    return output[0]


def _loss(output: object) -> torch.Tensor:
    y = _main_output(output)
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient under each of its names (a tied weight has several)."""
    return {name: p.grad for name, p in model.named_parameters(remove_duplicate=False) if p.grad is not None}


def _check_against_reference(model: nn.Module, transformed: nn.Module, args: tuple, kwargs: dict,
                             dense: tuple[str, ...] = ()) -> None:
    reference = reference_model(model, "swat", 1 - SPARSITY, "nchw", dense=dense)
    _loss(transformed(*args, **kwargs)).backward()
    _loss(reference(*args, **kwargs)).backward()
    expected, actual = _grads(reference), _grads(transformed)
    assert expected.keys() == actual.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


TRANSFORMERS = ["bert", "distilbert", "gpt2", "llama", "t5", "vit", "whisper"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_tiny_transformers_sparsify_every_product_and_match_the_reference(name: str) -> None:
    model, args, kwargs = _tiny(name)
    model = model.double()
    args = tuple(a.double() if a.is_floating_point() else a for a in args)
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=args, example_kwargs=kwargs,
                                    sparsify_first=True)
    infos = swat_fx.layers(transformed)
    assert all(info.sparsified for info in infos), [i.name for i in infos if not i.sparsified]
    assert len(infos) == count_weight_products(model, args, kwargs)
    _check_against_reference(model, transformed, args, kwargs)
    # a training step with an optimizer; the parameters keep their names, a checkpoint loads strict
    optimizer = torch.optim.AdamW(transformed.parameters(), lr=1e-3)
    optimizer.step()
    assert ({n for n, _ in transformed.named_parameters(remove_duplicate=False)}
            == {n for n, _ in model.named_parameters(remove_duplicate=False)})
    transformed.load_state_dict(model.state_dict())
    model.load_state_dict(swat_fx.dense_state_dict(transformed.state_dict()))  # tied weights included


def test_layer_names_follow_the_modules_and_the_code_is_readable() -> None:
    model, args, _ = _tiny("bert")
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=args)
    names = [info.name for info in swat_fx.layers(transformed)]
    assert names[:3] == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
                         "encoder.layer.0.attention.self.value"]
    assert "encoder_layer_0_attention_self_key_w_s = " in transformed.code
    assert "swat.encoder.layer.0.attention.self.key.w_topk.threshold" in transformed.state_dict()


def test_gpt2_conv1d_is_a_transposed_linear_sparsified_over_its_stored_weight() -> None:
    model, args, _ = _tiny("gpt2")
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=args)
    attention = {info.name: info for info in swat_fx.layers(transformed)}["transformer.h.1.attn.c_attn"]
    assert attention.sparsified and attention.kind == "linear" and attention.weight_shape == (192, 64)


def test_dropout_and_eval_mode_follow_the_module_mode() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=100, **HIDDEN))  # dropout 0.1
    transformed = swat_fx.transform(model, algorithm="dense", example_inputs=(_ids(),))
    model.eval()
    transformed.eval()
    with torch.no_grad():
        assert torch.equal(transformed(_ids()).last_hidden_state, model(_ids()).last_hidden_state)
        transformed.train()
        first, second = (transformed(_ids()).last_hidden_state for _ in range(2))
    assert not torch.equal(first, second)


def test_batch_and_sequence_length_stay_dynamic_after_export() -> None:
    model, args, _ = _tiny("bert")
    dynamic = {"input_ids": {0: Dim.AUTO, 1: Dim.AUTO}}
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=args, dynamic_shapes=dynamic)
    for batch, length in ((3, 5), (1, 11)):
        out = transformed(_ids(batch, length)).last_hidden_state
        assert out.shape == (batch, length, 64)
        out.sum().backward()
    batch_only = swat_fx.transform(model, SPARSITY, example_inputs=args)
    assert batch_only(_ids(5, 8)).last_hidden_state.shape == (5, 8, 64)


# ------------------------------------------------------------------------------ attention, both tracers


class VitBlock(nn.Module):
    """torchvision's ViT encoder block: `nn.MultiheadAttention` and an MLP."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


@torch.fx.wrap
def fused_attention(x: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                    linear: Callable[..., torch.Tensor] = F.linear) -> torch.Tensor:
    """swin's pattern: an attention function that symbolic tracing calls whole (`torch.fx.wrap`)."""
    q, k, v = linear(x, qkv_weight).chunk(3, dim=-1)
    attention = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return linear(attention @ v, proj_weight)


class WrappedAttention(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Parameter(torch.randn(3 * dim, dim) / dim**0.5)
        self.proj = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(fused_attention(x, self.qkv, self.proj))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_multihead_self_attention_is_sparsified_by_both_tracers(tracer: str) -> None:
    torch.manual_seed(0)
    model = VitBlock().double()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    inputs = {"example_inputs": (x,)} if tracer == "export" else {}
    transformed = swat_fx.transform(model, SPARSITY, sparsify_first=True, **inputs)
    infos = swat_fx.layers(transformed)
    assert [i.name for i in infos] == ["self_attention.in_proj_weight", "self_attention.out_proj", "mlp.0", "mlp.2"]
    assert all(info.sparsified for info in infos)
    _check_against_reference(model, transformed, (x,), {})


class Attention(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool, average: bool, inputs: str = "self",
                 masked: bool = False) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.options = {"need_weights": need_weights, "average_attn_weights": average}
        self.inputs = inputs
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1) if masked else None)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`inputs`: "self" (query is key is value), "kv" (key is value), "qkv" (three tensors)."""
        key = x if self.inputs == "self" else x.flip(-1)
        value = key if self.inputs != "qkv" else x * 2
        y, weights = self.attention(x, key, value, attn_mask=self.mask, **self.options)
        return self.head(y), weights


@pytest.mark.parametrize("inputs", ["self", "kv", "qkv"])
@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_symbolic_tracing_enters_attention_exactly_as_torch_computes_it(batch_first: bool, need_weights: bool,
                                                                      average: bool, inputs: str) -> None:
    torch.manual_seed(0)
    model = Attention(batch_first, need_weights, average, inputs).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    transformed = swat_fx.transform(model, algorithm="dense")
    for actual, expected in zip(transformed(x), model(x), strict=True):
        assert (actual is None and expected is None) or torch.equal(actual, expected)


def test_masked_attention_is_reported_dense_by_symbolic_tracing() -> None:
    with pytest.warns(UserWarning, match=r"leaves 1 of the 2 weight products of Attention dense: 1 inside a leaf"):
        transformed = swat_fx.transform(Attention(True, False, True, masked=True), SPARSITY, sparsify_first=True)
    dense = [info for info in swat_fx.layers(transformed) if not info.sparsified]
    assert [(i.name, i.kind, i.dense_reason) for i in dense] == [
        ("attention", "MultiheadAttention", swat_fx.DenseReason.LEAF_MODULE)]
    assert "example_inputs" in dense[0].note


def test_a_wrapped_attention_function_is_reported_by_symbolic_tracing_and_sparsified_by_export() -> None:
    torch.manual_seed(0)
    model = WrappedAttention().double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"1 inside a function the tracer does not enter"):
        symbolic = swat_fx.transform(model, SPARSITY, sparsify_first=True)
    assert [(i.name, i.dense_reason) for i in swat_fx.layers(symbolic) if not i.sparsified] == [
        ("qkv", swat_fx.DenseReason.OPAQUE_FUNCTION)]

    exported = swat_fx.transform(model, SPARSITY, example_inputs=(x,), sparsify_first=True)
    assert [(i.name, i.sparsified) for i in swat_fx.layers(exported)] == [("qkv", True), ("proj", True),
                                                                         ("head", True)]
    reference = copy.deepcopy(model)

    def ref_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ref_product("linear", x, w, None, "swat", 1 - SPARSITY, "nchw")

    reference.forward = lambda x: ref_product("linear", fused_attention(x, reference.qkv, reference.proj,
                                                                        linear=ref_linear),
                                              reference.head.weight, reference.head.bias, "swat", 1 - SPARSITY,
                                              "nchw")
    _loss(exported(x)).backward()
    _loss(reference(x)).backward()
    for name, grad in _grads(reference).items():
        torch.testing.assert_close(_grads(exported)[name], grad, rtol=1e-9, atol=1e-9)


class Products(nn.Module):
    """A weight product in each form the graph can hold, and a parameter used at two call sites."""

    def __init__(self) -> None:
        super().__init__()
        self.stored_in_out = nn.Parameter(torch.randn(8, 6))
        self.bias = nn.Parameter(torch.randn(6))
        self.by_einsum = nn.Parameter(torch.randn(5, 6))
        self.by_matmul_t = nn.Parameter(torch.randn(6, 5))
        self.batched = nn.Parameter(torch.randn(3, 6, 6))
        self.picked = nn.Parameter(torch.randn(2, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias, x, self.stored_in_out)  # GPT-2's Conv1D
        y = torch.einsum("bi,oi->bo", y, self.by_einsum)
        y = y @ self.by_matmul_t.T
        y = torch.bmm(y.unsqueeze(0).expand(3, -1, -1), self.batched).sum(0)  # batched weight [3, in, out]
        y = y @ self.by_matmul_t  # the same parameter again, stored [in, out] this time
        return y @ self.picked[1]  # a weight selected by an index: reported


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_every_product_form_is_found_and_the_rest_is_reported(tracer: str) -> None:
    torch.manual_seed(0)
    model = Products().double()
    x = torch.randn(4, 8, dtype=torch.float64)
    inputs = {"example_inputs": (x,)} if tracer == "export" else {}
    with pytest.warns(UserWarning, match=r"leaves 1 of the 6 weight products of Products dense: 1 an op SWAT"):
        transformed = swat_fx.transform(model, SPARSITY, sparsify_first=True, **inputs)
    infos = swat_fx.layers(transformed)
    assert [(i.name, i.sparsified) for i in infos] == [
        ("stored_in_out", True), ("by_einsum", True), ("by_matmul_t", True), ("batched", True),
        ("by_matmul_t@1", True), ("picked", False)]
    assert infos[3].weight_shape == (3, 6, 6) and infos[3].kind == "linear"
    assert infos[5].dense_reason is swat_fx.DenseReason.UNSUPPORTED_OP and "index" in infos[5].note
    # the reference: the same products, each computed by reference.py
    density = 1 - SPARSITY

    def reference(x: torch.Tensor) -> torch.Tensor:
        y = ref_product("linear", x, model.stored_in_out.T, model.bias, "swat", density, "nchw")
        y = ref_product("linear", y, model.by_einsum, None, "swat", density, "nchw")
        y = ref_product("linear", y, model.by_matmul_t, None, "swat", density, "nchw")
        y = ref_product("bmm", y.unsqueeze(0).expand(3, -1, -1), model.batched.transpose(1, 2), None, "swat",
                        density, "nchw").sum(0)
        y = ref_product("linear", y, model.by_matmul_t.T, None, "swat", density, "nchw")
        return y @ model.picked[1]

    _loss(transformed(x)).backward()
    _loss(reference(x)).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(transformed.get_parameter(name).grad, param.grad, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------ checkpoint regions


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 128), nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Checkpointed(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.stem, self.head = nn.Linear(16, 32), nn.Linear(32, 4)
        self.blocks = nn.ModuleList([Block() for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x) if self.mode == "none" else checkpoint(block, x, use_reentrant=self.mode == "reentrant")
        return self.head(x)


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_checkpoint_regions_keep_their_memory_saving_and_exact_gradients(tracer: str, mode: str) -> None:
    torch.manual_seed(0)
    model, plain = Checkpointed(mode), Checkpointed("none")
    plain.load_state_dict(model.state_dict())
    x = torch.randn(64, 16)
    inputs = {"example_inputs": (x,)} if tracer == "export" else {}
    swat, swat_plain = (swat_fx.transform(m, SPARSITY, period=2, **inputs) for m in (model, plain))
    assert saved_tensor_bytes(swat, x) < saved_tensor_bytes(swat_plain, x) / 2
    assert saved_tensor_bytes(swat, x) <= saved_tensor_bytes(model, x) + 64  # + SWAT's scalar state
    swat, swat_plain = (swat_fx.transform(m, SPARSITY, period=2, **inputs) for m in (model, plain))
    for step in range(3):
        for m in (swat, swat_plain):
            m.zero_grad()
            _loss(m(x + step)).backward()
        for (name, a), (_, b) in zip(swat.named_parameters(), swat_plain.named_parameters(), strict=True):
            assert torch.equal(a.grad, b.grad), name
    assert torch.equal(swat.state_dict()["swat.blocks.1.up.x_topk.threshold"],
                       swat_plain.state_dict()["swat.blocks.1.up.x_topk.threshold"])


# ------------------------------------------------------------------------------ pickling, errors


def test_an_export_traced_model_pickles_and_loads_in_a_new_process(tmp_path: Path) -> None:
    model, args, _ = _tiny("gpt2")
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=args)
    _loss(transformed(*args)).backward()
    for clone in (pickle.loads(pickle.dumps(transformed)), copy.deepcopy(transformed)):
        torch.testing.assert_close(_main_output(clone(*args)), _main_output(transformed(*args)))
    torch.save(transformed, tmp_path / "model.pt")
    torch.save(_main_output(transformed.eval()(*args)), tmp_path / "expected.pt")
    torch.save(args, tmp_path / "args.pt")
    script = (
        "import sys, torch\n"
        f"model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False).eval()\n"
        f"args = torch.load({str(tmp_path / 'args.pt')!r})\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "assert torch.equal(model(*args).logits, expected)\n"
        "model.train()(*args).logits.sum().backward()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_a_none_default_argument_is_fixed_to_none_by_symbolic_tracing() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.fc(x) if mask is None else self.fc(x * mask)

    transformed = swat_fx.transform(Masked(), SPARSITY, sparsify_first=True)
    assert transformed(torch.randn(2, 4)).shape == (2, 4)
    with pytest.raises(AssertionError, match="mask has been specialized to have value None"):
        transformed(torch.randn(2, 4), torch.ones(2, 4))
    exported = swat_fx.transform(Masked(), SPARSITY, example_inputs=(torch.randn(2, 4), torch.ones(2, 4)))
    assert exported(torch.randn(2, 4), torch.ones(2, 4)).shape == (2, 4)


def test_symbolic_tracing_failures_name_the_frame_and_the_cause_and_point_to_export() -> None:
    class ShapeAsValue(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.fc(x[i]) for i in range(x.size(0))])

    gpt2 = _tiny("gpt2")[0]  # transformers wraps its forwards in (*args, **kwargs) decorators
    with pytest.raises(swat_fx.SwatTraceError, match=r"(?s)GPT2LMHeadModel.forward\(input_ids.*\*args/\*\*kwargs.*"
                                                     r"example_inputs"):
        swat_fx.transform(gpt2, SPARSITY)
    with pytest.raises(swat_fx.SwatTraceError, match=r"(?s)range\(x.size\(0\)\).*shape, dtype or length"):
        swat_fx.transform(ShapeAsValue(), SPARSITY)
    assert swat_fx.layers(swat_fx.transform(ShapeAsValue(), SPARSITY, example_inputs=(torch.randn(4, 4),),
                                            sparsify_first=True))[0].sparsified


def test_bad_export_inputs_are_clear_errors() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(swat_fx.SwatTraceError, match=r"(?s)torch.export could not trace DataDependent.*x.sum\(\) > 0"):
        swat_fx.transform(DataDependent(), SPARSITY, example_inputs=(torch.randn(2, 4),))
    with pytest.raises(swat_fx.SwatTraceError, match=r"(?s)on the example inputs.*model\(\*example_inputs"):
        swat_fx.transform(nn.Linear(4, 4), SPARSITY, example_inputs=(torch.randn(2, 5),))
    with pytest.raises(ValueError, match=r"tracer='export' runs the model on example inputs"):
        swat_fx.transform(nn.Linear(4, 4), SPARSITY, tracer="export")
    with pytest.raises(ValueError, match=r"symbolic tracing \(tracer='fx'\) takes no inputs"):
        swat_fx.transform(nn.Linear(4, 4), SPARSITY, tracer="fx", example_inputs=(torch.randn(2, 4),))
    with pytest.raises(ValueError, match=r"tracer must be one of 'fx', 'export', got 'jit'"):
        swat_fx.transform(nn.Linear(4, 4), SPARSITY, tracer="jit")


# ------------------------------------------------------------------------------ every backend


class BertClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bert = _tiny("bert")[0]
        self.head = nn.Linear(64, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bert(ids).last_hidden_state[:, 0])


@pytest.mark.slow
def test_every_backend_takes_an_export_traced_transformer(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime.training")
    torch.manual_seed(0)
    ids, labels = _ids(4, 8), torch.tensor([0, 3, 1, 4])
    transformed = swat_fx.transform(BertClassifier(), SPARSITY, example_inputs=(ids,), sparsify_first=True)
    no_gradient = ort_step_matches_eager(transformed, ids, labels, tmp_path / "ort", atol=2e-6)
    assert no_gradient and all(name.startswith("bert.pooler.") for name in no_gradient)  # its output is unused
    assert swat_fx.export_onnx(transformed, [ids], tmp_path / "model.onnx").exists()
    report = swat_fx.estimate_cost(transformed, ids)
    assert "bert.encoder.layer.1.attention.self.query" in str(report)
    with swat_fx.monitor(transformed) as records:
        F.cross_entropy(transformed(ids), labels).backward()
    assert {r.layer for r in records.records} >= {info.name for info in swat_fx.layers(transformed)}


# ------------------------------------------------------------------------------ sites and granularities


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _check_sites(sites: frozenset[str] | str, granularity: str) -> None:
    torch.manual_seed(0)
    model = ConvLinear().double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    options = {"algorithm": sites} if isinstance(sites, str) else {"sites": sites}
    transformed = swat_fx.transform(model, SPARSITY, example_inputs=(x,), sparsify_first=True,
                                    granularity=granularity, **options)
    reference = reference_model(model, sites, 1 - SPARSITY, granularity)
    _loss(transformed(x)).backward()
    _loss(reference(x)).backward()
    for name, grad in _grads(reference).items():
        torch.testing.assert_close(_grads(transformed)[name], grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("granularity", ["nchw", "chw", "hw", "kernel", "filter"])
@pytest.mark.parametrize("algorithm", ["swat", "saw", "meprop", "dense"])
def test_export_traced_models_match_the_reference_for_every_algorithm_and_granularity(
        algorithm: str, granularity: str) -> None:
    _check_sites(algorithm, granularity)


@pytest.mark.slow
@pytest.mark.parametrize("sites", [frozenset(c) for n in range(1, 6)
                                   for c in itertools.combinations(("fw_w", "fw_a", "bw_w", "bw_a", "bw_g"), n)])
def test_export_traced_models_match_the_reference_for_every_site_combination(sites: frozenset[str]) -> None:
    _check_sites(sites, "nchw")


# ------------------------------------------------------------------------------ edge cases of both tracers


class Modes(nn.Module):
    """A forward where `self.training` decides more than dropout, and a dropout forced on (MC dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y = y * 2 if self.training else y
        return F.dropout(y, 0.5, training=True)


def test_eval_mode_follows_the_model_and_what_it_cannot_follow_is_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"depends on self.training beyond dropout and batch norm \(aten.mul"):
        transformed = swat_fx.transform(Modes(), algorithm="dense", example_inputs=(torch.randn(4, 8),))
    transformed.eval()
    x = torch.randn(4, 8)
    assert not torch.equal(transformed(x), transformed(x))  # the forced dropout stays on in eval mode


def test_a_size_the_export_fixed_is_checked_at_each_call() -> None:
    class Flatten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(x.shape[0], -1, 8)).mean(1)

    transformed = swat_fx.transform(Flatten(), SPARSITY, example_inputs=(torch.randn(1, 2, 8),))  # batch 1: fixed
    assert transformed(torch.randn(1, 2, 8)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"input 'x' has size 4 in dim 0, but the model was exported with that "
                                         r"dim fixed to 1"):
        transformed(torch.randn(4, 2, 8))
    assert swat_fx.transform(Flatten(), SPARSITY, example_inputs=[torch.randn(2, 2, 8)])(torch.randn(4, 2, 8)).shape \
        == (4, 3)  # a list of example inputs is the positional arguments


class Unused(nn.Module):
    """A module that is never called and a non-persistent buffer: neither is read by any op."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.never = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4), persistent=False)
        self.register_buffer("counter", torch.zeros(()))

    def forward(self, x: torch.Tensor, **options: torch.Tensor) -> torch.Tensor:
        return self.used(x) * options.get("factor", 1.0)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_state_dict_keys_are_the_original_ones_also_after_deepcopy(tracer: str) -> None:
    model = Unused()
    inputs = {"example_inputs": (torch.randn(2, 4),), "example_kwargs": {"factor": torch.tensor(2.0)}} \
        if tracer == "export" else {}
    transformed = swat_fx.transform(model, SPARSITY, sparsify_first=True, **inputs)
    for clone in (transformed, copy.deepcopy(transformed), pickle.loads(pickle.dumps(transformed))):
        assert set(swat_fx.dense_state_dict(clone.state_dict())) == set(model.state_dict())
        clone.load_state_dict(model.state_dict())
        model.load_state_dict(swat_fx.dense_state_dict(clone.state_dict()))
    if tracer == "export":  # a **kwargs forward given example_kwargs exports, with static sizes
        assert transformed(torch.randn(2, 4), factor=torch.tensor(3.0)).shape == (2, 4)


class TwiceInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = Block(), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpoint(lambda y: self.block(torch.relu(self.block(y))), x, use_reentrant=False)
        return self.head(x)


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("kernel", ["masked", "compressed"])
def test_a_checkpoint_region_calling_a_module_twice_with_compressed_activations(tracer: str, kernel: str) -> None:
    torch.manual_seed(0)
    model = TwiceInside()
    x = torch.randn(8, 32)
    inputs = {"example_inputs": (x,)} if tracer == "export" else {}
    transformed = swat_fx.transform(model, SPARSITY, kernel=kernel, **inputs)
    assert [i.name for i in swat_fx.layers(transformed)] == ["block.up", "block.down", "block.up@1", "block.down@1",
                                                             "head"]
    _loss(transformed(x)).backward()
    assert all(p.grad is not None for p in transformed.parameters())
    clone = pickle.loads(pickle.dumps(transformed))
    torch.testing.assert_close(clone(x), transformed(x))


def test_a_model_with_checkpoint_regions_pickles_after_onnxruntime_training_is_imported() -> None:
    pytest.importorskip("onnxruntime.training")
    import onnxruntime.training  # noqa: F401  (it replaces torch.utils.checkpoint.checkpoint)

    transformed = swat_fx.transform(Checkpointed("non-reentrant"), SPARSITY)
    x = torch.randn(4, 16)
    torch.testing.assert_close(pickle.loads(pickle.dumps(transformed)).eval()(x), transformed.eval()(x))


class Odd(nn.Module):
    """Products that look like layers and are not, and layers in less common forms."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(6, 2)), nn.Parameter(torch.randn(2, 6))  # low-rank weight
        self.square = nn.Parameter(torch.randn(6, 6))
        self.w = nn.Parameter(torch.randn(6, 6))
        self.rnn = nn.GRU(6, 6, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.a @ self.b)  # the weight is computed: reported, and A @ B is no layer
        y = y + torch.einsum("ii,oi->io", self.square, self.square).sum(0)  # two parameters: no layer
        y = y @ self.w.mT  # a linear layer
        return self.rnn(y.unsqueeze(1))[0].squeeze(1)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_computed_weights_recurrent_layers_and_parameter_only_products(tracer: str) -> None:
    x = torch.randn(3, 6)
    inputs = {"example_inputs": (x,)} if tracer == "export" else {}
    with pytest.warns(UserWarning, match=r"leaves 2 of the 3 weight products of Odd dense"):
        transformed = swat_fx.transform(Odd(), SPARSITY, sparsify_first=True, **inputs)
    infos = swat_fx.layers(transformed)
    assert [(i.name, i.sparsified) for i in infos] == [
        ("a", False), ("w", True), ("rnn" if tracer == "fx" else "rnn.weight_ih_l0", False)]
    assert "computed from parameters" in infos[0].note
    assert infos[2].dense_reason is swat_fx.DenseReason.UNSUPPORTED_OP
    torch.testing.assert_close(transformed.eval()(x).shape, Odd()(x).shape)
