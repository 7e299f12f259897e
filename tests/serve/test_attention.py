"""The serving engine's decode attention and growing KV cache against transformers' own.

The reference for attention is PyTorch's SDPA in float64 (grouped-query heads expanded); the
reference for the cache is ``DynamicLayer``. The end-to-end check runs a tiny GQA Llama
through decode steps with left padding, once with transformers' defaults (SDPA, concatenating
cache) and once with ours, and compares the logits of every step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from tunehouse.serve.attention import GrowingLayer, grouped_decode, new_cache, use_decode_attention


def _qkv(rows: int, heads: int, kv: int, length: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(rows, h, n, 16, generator=gen).to(dtype)
               for h, n in ((heads, 1), (kv, length), (kv, length)))
    return q, k, v


def _reference(q, k, v, keep: torch.Tensor | None) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    out = F.scaled_dot_product_attention(q.double(), k, v, attn_mask=keep)
    return out.transpose(1, 2)


@pytest.mark.parametrize(("heads", "kv"), [(6, 2), (4, 4), (3, 1)])
def test_grouped_decode_matches_sdpa_with_padding(heads, kv):
    q, k, v = _qkv(5, heads, kv, 11, torch.float32)
    keep = torch.ones(5, 1, 1, 11, dtype=torch.bool)
    keep[0, ..., :4] = False  # left padding of different widths
    keep[3, ..., :9] = False
    ref = _reference(q, k, v, keep)
    out = grouped_decode(q, k, v, keep, None)
    assert out.shape == (5, 1, heads, 16) and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-5
    additive = torch.zeros(5, 1, 1, 11).masked_fill(~keep, float("-inf"))
    assert torch.equal(grouped_decode(q, k, v, additive, None), out)
    unmasked = grouped_decode(q, k, v, None, None)
    assert (unmasked.double() - _reference(q, k, v, None)).abs().max() < 1e-5
    assert not torch.allclose(unmasked, out)  # the mask did something


def test_grouped_decode_bf16_query_on_a_float32_cache():
    q, k, v = _qkv(4, 6, 2, 9, torch.float32, seed=1)
    out = grouped_decode(q.bfloat16(), k, v, None, 0.5)
    assert out.dtype == torch.bfloat16
    scaled = F.scaled_dot_product_attention(q.bfloat16().double(), k.double().repeat_interleave(3, 1),
                                            v.double().repeat_interleave(3, 1), scale=0.5)
    assert (out.double() - scaled.transpose(1, 2)).abs().max() < 1e-2  # bf16 output rounding
    default = _reference(q.bfloat16(), k, v, None)  # scale 16 ** -0.5
    assert (out.double() - default).abs().max() > 0.05  # the scale was used


def test_growing_layer_appends_in_place_and_survives_replacement():
    ours, theirs = GrowingLayer(), DynamicLayer()
    gen = torch.Generator().manual_seed(2)

    def step(n: int, rows: int = 3) -> None:
        k, v = (torch.randn(rows, 2, n, 4, generator=gen) for _ in range(2))
        got, want = ours.update(k, v), theirs.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))

    step(5)  # a prefill
    step(1)
    buffer = ours.keys.data_ptr()
    for _ in range(10):
        step(1)
        assert ours.keys.data_ptr() == buffer  # written into the spare positions
    for layer in (ours, theirs):  # what the scheduler does when rows leave and columns trim
        layer.batch_select_indices(torch.tensor([2, 0]))
        layer.keys, layer.values = layer.keys[:, :, 3:], layer.values[:, :, 3:]
    step(1, rows=2)
    assert ours.keys.shape == (2, 2, 14, 4) and ours.keys.data_ptr() != buffer
    step(2, rows=2)
    assert ours.get_seq_length() == theirs.get_seq_length() == 16


def _tiny_gqa(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(dtype).eval()


def _decode_logits(model: LlamaForCausalLM, cache: DynamicCache, steps: int) -> list[torch.Tensor]:
    """Prefill two left-padded prompts, then feed fixed tokens; the logits of every call."""
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [9, 8, 7, 6, 5, 4]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = []
    with torch.inference_mode():
        for i in range(steps):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1].float())
            ids = torch.tensor([[10 + i], [20 + i]])
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
    return logits


def _max_error(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    scale = max(float(r.abs().max()) for r in reference)
    return max(float((a - b).abs().max()) for a, b in zip(logits, reference, strict=True)) / scale


def test_model_decode_matches_transformers_defaults():
    model = _tiny_gqa(torch.float32)
    reference = _decode_logits(model, DynamicCache(), 8)
    use_decode_attention(model)
    assert _max_error(_decode_logits(model, new_cache(), 8), reference) < 1e-5


def test_bf16_decode_is_as_close_to_float32_as_transformers_bf16():
    reference = _decode_logits(_tiny_gqa(torch.float32), DynamicCache(), 8)
    model = _tiny_gqa(torch.bfloat16)
    theirs = _max_error(_decode_logits(model, DynamicCache(), 8), reference)
    use_decode_attention(model)
    ours = _max_error(_decode_logits(model, new_cache(), 8), reference)
    assert 0 < ours <= 1.5 * theirs + 1e-3, (ours, theirs)
