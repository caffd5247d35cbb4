"""Whole-model reference of SWAT, built only on the per-layer reference in ``reference.py``.

``reference_model`` deep-copies a model and replaces the ``forward`` of every module that holds a
weight product (``nn.Linear``, ``nn.Conv1d/2d/3d``, transformers' GPT-2 ``Conv1D``,
``nn.MultiheadAttention``) by a plain re-implementation whose products go through ``RefProduct``:
forward output and gradients come from ``ref_layer``, never from autograd of the real op. The
result can be compared against a model transformed by the library, end to end.

``count_weight_products`` counts, independently of any library pass, how many weight products an
exported graph holds, so a test can check that a transform found all of them.

Nothing from ``swat_fx`` is imported here, on purpose: this is the yardstick the library is measured by.
"""

from __future__ import annotations

import copy
import math
import operator
import types
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from reference import _resolve_sites, ref_layer
from torch import Tensor, nn

__all__ = ["RefProduct", "count_weight_products", "ref_product", "reference_model"]


# --------------------------------------------------------------------------
# One weight product
# --------------------------------------------------------------------------


def _output_shape(kind: str, x: Tensor, w: Tensor, conv_kwargs: dict) -> torch.Size:
    """Shape of the product's output, found on meta tensors (cheap, no arithmetic)."""
    if kind == "linear":
        return torch.Size((*x.shape[:-1], w.shape[0]))
    if kind == "bmm":
        return torch.Size((*x.shape[:-1], w.shape[-2]))
    conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[kind]
    return conv(x.to("meta"), w.to("meta"), None, **conv_kwargs).shape


class RefProduct(torch.autograd.Function):
    """One SWAT weight product: ``y`` from ``ref_layer`` forward, ``dx, dw, db`` from it in backward.

    The forward call passes a zero upstream gradient only because ``ref_layer`` needs one of Y's shape;
    ``y`` does not depend on it. Backward calls ``ref_layer`` again with the saved x, w, b and the real g.
    ``conv_kwargs`` is a dict (``apply`` takes no keyword arguments).
    """

    @staticmethod
    def forward(ctx, kind, x, w, b, sites, density, granularity, conv_kwargs):
        ctx.save_for_backward(x, w, b)
        ctx.settings = (kind, sites, density, granularity, conv_kwargs)
        g0 = torch.zeros(_output_shape(kind, x, w, conv_kwargs), dtype=x.dtype, device=x.device)
        return ref_layer(kind, x, w, b, g0, sites, density, granularity, **conv_kwargs)["y"]

    @staticmethod
    def backward(ctx, g):
        x, w, b = ctx.saved_tensors
        kind, sites, density, granularity, conv_kwargs = ctx.settings
        out = ref_layer(kind, x, w, b, g.contiguous(), sites, density, granularity, **conv_kwargs)
        return None, out["dx"], out["dw"], out["db"], None, None, None, None


def ref_product(
    kind: str,
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    sites: Iterable[str] | str,
    density: float,
    granularity: str,
    **conv_kwargs: object,
) -> Tensor:
    """Differentiable SWAT product of kind "linear", "bmm" (x [B, N, I], w [B, O, I]), "conv1d", "conv2d"
    or "conv3d".

    linear: y = x @ w.T + b, any leading dims (a 1-D x is treated as one row); conv: an unbatched
    input [C, ...] is treated as a batch of one, as ``nn.Conv*d`` does. ``b`` may be None.
    """
    unbatched = (kind == "linear" and x.dim() == 1) or (kind.startswith("conv") and x.dim() == w.dim() - 1)
    if unbatched:
        x = x.unsqueeze(0)
    y = RefProduct.apply(kind, x, w, b, sites, density, granularity, dict(conv_kwargs))
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------
# Module forwards
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RefSettings:
    """What a patched module needs to call the reference; stored on it as ``swat_reference``."""

    sites: frozenset[str]
    density: float
    granularity: str

    def product(self, kind: str, x: Tensor, w: Tensor, b: Tensor | None, **conv_kwargs: object) -> Tensor:
        return ref_product(kind, x, w, b, self.sites, self.density, self.granularity, **conv_kwargs)


def _linear_forward(self: nn.Linear, x: Tensor) -> Tensor:
    """nn.Linear: y = x W^T + b through the reference."""
    return self.swat_reference.product("linear", x, self.weight, self.bias)


def _conv_forward(self: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor) -> Tensor:
    """nn.Conv{1,2,3}d with zero padding (int, tuple, "same" or "valid") through the reference."""
    kind = f"conv{len(self.kernel_size)}d"
    return self.swat_reference.product(
        kind, x, self.weight, self.bias,
        stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
    )


