"""Tests of the whole-model SWAT reference in ``tests/reference_models.py``.

At sites "dense" the reference must reproduce the original model exactly (outputs and gradients),
which checks the plain re-implementations (MHA, GPT-2 Conv1D, conv arguments). At "swat" it must
differ from dense, and a layer checked by hand against ``ref_layer`` must give the same dW.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import GRANULARITIES, ref_layer, ref_mask
from reference_models import count_weight_products, ref_product, reference_model
from torch import Tensor, nn

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")

DTYPE = torch.float64


def _rand(*shape: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(ref: nn.Module, model: nn.Module) -> None:
    """Every parameter with a gradient in ``model`` has the same one in ``ref`` (and vice versa)."""
    got, want = _grads(ref), _grads(model)
    assert got.keys() == want.keys()
    assert want, "no gradient at all"
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def _max_grad_diff(a: nn.Module, b: nn.Module) -> float:
    ga, gb = _grads(a), _grads(b)
    return max((ga[n] - gb[n]).abs().max().item() for n in ga)


def _capture_io(module: nn.Module) -> dict[str, Tensor]:
    """Hooks storing a product module's input x and upstream gradient g (dL/dy)."""
    seen: dict[str, Tensor] = {}

    def hook(mod: nn.Module, inputs: tuple, output: Tensor) -> None:
        seen["x"] = inputs[0].detach().clone()
        output.register_hook(lambda g: seen.__setitem__("g", g.detach().clone()))

    module.register_forward_hook(hook)
    return seen


# --------------------------------------------------------------------------
# ref_product
# --------------------------------------------------------------------------

PRODUCT_CASES = [
    ("linear", (2, 3, 5), (4, 5), True, {}),
    ("linear", (5,), (4, 5), False, {}),
    ("conv1d", (2, 4, 9), (6, 2, 3), True, {"stride": 2, "padding": 1, "groups": 2}),
    ("conv1d", (4, 9), (6, 4, 3), False, {"padding": "same"}),
    ("conv2d", (2, 4, 7, 7), (6, 2, 3, 3), True, {"stride": 1, "padding": 2, "dilation": 2, "groups": 2}),
    ("conv2d", (2, 3, 6, 6), (4, 3, 2, 2), True, {"padding": "same"}),
    ("conv3d", (1, 2, 4, 5, 5), (3, 2, 3, 3, 3), True, {"stride": (1, 2, 2), "padding": (1, 0, 1)}),
]


@pytest.mark.parametrize(("kind", "x_shape", "w_shape", "bias", "kw"), PRODUCT_CASES)
def test_ref_product_dense_equals_autograd(kind, x_shape, w_shape, bias, kw):
    """At "dense" the product is the plain op: same y and the same gradients as autograd."""
    op = {"linear": F.linear, "conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[kind]
    x, w = _rand(*x_shape, seed=1), _rand(*w_shape, seed=2)
    b = _rand(w_shape[0], seed=3) if bias else None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]

    y_ref = ref_product(kind, x, w, b, "dense", 1.0, "nchw", **kw)
    grads_ref = torch.autograd.grad(y_ref, leaves, _rand(*y_ref.shape, seed=4))
    y = op(x, w, b, **kw)
    grads = torch.autograd.grad(y, leaves, _rand(*y.shape, seed=4))
    torch.testing.assert_close(y_ref, y)
    for got, want in zip(grads_ref, grads, strict=True):
        torch.testing.assert_close(got, want)


def _batched(case: tuple) -> bool:
    kind, x_shape, w_shape = case[:3]
    return len(x_shape) > 1 if kind == "linear" else len(x_shape) == len(w_shape)


