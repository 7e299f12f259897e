"""An attention layer's query/key/value projections and rotary embedding as one autograd node.

transformers' Llama-style attention runs three LoRA linears on the same hidden states, then the
rotary embedding on the queries and keys op by op (``q * cos + rotate_half(q) * sin``: two
multiplications, a negation, a concatenation and an addition forward, as many backward), and
backward autograd adds the three layers' input gradients. Here the three frozen weights are one
stacked matmul (``train.stacked``) with the adapters' small matmuls done for all three at once
(``train.lora.lora_forward``); the rotation is applied in place to the query and key columns of
that one output, half by half (``x1 * cos - x2 * sin``, ``x2 * cos + x1 * sin``, the same
roundings as transformers'); backward the rotation's transpose writes the query and key
gradients straight into one gradient matrix, and one matmul gives the input gradient.

Switched only where that holds: an attention module with ``q_proj``, ``k_proj``, ``v_proj`` and
``o_proj`` whose output the fused forward reproduces on a probe input (``train.probe``), with
and without packed boundaries (checked when installing); per call, plain adapters over the
stacked weights, the engine's varlen attention, rotary tables in the compute dtype over the
whole head (no partial rotation) and no cache. Anything else keeps transformers' forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from tunehouse.models import compute_dtype
from tunehouse.train.attention import NAME, varlen_attention
from tunehouse.train.lora import lora_backward, lora_forward
from tunehouse.train.probe import probe_inputs, reproduces
from tunehouse.train.stacked import Stack, stack

_CACHES = ("past_key_values", "past_key_value", "cache")


class _QKVRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor | None, heads: tuple[int, int, int],
                scales: tuple[float, ...], *adapters: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x`` (batch, tokens, hidden) and ``cos``/``sin`` (batch or 1, tokens, head_dim) in the
        compute dtype, the stacked frozen q/k/v ``weight``, ``heads`` = (query heads, key/value
        heads, head_dim), ``adapters`` = the three A's then the three B's -> rotated queries
        (batch, heads, tokens, head_dim), rotated keys and values (batch, kv_heads, ...)."""
        n_q, n_kv, dim = heads
        b, t = x.shape[:2]
        x2 = x.reshape(b * t, -1)
        y, xa, a_c, b_c = lora_forward(x2, weight, bias, adapters[:3], adapters[3:], scales)
        y3 = y.view(b, t, n_q + 2 * n_kv, dim)
        _rotate(y3[:, :, :n_q + n_kv], cos[:, :, None], sin[:, :, None], inverse=False)
        ctx.save_for_backward(x2, xa, weight, a_c, *b_c, cos, sin)
        ctx.heads, ctx.scales, ctx.bt = heads, scales, (b, t)
        return tuple(part.transpose(1, 2) for part in y3.split([n_q, n_kv, n_kv], dim=2))

    @staticmethod
    def backward(ctx: Any, dq: torch.Tensor | None, dk: torch.Tensor | None,
                 dv: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x2, xa, weight, a_c, bq, bk, bv, cos, sin = ctx.saved_tensors
        n_q, n_kv, dim = ctx.heads
        b, t = ctx.bt  # cos and sin may be broadcast over the batch
        dy = x2.new_empty(b * t, (n_q + 2 * n_kv) * dim)
        dy3 = dy.view(b, t, n_q + 2 * n_kv, dim)
        for grad, part in zip((dq, dk, dv), dy3.split([n_q, n_kv, n_kv], dim=2)):
            if grad is None:
                part.zero_()
            else:
                part.copy_(grad.transpose(1, 2))
        _rotate(dy3[:, :, :n_q + n_kv], cos[:, :, None], sin[:, :, None], inverse=True)
        need = ctx.needs_input_grad
        dx, da, db = lora_backward(dy, x2, xa, weight, a_c, [bq, bk, bv], ctx.scales,
                                   (need[0], any(need[7:10]), any(need[10:13])))
        da, db = da or [None] * 3, db or [None] * 3
        return (None if dx is None else dx.view(b, t, -1), None, None, None, None, None, None,
                *da, *db)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> None:
    """Rotate ``x`` (..., dim) in place by the rotary tables (broadcast against it), halves as
    transformers' ``rotate_half`` pairs them; ``inverse`` applies the transpose (the backward)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    if inverse:  # d1 * c1 + d2 * s2, d2 * c2 - d1 * s1
        first, second = x1 * c1 + x2 * s2, x2 * c2 - x1 * s1
    else:  # q * cos + rotate_half(q) * sin, in transformers' order of roundings
        first, second = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    x1.copy_(first)
    x2.copy_(second)


def _forward(attn: Any, qkv: Stack, heads: tuple[int, int, int], hidden_states: torch.Tensor,
             position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
             attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    dtype = compute_dtype(hidden_states)
    args = qkv.args(dtype) if position_embeddings is not None else None
    if args is None or attn.config._attn_implementation != NAME \
            or any(t.dtype != dtype or t.shape[-1] != heads[2] for t in position_embeddings) \
            or any(kwargs.get(k) is not None for k in _CACHES):
        return type(attn).forward(attn, hidden_states, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, **kwargs)
    weight, bias, a, b, scales = args
    cos, sin = position_embeddings
    with torch.autocast(hidden_states.device.type, enabled=False):  # dtypes chosen here
        q, k, v = _QKVRotary.apply(hidden_states.to(dtype), cos, sin, weight, bias, heads,
                                   tuple(scales), *a, *b)
    kwargs = {name: value for name, value in kwargs.items() if name not in _CACHES}
    out, weights = varlen_attention(attn, q, k, v, attention_mask,
                                    dropout=attn.attention_dropout if attn.training else 0.0,
                                    scaling=attn.scaling, **kwargs)
    out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
    return attn.o_proj(out), weights


def _is_attention(module: Any) -> bool:
    return all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim",
                                              "scaling", "attention_dropout", "config"))


def _probe(attn: Any, fused: Any, heads: tuple[int, int, int]) -> bool:
    """Whether ``fused`` reproduces the module's own forward on a 5-token probe, as one
    sequence and as two packed examples."""
    weight = attn.q_proj.base_layer.weight
    x, cos, sin = probe_inputs(weight, (1, 5, attn.q_proj.in_features), (1, 5, heads[2]),
                               (1, 5, heads[2]))
    rope = (cos, sin)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=weight.device)
    packed = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 3, "max_length_k": 3}
    try:
        return all(reproduces(attn, fused, x, exact=False, position_embeddings=rope,
                              attention_mask=None, **kw) for kw in ({}, packed))
    except (RuntimeError, TypeError, ValueError):  # a forward of another shape: not ours to run
        return False


def use_fused_qkv(model: Any) -> int:
    """Give every attention layer of ``model`` (switched to ``train.attention``'s varlen
    attention) with plain LoRA query/key/value projections the fused forward; returns how many."""
    n = 0
    for m in model.modules():
        if not _is_attention(m) or getattr(m.config, "_attn_implementation", None) != NAME:
            continue
        if m.k_proj.out_features != m.v_proj.out_features or m.q_proj.out_features % m.head_dim \
                or m.k_proj.out_features % m.head_dim:
            continue
        qkv = stack([m.q_proj, m.k_proj, m.v_proj])
        if qkv is None:
            continue
        heads = (m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim,
                 m.head_dim)
        fused = functools.partial(_forward, m, qkv, heads)
        if _probe(m, fused, heads):
            m.forward = fused
            n += 1
    return n
