"""Decode-step attention for the serving engine on CPU, and a KV cache that grows in place.

**Attention.** A decode step has one query per row against the row's whole (left-padded)
cache. PyTorch's CPU flash kernel runs that shape slowly: on the 2-core build machine
(SmolLM2-135M, 9 query and 3 key/value heads, 8 rows, ~90 cached positions, bf16) it took
~345 us per layer, ~11 ms of a ~70 ms step. Here the query heads that share a key/value
head become the rows of one small matrix product (grouped-query attention without copying
keys), the padding mask is applied to the scores and the softmax runs in float32. Every other
call (prefill, several queries, dropout, CUDA) goes to transformers' SDPA.

**Cache.** ``DynamicCache`` concatenates every layer's keys and values with the new token at
every step, copying the whole cache (60 copies a step for a 30-layer model). ``GrowingLayer``
keeps spare positions after the cached ones and writes the new token into them; the cache the
model sees is a view. Anything that replaces a layer's tensors (the scheduler pads, joins,
selects rows, trims columns) simply makes the next update allocate anew. On CPU the cache is
kept in float32 whatever the model's dtype: oneDNN's bf16 batched products of these small
shapes take ~90 us against ~25 us in float32 (and the scores are exact products), for twice
the cache memory (46 KB per token for SmolLM2-135M). The two together take a layer's decode
attention from ~345 us to ~60 us.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from tunehouse.models import use_attention

NAME = "tunehouse_decode"
SPARE = 64  # positions allocated beyond the current length when a layer's buffer is (re)built


def decode_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``(rows, heads, q, dim)`` -> ``(rows, q, heads, dim)``."""
    if query.shape[2] != 1 or query.is_cuda or (dropout and module.training):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        key, value = key.to(query.dtype), value.to(query.dtype)  # a float32 CPU cache
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return grouped_decode(query, key, value, attention_mask, scaling), None


def grouped_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor:
    """One query per row: ``query`` [rows, heads, 1, dim], ``key``/``value`` [rows, kv, T, dim],
    ``mask`` None, boolean (True: attend) or additive, broadcastable to [rows, 1, 1, T].
    Computed in ``key``'s dtype; returns [rows, 1, heads, dim] in ``query``'s."""
    rows, heads, _, dim = query.shape
    kv, positions = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim ** -0.5
    q = (query.to(key.dtype) * scale).view(rows, kv, heads // kv, dim)  # query head h uses kv head h // group
    scores = torch.matmul(q, key.transpose(-1, -2))  # [rows, kv, group, T]
    if mask is not None:
        mask = mask[..., -positions:].reshape(mask.shape[0], 1, 1, positions)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [rows, kv, group, dim]
    return out.reshape(rows, 1, heads, dim).to(query.dtype)


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose tensors are views of buffers with spare positions (float32
    on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions in place when they fit; else rebuild with ``SPARE`` room."""
        if not key_states.is_cuda:
            key_states, value_states = key_states.float(), value_states.float()
        if not self.is_initialized or self.keys.numel() == 0:
            self.lazy_initialization(key_states, value_states)
            self._buffers = None
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        used, new = self.keys.shape[-2], key_states.shape[-2]
        if not self._fits(used + new):
            self._buffers = (_with_room(self.keys, used + new + SPARE),
                             _with_room(self.values, used + new + SPARE))
        keys, values = self._buffers  # type: ignore[misc]
        keys[:, :, used:used + new] = key_states
        values[:, :, used:used + new] = value_states
        self.keys, self.values = keys[:, :, :used + new], values[:, :, :used + new]
        return self.keys, self.values

    def _fits(self, length: int) -> bool:
        """Whether ``keys``/``values`` are still prefixes of the buffers, with room for
        ``length`` positions (the scheduler may have replaced them since)."""
        if self._buffers is None:
            return False
        return all(_is_prefix(t, buf) and buf.shape[-2] >= length
                   for t, buf in zip((self.keys, self.values), self._buffers, strict=True))


def _is_prefix(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    return (view.data_ptr() == buffer.data_ptr() and view.shape[:2] == buffer.shape[:2]
            and view.stride() == buffer.stride() and view.dtype == buffer.dtype)


def _with_room(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
    """A [rows, heads, capacity, dim] buffer starting with ``tensor``'s positions."""
    rows, heads, used, dim = tensor.shape
    buffer = tensor.new_empty((rows, heads, capacity, dim))
    buffer[:, :, :used] = tensor
    return buffer


def new_cache() -> DynamicCache:
    """An empty cache whose layers grow in place."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def use_decode_attention(model: Any) -> Any:
    """Switch ``model`` (a ``PreTrainedModel``) to the decode attention; masks are built as
    for SDPA (the fallback). Returns ``model``."""
    from transformers.masking_utils import sdpa_mask

    return use_attention(model, NAME, decode_attention, sdpa_mask)