@pytest.mark.parametrize(("kind", "x_shape", "w_shape", "bias", "kw"), [c for c in PRODUCT_CASES if _batched(c)])
def test_ref_product_swat_returns_ref_layer(kind, x_shape, w_shape, bias, kw):
    """Forward and backward of the product are exactly ref_layer's y, dx, dw, db."""
    x, w = _rand(*x_shape, seed=1), _rand(*w_shape, seed=2)
    b = _rand(w_shape[0], seed=3) if bias else None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    y = ref_product(kind, x, w, b, "swat", 0.5, "chw", **kw)
    g = _rand(*y.shape, seed=4)
    grads = torch.autograd.grad(y, leaves, g)
    want = ref_layer(kind, x.detach(), w.detach(), None if b is None else b.detach(), g, "swat", 0.5, "chw", **kw)
    torch.testing.assert_close(y, want["y"])
    expected = [want["dx"], want["dw"]] + ([want["db"]] if bias else [])
    for got, exp in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, exp)


# --------------------------------------------------------------------------
# nn.MultiheadAttention
# --------------------------------------------------------------------------

MASKS = ["none", "bool", "float", "3d", "padding", "causal", "causal+padding"]


def _mha_inputs(mode: str, batch_first: bool, e: int) -> tuple[Tensor, Tensor, Tensor]:
    """query, key, value: one tensor ("self"), key is value ("kv"), or three tensors ("cross")."""
    n, tgt, src = 2, 4, (4 if mode == "self" else 5)

    def make(length: int, seed: int) -> Tensor:
        shape = (n, length, e) if batch_first else (length, n, e)
        return _rand(*shape, seed=seed).requires_grad_()

    query = make(tgt, 10)
    if mode == "self":
        return query, query, query
    key = make(src, 11)
    return (query, key, key) if mode == "kv" else (query, key, make(src, 12))


def _mha_masks(case: str, tgt: int, src: int, n: int, heads: int) -> dict:
    """Keyword arguments of an MHA call for one mask case (no row is fully masked)."""
    causal = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    padding = torch.zeros(n, src, dtype=torch.bool)
    padding[1, -1] = True
    if case == "none":
        return {}
    if case == "bool":
        return {"attn_mask": causal}
    if case == "float":
        return {"attn_mask": _rand(tgt, src, seed=20)}
    if case == "3d":
        return {"attn_mask": _rand(n * heads, tgt, src, seed=21)}
    if case == "padding":
        return {"key_padding_mask": padding}
    if case == "causal":
        return {"attn_mask": causal, "is_causal": True}
    return {"attn_mask": causal, "is_causal": True, "key_padding_mask": padding}


def _run_mha(mha: nn.MultiheadAttention, inputs: tuple[Tensor, Tensor, Tensor], **kwargs) -> tuple:
    """Output, weights and gradients (inputs then parameters) for a fixed random upstream gradient."""
    out, weights = mha(*inputs, **kwargs)
    leaves = list(dict.fromkeys(inputs)) + list(mha.parameters())
    loss = (out * _rand(*out.shape, seed=30)).sum()
    if weights is not None:
        loss = loss + (weights * _rand(*weights.shape, seed=31)).sum()
    return out, weights, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", ["self", "kv", "cross"])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", MASKS)
def test_mha_dense_equals_torch(batch_first, mode, need_weights, masks):
    """Plain MHA of the reference == torch's MHA at "dense": outputs, weights, all gradients."""
    torch.manual_seed(0)
    e, heads = 8, 2
    mha = nn.MultiheadAttention(e, heads, batch_first=batch_first, dtype=DTYPE)
    ref = reference_model(mha, "dense", 1.0, "nchw")
    inputs = _mha_inputs(mode, batch_first, e)
    tgt, src = inputs[0].shape[1 if batch_first else 0], inputs[1].shape[1 if batch_first else 0]
    kwargs = {"need_weights": need_weights, **_mha_masks(masks, tgt, src, 2, heads)}
    for average in [True, False] if need_weights else [True]:
        got = _run_mha(ref, inputs, average_attn_weights=average, **kwargs)
        want = _run_mha(mha, inputs, average_attn_weights=average, **kwargs)
        torch.testing.assert_close(got[0], want[0])
        assert (got[1] is None) == (want[1] is None)
        if want[1] is not None:
            torch.testing.assert_close(got[1], want[1])
        for g_ref, g_torch in zip(got[2], want[2], strict=True):
            torch.testing.assert_close(g_ref, g_torch)


