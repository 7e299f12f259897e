"""Causal attention over a packed row on the CPU, forward and backward by blocks of queries.

PyTorch's CPU flash-attention kernel spends most of its time in its backward pass (about a
fifth of a LoRA training step on SmolLM2). Here both passes are a few batched matmuls per
block of 128 query positions, the operands in the compute dtype (bf16 under autocast; the
matmuls accumulate in fp32), each block's softmax and its backward one fused kernel that
computes in fp32:

* The query heads that share one key/value head (grouped-query attention) are stacked as rows
  of one matrix, so one matmul serves the whole group and nothing expands keys or values.
* A block of queries only meets the keys up to its own end (causal): about half of the score
  matrix is never computed, and only one block's scores exist at a time
  (``128 x heads x length``), never the whole ``length x length`` matrix.
* Examples up to ``KEEP_MAX`` tokens keep their blocks' probabilities (in the compute dtype)
  for the backward pass; longer ones recompute them there, as FlashAttention does, so the
  memory kept stays linear in the row's length beyond that.

Each example of the row is its own causal sequence (``bounds``), so no token attends across
examples. Measured against PyTorch's flash kernel (one thread, 9 query and 3 key/value heads
of size 64, bf16, forward + backward; ``benchmarks/README.md``), with gradients as close to an
fp64 reference as the kernel's (``tests/train/test_cpu_attention.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from tunehouse.models import compute_dtype

BLOCK = 128  # query positions per block: fewer, larger matmuls; scores stay within L2
KEEP_MAX = 1024  # examples up to this length keep their probabilities for the backward pass


class _PackedCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                scale: float) -> torch.Tensor:
        """``q`` (heads, tokens, dim), ``k``/``v`` (kv_heads, tokens, dim) -> (tokens, heads, dim)."""
        heads, tokens, dim = q.shape
        groups = k.shape[0]
        out = q.new_empty(tokens, heads, dim)
        ctx.kept = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            keep = any(ctx.needs_input_grad[:3]) and e - s <= KEEP_MAX
            o, kept = _forward(_rows(q[:, s:e], groups) * scale, k[:, s:e], v[:, s:e], keep)
            ctx.kept.append(kept)
            out[s:e].view(e - s, groups, -1).copy_(o.view(groups, e - s, -1).transpose(0, 1))
        ctx.save_for_backward(q, k, v)
        ctx.bounds, ctx.scale = bounds, scale
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                           None, None]:
        q, k, v = ctx.saved_tensors
        heads, _, dim = q.shape
        groups = k.shape[0]
        per = heads // groups
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dout = dout.to(q.dtype).contiguous()
        for i, (s, e) in enumerate(zip(ctx.bounds[:-1], ctx.bounds[1:])):
            n = e - s
            grads = _backward(_rows(q[:, s:e], groups) * ctx.scale, k[:, s:e], v[:, s:e],
                              _rows(dout[s:e].transpose(0, 1), groups), ctx.kept[i])
            dq[:, s:e] = grads[0].mul_(ctx.scale).view(groups, n, per, dim).transpose(1, 2) \
                .reshape(heads, n, dim)
            dk[:, s:e], dv[:, s:e] = grads[1], grads[2]
        ctx.kept = []
        return dq, dk, dv, None, None


def _rows(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(heads, n, dim) -> (groups, n * heads_per_group, dim), row ``pos * per + head``."""
    heads, n, dim = x.shape
    return x.view(groups, heads // groups, n, dim).transpose(1, 2).reshape(groups, -1, dim)


_MASKS: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}


def _future(n: int, per: int, dtype: torch.dtype) -> torch.Tensor:
    """(n * per, n) in ``dtype``: -inf where a row's query position is before the key
    position, else 0. Added to the scores rather than a ``masked_fill_`` with a boolean mask:
    the addition is vectorised, the fill is not (2.5-3x faster on a block's diagonal)."""
    mask = _MASKS.get((n, per, dtype))
    if mask is None:
        pos = torch.arange(n).repeat_interleave(per)
        future = torch.arange(n)[None, :] > pos[:, None]
        mask = torch.zeros(n * per, n, dtype=dtype).masked_fill_(future, float("-inf"))
        mask = _MASKS.setdefault((n, per, dtype), mask)
    return mask


def _blocks(n: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + BLOCK)) for s in range(0, n, BLOCK)]


def _probs(scaled: torch.Tensor, k: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Attention probabilities of query positions ``s:e`` over keys ``:e``, compute dtype."""
    per = scaled.shape[1] // k.shape[1]
    scores = torch.bmm(scaled[:, s * per:e * per], k[:, :e].transpose(1, 2))
    scores[:, :, s:e].add_(_future(e - s, per, scores.dtype))
    return torch.softmax(scores, -1)  # fp32 inside, written in the compute dtype


def _forward(scaled: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: bool
             ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """One example's scaled query rows (groups, n * per, dim) -> output rows, and the blocks'
    probabilities if ``keep``."""
    n, per = k.shape[1], scaled.shape[1] // k.shape[1]
    out = torch.empty_like(scaled)
    kept: list[torch.Tensor] = []
    for s, e in _blocks(n):
        probs = _probs(scaled, k, s, e)
        torch.bmm(probs, v[:, :e], out=out[:, s * per:e * per])
        if keep:
            kept.append(probs)
    return out, kept if keep else None


def _backward(scaled: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dor: torch.Tensor,
              kept: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One example's gradients: dq in rows (still to be multiplied by the scale), dk and dv as
    (groups, n, dim)."""
    groups, n, dim = k.shape
    per = scaled.shape[1] // n
    dq = torch.empty_like(scaled)
    dk = torch.zeros(groups, n, dim, dtype=torch.float32)
    dv = torch.zeros(groups, n, dim, dtype=torch.float32)
    for b, (s, e) in enumerate(_blocks(n)):
        rows = slice(s * per, e * per)
        probs = kept[b] if kept is not None else _probs(scaled, k, s, e)
        dob = dor[:, rows]
        dv[:, :e] += torch.bmm(probs.transpose(1, 2), dob)
        # the softmax backward, fused: P * (dP - rowsum(dP * P)), fp32 inside
        dscores = torch._softmax_backward_data(torch.bmm(dob, v[:, :e].transpose(1, 2)), probs, -1,
                                               scaled.dtype)
        dq[:, rows] = torch.bmm(dscores, k[:, :e])
        dk[:, :e] += torch.bmm(dscores.transpose(1, 2), scaled[:, rows])
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def packed_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                            scale: float) -> torch.Tensor:
    """Causal attention of every example ``bounds[i]:bounds[i+1]`` of a packed row.

    ``q`` (heads, tokens, dim) and ``k``/``v`` (kv_heads, tokens, dim), heads a multiple of
    kv_heads (query head ``h`` uses key/value head ``h // (heads // kv_heads)``, as
    transformers' ``repeat_kv``) -> (tokens, heads, dim). Under CPU autocast the inputs are
    cast to its dtype; otherwise the attention runs in the dtype of ``q``.
    """
    dtype = compute_dtype(q)
    with torch.autocast("cpu", enabled=False):  # the kernel chooses its dtypes itself
        return _PackedCausalAttention.apply(q.to(dtype), k.to(dtype), v.to(dtype), bounds, scale)