def _gpt2_conv1d_forward(self: nn.Module, x: Tensor) -> Tensor:
    """transformers' Conv1D: y = x W + b with W stored [in, out], on x flattened to 2-D as it does.

    The reference linear takes w = W.T ([out, in]); autograd of ``.t()`` turns dW back into [in, out].
    """
    size_out = (*x.shape[:-1], self.nf)
    y = self.swat_reference.product("linear", x.reshape(-1, x.shape[-1]), self.weight.t(), self.bias)
    return y.view(size_out)


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Bool mask (True = masked out) -> additive float mask with -inf; float masks pass through."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype != torch.bool:
        raise TypeError(f"only bool and floating masks are supported, got {mask.dtype}")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def _mha_forward(
    self: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Plain nn.MultiheadAttention whose in / out projections go through the reference.

    The in-projection mirrors ``F.multi_head_attention_forward``, because the split decides the
    Top-K groups of the weight: query is key is value -> ONE product over the whole in_proj_weight
    [3E, E], then split; key is value only -> a product on the q slice and one on the packed kv
    slice [2E, E]; otherwise three products on the three slices. As in torch, an unbatched call
    loses those identities (each input is unsqueezed on its own), so it takes three products.
    """
    if self.bias_k is not None or self.bias_v is not None or self.add_zero_attn:
        raise NotImplementedError("reference MHA: add_bias_kv / add_zero_attn")
    if not self._qkv_same_embed_dim:
        raise NotImplementedError("reference MHA: kdim / vdim different from embed_dim")
    if self.training and self.dropout > 0:
        raise NotImplementedError("reference MHA: attention dropout in training")

    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif self.batch_first:  # to [L, N, E], keeping the `is` identities as torch does
        if key is value:
            if query is key:
                query = key = value = query.transpose(1, 0)
            else:
                query, key = query.transpose(1, 0), key.transpose(1, 0)
                value = key
        else:
            query, key, value = query.transpose(1, 0), key.transpose(1, 0), value.transpose(1, 0)

    ref = self.swat_reference
    e, heads = self.embed_dim, self.num_heads
    w, b = self.in_proj_weight, self.in_proj_bias

    def rows(lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        """Slice [lo*E, hi*E) of the packed in-projection weight and bias."""
        return w[lo * e : hi * e], None if b is None else b[lo * e : hi * e]

    if key is value and query is key:
        q, k, v = ref.product("linear", query, w, b).chunk(3, dim=-1)
    elif key is value:
        q = ref.product("linear", query, *rows(0, 1))
        k, v = ref.product("linear", key, *rows(1, 3)).chunk(2, dim=-1)
    else:
        q = ref.product("linear", query, *rows(0, 1))
        k = ref.product("linear", key, *rows(1, 2))
        v = ref.product("linear", value, *rows(2, 3))

    tgt_len, bsz, _ = q.shape
    src_len = k.shape[0]
    head_dim = e // heads
    # [L, N, E] -> [N*H, L, D]: batch-major heads, as torch lays them out (the 3-D attn_mask uses this order).
    q, k, v = (t.reshape(t.shape[0], bsz * heads, head_dim).transpose(0, 1) for t in (q, k, v))

    # Mask, with torch's rules: is_causal is only a hint, except that torch then ignores attn_mask and
    # uses a causal mask when there is no key_padding_mask and no weights are asked for.
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
    if is_causal and key_padding_mask is None and not need_weights:
        causal = torch.ones(tgt_len, src_len, dtype=torch.bool, device=q.device).triu(1)
        mask = _float_mask(causal, q.dtype)
    else:
        mask = _float_mask(attn_mask, q.dtype)
    if mask is not None and mask.dim() == 2:
        mask = mask.unsqueeze(0)
    pad = _float_mask(key_padding_mask, q.dtype)
    if pad is not None:
        pad = pad.reshape(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
        mask = pad if mask is None else mask + pad

    scores = q @ k.transpose(1, 2) / math.sqrt(head_dim)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    out = (weights @ v).transpose(0, 1).reshape(tgt_len * bsz, e)

    out_proj = self.out_proj
    if hasattr(out_proj, "swat_reference"):
        out = out_proj.swat_reference.product("linear", out, out_proj.weight, out_proj.bias)
    else:  # out_proj named in `dense`
        out = F.linear(out, out_proj.weight, out_proj.bias)
    out = out.view(tgt_len, bsz, e)

    if need_weights:
        weights = weights.view(bsz, heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        weights = None
    if not batched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    elif self.batch_first:
        out = out.transpose(1, 0)
    return out, weights


def _gpt2_conv1d_type() -> type | None:
    """transformers' Conv1D class, or None when transformers is not installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def _patch_for(module: nn.Module):
    """The reference forward for this module, or None (module left as is).

    Subclasses count only if they keep the base class's forward: one that overrides it computes
    something else, so it is treated as an unknown module.
    """
    conv1d_type = _gpt2_conv1d_type()
    table = [
        (nn.Linear, _linear_forward),
        (nn.Conv1d, _conv_forward),
        (nn.Conv2d, _conv_forward),
        (nn.Conv3d, _conv_forward),
        (nn.MultiheadAttention, _mha_forward),
    ]
    if conv1d_type is not None:
        table.append((conv1d_type, _gpt2_conv1d_forward))
    for base, forward in table:
        if isinstance(module, base) and type(module).forward is base.forward:
            if isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros":
                raise NotImplementedError(f"reference conv: padding_mode={module.padding_mode!r}")
            return forward
    return None


def _is_dense(name: str, dense: Collection[str]) -> bool:
    """A module is dense if it, or a module containing it, is named in ``dense``."""
    return any(name == d or name.startswith(d + ".") for d in dense)


def reference_model(
    model: nn.Module,
    sites: Iterable[str] | str,
    density: float,
    granularity: str,
    dense: Collection[str] = (),
) -> nn.Module:
    """Deep copy of ``model`` whose weight products are all computed by the SWAT reference.

    Instance ``forward``s are replaced on nn.Linear, nn.Conv1d/2d/3d, transformers' Conv1D and
    nn.MultiheadAttention. Modules named in ``dense`` (qualified names, as in ``named_modules``; a
    name covers its submodules) keep their plain forward. Any other module (embeddings, norms,
    unknown types, even with 2-D parameters) is left as is. ``sites`` is a set of site names or an
    algorithm name ("swat", "saw", "meprop", "dense").
    """
    settings = RefSettings(_resolve_sites(sites), float(density), granularity)
    dense = frozenset(dense)
    ref = copy.deepcopy(model)
    names = {name for name, _ in ref.named_modules()}
    unknown = dense - names
    if unknown:
        raise ValueError(f"dense names no module: {sorted(unknown)}")
    for name, module in ref.named_modules():
        forward = _patch_for(module)
        if forward is None or _is_dense(name, dense):
            continue
        module.swat_reference = settings
        module.forward = types.MethodType(forward, module)  # deepcopy-safe: rebinds to the copy
    return ref


# --------------------------------------------------------------------------
# Counting weight products in an exported graph
# --------------------------------------------------------------------------


def _product_targets() -> frozenset:
    aten = torch.ops.aten
    return frozenset(
        {
            aten.linear.default,
            aten.conv1d.default,
            aten.conv2d.default,
            aten.conv3d.default,
            aten.conv1d.padding,
            aten.conv2d.padding,
            aten.conv3d.padding,
            aten.addmm.default,
            aten.mm.default,
            aten.matmul.default,
            aten.bmm.default,
            aten.einsum.default,
        }
    )


def _layout_ops() -> frozenset:
    """Ops through which a product still reads (a part of) a parameter as its weight."""
    aten = torch.ops.aten
    return frozenset({aten.t.default, aten.transpose.int, aten.permute.default, aten.mT.default, aten.numpy_T.default,
                      aten.chunk.default,
                      aten.split.Tensor, aten.split_with_sizes.default, aten.slice.Tensor, aten.narrow.default,
                      operator.getitem})


def count_weight_products(model: nn.Module, args: tuple, kwargs: dict | None = None) -> int:
    """Number of weight products in ``torch.export`` of ``model`` (train mode, on a deep copy).

    A product is a call to linear / conv / addmm / mm / matmul / bmm / einsum with an operand that
    is a parameter of >= 2 dims, read by ``get_attr`` directly or through t / transpose / permute, or a
    piece of it (chunk / split / slice / narrow).
    """
    m = copy.deepcopy(model).train()
    gm = torch.export.export(m, tuple(args), kwargs or {}, strict=False).module()
    params = dict(gm.named_parameters(remove_duplicate=False))
    products, layout = _product_targets(), _layout_ops()

    def is_weight(node: object) -> bool:
        while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in layout:
            node = node.args[0]
        if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
            return False
        p = params.get(node.target)
        return p is not None and p.dim() >= 2

    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in products:
            operands = torch.utils._pytree.tree_leaves((node.args, node.kwargs))
            count += any(is_weight(a) for a in operands)
    return count