@pytest.mark.parametrize("mode", ["self", "cross"])
def test_mha_dense_unbatched_and_no_bias(mode):
    """Unbatched inputs [L, E] and bias=False also match torch."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, bias=False, batch_first=True, dtype=DTYPE)
    ref = reference_model(mha, "dense", 1.0, "nchw")
    q = _rand(4, 8, seed=1).requires_grad_()
    kv = _rand(3, 8, seed=2).requires_grad_()
    inputs = (q, q, q) if mode == "self" else (q, kv, _rand(3, 8, seed=3).requires_grad_())
    padding = torch.tensor([False, False, True] + [False] * (len(inputs[1]) - 3))
    for kwargs in ({}, {"key_padding_mask": padding}):
        got, want = _run_mha(ref, inputs, **kwargs), _run_mha(mha, inputs, **kwargs)
        for a, b in zip(got[:2] + tuple(got[2]), want[:2] + tuple(want[2]), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["self", "kv", "cross"])
def test_mha_in_projection_split_follows_torch(mode):
    """The Top-K groups of in_proj_weight follow torch's split of the in-projection.

    Self-attention: ONE product over the whole [3E, E] weight (one mask over it); key is value:
    q slice + packed kv slice; three distinct tensors: three slices masked on their own. With
    sites {"fw_w"} only the forward weights change, so torch's MHA with the masked weights
    swapped in must give the reference's output.
    """
    torch.manual_seed(0)
    e, density, gran = 8, 0.5, "nchw"
    mha = nn.MultiheadAttention(e, 2, batch_first=True, dtype=DTYPE)
    with torch.no_grad():  # slices of different scales, so that each split gives a different mask
        mha.in_proj_weight[:e] *= 3.0
        mha.in_proj_weight[2 * e :] *= 0.5
    ref = reference_model(mha, {"fw_w"}, density, gran)
    inputs = _mha_inputs(mode, True, e)
    got, _ = ref(*inputs, need_weights=False)

    w = mha.in_proj_weight.detach()
    splits = {"self": [(0, 3)], "kv": [(0, 1), (1, 3)], "cross": [(0, 1), (1, 2), (2, 3)]}
    masks = {
        m: torch.cat([ref_mask(w[lo * e : hi * e], density, gran, "weight", "linear") for lo, hi in split])
        for m, split in splits.items()
    }
    assert not any(torch.equal(masks[mode], masks[other]) for other in masks if other != mode)
    keep = masks[mode]

    masked = copy.deepcopy(mha)
    with torch.no_grad():
        masked.in_proj_weight.mul_(keep)
        ow = masked.out_proj.weight
        ow.mul_(ref_mask(ow, density, gran, "weight", "linear"))
    want, _ = masked(*inputs, need_weights=False)
    torch.testing.assert_close(got, want)


def test_mha_unsupported_options_raise():
    x = _rand(2, 3, 8)
    for kwargs in ({"add_bias_kv": True}, {"add_zero_attn": True}, {"kdim": 4, "vdim": 4}):
        mha = nn.MultiheadAttention(8, 2, batch_first=True, dtype=DTYPE, **kwargs)
        k = _rand(2, 3, 4) if "kdim" in kwargs else x
        with pytest.raises(NotImplementedError):
            reference_model(mha, "swat", 0.5, "nchw")(x, k, k)
    mha = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True, dtype=DTYPE)
    with pytest.raises(NotImplementedError):
        reference_model(mha, "swat", 0.5, "nchw")(x, x, x)
    reference_model(mha, "swat", 0.5, "nchw").eval()(x, x, x)  # dropout is off in eval: fine


# --------------------------------------------------------------------------
# Small models: ViT block, tiny ViT, CNN
# --------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """torchvision's ViT encoder block: pre-norm self-attention + MLP, both residual."""

    def __init__(self, heads: int, hidden: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, hidden), nn.Dropout(0.0)
        )

    def forward(self, inputs: Tensor) -> Tensor:
        x = self.ln_1(inputs)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inputs
        return x + self.mlp(self.ln_2(x))


