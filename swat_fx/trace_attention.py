"""Attention that symbolic tracing can follow, for `nn.MultiheadAttention`.

torch.fx keeps `torch.nn` modules whole, and `F.multi_head_attention_forward` cannot be traced (it
branches on shapes and dtypes), so its projections would stay dense. For the common case, batched self-
or cross-attention with no masks, no extra key/value bias and no attention dropout, the SWAT tracer
calls this forward instead: the same ops as torch's (the packed in-projection is one `F.linear` over
`in_proj_weight` for self-attention, and over its q / kv or q / k / v slices otherwise), so the
projections become weight products. Other calls stay leaves (reported).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def traceable_call(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict | None:
    """The arguments of `attention` for this call, or None when it is not the case it covers."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    call = bound.arguments
    simple = (
        call["key_padding_mask"] is None and call["attn_mask"] is None and not call["is_causal"]
        and module._qkv_same_embed_dim and module.in_proj_bias is not None
        and module.bias_k is None and not module.add_zero_attn and module.dropout == 0.0
    )
    if not simple:
        return None
    return {"query": call["query"], "key": call["key"], "value": call["value"],
            "need_weights": bool(call["need_weights"]), "average_attn_weights": bool(call["average_attn_weights"])}


def _batch_second(query: Any, key: Any, value: Any) -> tuple[Any, Any, Any]:
    """[N, L, E] inputs as [L, N, E], keeping which of them are the same tensor (as torch does)."""
    if key is value:
        if query is key:
            query = key = value = query.transpose(1, 0)
            return query, key, value
        query, key = query.transpose(1, 0), key.transpose(1, 0)
        return query, key, key
    return query.transpose(1, 0), key.transpose(1, 0), value.transpose(1, 0)


def _in_projection(module: nn.MultiheadAttention, query: Any, key: Any, value: Any) -> tuple[Any, Any, Any]:
    """q, k, v by torch's `_in_projection_packed`: one product for self-attention, else one per slice."""
    w, b = module.in_proj_weight, module.in_proj_bias
    embed_dim = module.embed_dim
    if key is value and query is key:
        qkv = F.linear(query, w, b)
        qkv = qkv.unflatten(-1, (3, embed_dim)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        return qkv[0], qkv[1], qkv[2]
    if key is value:
        w_q, w_kv = w.split([embed_dim, embed_dim * 2])
        b_q, b_kv = b.split([embed_dim, embed_dim * 2])
        q = F.linear(query, w_q, b_q)
        kv = F.linear(key, w_kv, b_kv)
        kv = kv.unflatten(-1, (2, embed_dim)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        return q, kv[0], kv[1]
    w_q, w_k, w_v = w.chunk(3)
    b_q, b_k, b_v = b.chunk(3)
    return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)


def attention(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              need_weights: bool, average_attn_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`module(query, key, value)` for batched inputs, as `F.multi_head_attention_forward` computes it."""
    if module.batch_first:
        query, key, value = _batch_second(query, key, value)
    tgt_len, bsz, embed_dim = query.shape
    heads = module.num_heads
    head_dim = embed_dim // heads
    q, k, v = _in_projection(module, query, key, value)
    q = q.view(tgt_len, bsz * heads, head_dim).transpose(0, 1)
    k = k.view(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
    src_len = k.size(1)
    if need_weights:
        q_scaled = q * (1.0 / head_dim) ** 0.5
        weights = torch.softmax(torch.bmm(q_scaled, k.transpose(-2, -1)), dim=-1)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
        weights = weights.view(bsz, heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        q = q.view(bsz, heads, tgt_len, head_dim)
        k = k.view(bsz, heads, src_len, head_dim)
        v = v.view(bsz, heads, src_len, head_dim)
        out = F.scaled_dot_product_attention(q, k, v).permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
        weights = None
    out = F.linear(out, module.out_proj.weight, module.out_proj.bias).view(tgt_len, bsz, embed_dim)
    return (out.transpose(1, 0) if module.batch_first else out), weights