class TinyViT(nn.Module):
    """Patchify conv + class token + position embedding + one encoder block + head."""

    def __init__(self, hidden: int = 16, patch: int = 4, image: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, hidden, patch, stride=patch)
        seq = (image // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embedding = nn.Parameter(torch.randn(1, seq, hidden) * 0.02)
        self.block = EncoderBlock(2, hidden, 2 * hidden)
        self.ln = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv_proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.block(x))[:, 0])


class Scale(nn.Module):
    """An unknown module with a 2-D parameter and no weight product: must be left as is."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1) * 1.5)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight[None, :, :, None]


def _cnn() -> nn.Sequential:
    """Convs with stride, "same" padding (even kernel), dilation, groups; BN, an unknown module, Conv1d, Linear."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 2, padding="same", groups=2),
        Scale(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, dilation=2, padding=2, bias=False),
        nn.Flatten(2),
        nn.Conv1d(8, 6, 3),
        nn.Flatten(1),
        nn.Linear(6 * 14, 5),
    )


def _small_models() -> dict[str, tuple[nn.Module, Tensor]]:
    torch.manual_seed(0)
    return {
        "vit_block": (EncoderBlock(2, 16, 32).to(DTYPE), _rand(2, 5, 16, seed=1)),
        "tiny_vit": (TinyViT().to(DTYPE), _rand(2, 3, 8, 8, seed=1)),
        "cnn": (_cnn().to(DTYPE), _rand(2, 3, 8, 8, seed=1)),
    }


def _forward_backward(model: nn.Module, x: Tensor) -> Tensor:
    model.zero_grad()
    out = model(x)
    (out * _rand(*out.shape, seed=99)).sum().backward()
    return out.detach()


@pytest.mark.parametrize("name", ["vit_block", "tiny_vit", "cnn"])
def test_small_models_dense_equal_original(name):
    model, x = _small_models()[name]
    ref = reference_model(model, "dense", 1.0, "nchw")
    torch.testing.assert_close(_forward_backward(ref, x), _forward_backward(model, x))
    _assert_same_grads(ref, model)


@pytest.mark.parametrize("name", ["vit_block", "tiny_vit", "cnn"])
def test_small_models_swat_differs_from_dense(name):
    model, x = _small_models()[name]
    ref = reference_model(model, "swat", 0.7, "chw")
    out_ref, out = _forward_backward(ref, x), _forward_backward(model, x)
    assert (out_ref - out).abs().max() > 1e-6
    assert _max_grad_diff(ref, model) > 1e-6


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_vit_block_linear_by_hand(granularity):
    """dW / db of one nn.Linear inside the model == ref_layer on the x and g seen by hooks."""
    model, x = _small_models()["vit_block"]
    ref = reference_model(model, "swat", 0.7, granularity)
    fc1 = ref.mlp[0]
    seen = _capture_io(fc1)
    _forward_backward(ref, x)
    want = ref_layer("linear", seen["x"], fc1.weight.detach(), fc1.bias.detach(), seen["g"], "swat", 0.7, granularity)
    torch.testing.assert_close(fc1.weight.grad, want["dw"])
    torch.testing.assert_close(fc1.bias.grad, want["db"])


def test_cnn_conv_by_hand():
    """Same check on a conv with "same" padding (even kernel) and groups."""
    model, x = _small_models()["cnn"]
    ref = reference_model(model, "swat", 0.7, "kernel")
    conv = ref[3]
    seen = _capture_io(conv)
    _forward_backward(ref, x)
    want = ref_layer(
        "conv2d", seen["x"], conv.weight.detach(), conv.bias.detach(), seen["g"], "swat", 0.7, "kernel",
        padding="same", groups=2,
    )
    torch.testing.assert_close(conv.weight.grad, want["dw"])
    torch.testing.assert_close(conv.bias.grad, want["db"])


def test_which_modules_are_patched():
    """Products patched; embeddings, norms, unknown modules and `dense` names left as is; original untouched."""
    model, _ = _small_models()["tiny_vit"]
    ref = reference_model(model, "swat", 0.5, "nchw", dense=["conv_proj", "block.mlp"])
    patched = {name for name, m in ref.named_modules() if "forward" in vars(m)}
    assert patched == {"block.self_attention", "block.self_attention.out_proj", "head"}
    assert not any("forward" in vars(m) for m in model.modules())

    cnn = reference_model(_small_models()["cnn"][0], "swat", 0.5, "nchw")
    assert {n for n, m in cnn.named_modules() if "forward" in vars(m)} == {"0", "3", "6", "8", "10"}

    emb = reference_model(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), "swat", 0.5, "nchw")
    assert not any("forward" in vars(m) for m in emb.modules())

    with pytest.raises(ValueError, match="no module"):
        reference_model(model, "swat", 0.5, "nchw", dense=["nope"])
    with pytest.raises(NotImplementedError):
        reference_model(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), "swat", 0.5, "nchw")


def test_dense_names_keep_plain_products():
    """A conv named in `dense` gets the plain dW = G^T X (from its own upstream G), not the SWAT one."""
    model, x = _small_models()["cnn"]
    ref = reference_model(model, "swat", 0.5, "nchw", dense=["0"])
    assert "forward" not in vars(ref[0])
    seen = _capture_io(ref[0])
    _forward_backward(ref, x)
    w, b = ref[0].weight.detach(), ref[0].bias.detach()
    dense = ref_layer("conv2d", seen["x"], w, b, seen["g"], "dense", 1.0, "nchw", padding=1)
    sparse = ref_layer("conv2d", seen["x"], w, b, seen["g"], "swat", 0.5, "nchw", padding=1)
    torch.testing.assert_close(ref[0].weight.grad, dense["dw"])
    assert not torch.allclose(ref[0].weight.grad, sparse["dw"])


def test_reference_model_deepcopies_and_copies_again():
    """The patched forwards are bound methods: a deep copy of the reference is bound to the copy."""
    model, x = _small_models()["vit_block"]
    ref = reference_model(model, "swat", 0.5, "hw")
    again = copy.deepcopy(ref)
    assert again.mlp[0].forward.__self__ is again.mlp[0]
    torch.testing.assert_close(again(x), ref(x))


def test_count_weight_products_small_models():
    """vit block: in_proj (one packed linear) + out_proj + 2 MLP; tiny ViT adds conv_proj and head; CNN: 4 convs + 1."""
    models = _small_models()
    counts = {name: count_weight_products(m, (x,)) for name, (m, x) in models.items()}
    assert counts == {"vit_block": 4, "tiny_vit": 6, "cnn": 5}


def test_gpt2_conv1d_module():
    """transformers' Conv1D: dense == original; at swat dW == ref_layer's dW on w = W.T, transposed back."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(6, 4).to(DTYPE)
    x = _rand(2, 3, 4, seed=1)
    for sites, density in (("dense", 1.0), ("swat", 0.5)):
        ref = reference_model(conv, sites, density, "chw")
        seen = _capture_io(ref)
        out_ref, out = _forward_backward(ref, x), _forward_backward(conv, x)
        if sites == "dense":
            torch.testing.assert_close(out_ref, out)
            _assert_same_grads(ref, conv)
            continue
        w = ref.weight.detach().t()
        want = ref_layer("linear", seen["x"].reshape(-1, 4), w, ref.bias.detach(), seen["g"].reshape(-1, 6),
                         sites, density, "chw")
        torch.testing.assert_close(out_ref, want["y"].view(2, 3, 6))
        torch.testing.assert_close(ref.weight.grad, want["dw"].t())
        torch.testing.assert_close(ref.bias.grad, want["db"])


# --------------------------------------------------------------------------
# Whole transformers models
# --------------------------------------------------------------------------


def _bert(pooler: bool = True):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=pooler).to(DTYPE)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, -2:] = 0
    return model, {"input_ids": ids, "attention_mask": attention_mask}


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=64, n_layer=2, n_head=2, n_positions=32, use_cache=False,
        bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).to(DTYPE)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids}


def _hf_loss(model: nn.Module, inputs: dict) -> Tensor:
    """Forward + backward of a fixed random projection of the main output; returns that output."""
    model.zero_grad()
    out = model(**inputs)
    main = out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    loss = (main * _rand(*main.shape, seed=99)).sum()
    if getattr(out, "pooler_output", None) is not None:
        loss = loss + (out.pooler_output * _rand(*out.pooler_output.shape, seed=98)).sum()
    loss.backward()
    return main.detach()


@pytest.mark.slow
@pytest.mark.parametrize("make", [_bert, _gpt2], ids=["bert", "gpt2"])
def test_transformers_dense_equal_original(make):
    model, inputs = make()
    model.train()
    ref = reference_model(model, "dense", 1.0, "nchw")
    torch.testing.assert_close(_hf_loss(ref, inputs), _hf_loss(model, inputs))
    _assert_same_grads(ref, model)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_bert, _gpt2], ids=["bert", "gpt2"])
def test_transformers_swat_differs_and_one_layer_by_hand(make):
    model, inputs = make()
    model.train()
    ref = reference_model(model, "swat", 0.7, "chw")
    if make is _bert:
        layer = ref.encoder.layer[0].intermediate.dense  # nn.Linear, x [N, L, E]
        seen = _capture_io(layer)
        w_ref = layer.weight.detach()
    else:
        layer = ref.transformer.h[0].mlp.c_fc  # Conv1D: W [in, out], x flattened to 2-D
        seen = _capture_io(layer)
        w_ref = layer.weight.detach().t()
    out_ref, out = _hf_loss(ref, inputs), _hf_loss(model, inputs)
    assert (out_ref - out).abs().max() > 1e-6
    assert _max_grad_diff(ref, model) > 1e-6

    x, g = seen["x"], seen["g"]
    if make is _gpt2:
        x, g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    want = ref_layer("linear", x, w_ref, layer.bias.detach(), g, "swat", 0.7, "chw")
    dw = layer.weight.grad if make is _bert else layer.weight.grad.t()
    torch.testing.assert_close(dw, want["dw"])
    torch.testing.assert_close(layer.bias.grad, want["db"])


@pytest.mark.slow
def test_count_weight_products_transformers():
    """Tiny 2-layer BERT / GPT-2, counted on their exported graphs.

    BertModel: per layer query, key, value, attention output dense, intermediate dense, output dense
    = 6 nn.Linear -> 12; the pooler's dense (on the [CLS] token) adds one -> 13. The attention
    matmuls (Q K^T, P V) read activations, not parameters, and the embeddings are lookups.
    GPT2LMHeadModel: per block c_attn, attn c_proj, c_fc, mlp c_proj = 4 Conv1D -> 4 aten.addmm
    -> 8, plus lm_head (a linear on the tied word-embedding weight) -> 9.
    """
    counts = {}
    for name, (model, inputs) in {
        "bert": _bert(pooler=False), "bert+pooler": _bert(pooler=True), "gpt2": _gpt2(),
    }.items():
        counts[name] = count_weight_products(model, (), inputs)
    print(counts)
    assert counts == {"bert": 12, "bert+pooler": 13, "gpt2": 9}
