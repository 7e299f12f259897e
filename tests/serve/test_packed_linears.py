"""Linear layers with oneDNN-packed weights against the same layers dense."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tunehouse.serve.packed import pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")


def _model(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.0), (torch.float32, 1e-5)])
def test_packed_model_computes_what_the_dense_one_does(dtype, tolerance):
    model = _model(dtype)
    ids = torch.randint(0, 96, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        dense = model(input_ids=ids).logits.float()
        assert pack_linears(model) == 2 * 7 + 1  # 7 projections per layer and the head
        packed = model(input_ids=ids).logits.float()
        assert pack_linears(model) == 0  # already packed: nothing done twice
    assert (packed - dense).abs().max() <= tolerance * dense.abs().max()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied weights untouched


def test_layers_that_are_not_plain_linear_stay_dense():
    model = _model(torch.float16)  # not a packable dtype
    assert pack_linears(model) == 0
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_bias_and_three_dimensional_inputs():
    layer = torch.nn.Linear(64, 48).eval()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        dense = layer(x)
        assert pack_linears(layer) == 1
        packed = layer(x)
    assert packed.shape == (2, 5, 48)
    assert (packed - dense).abs().max() < 1e-5


def test_a_changed_or_copied_layer_computes_on_its_dense_weight():
    import copy

    layer = torch.nn.Linear(64, 48).eval()
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(7))
    assert pack_linears(layer) == 1
    with torch.no_grad():
        layer.weight.mul_(2)  # in place, after packing
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))
    twin = copy.deepcopy(layer)  # what PEFT does for modules_to_save
    with torch.no_grad():
        twin.weight.zero_()
    assert torch.equal(twin(x), twin.bias.expand(3, 48))
    layer.weight = torch.nn.Parameter(torch.ones(48, 64))  # replaced
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))


def test_nothing_is_packed_when_the_copies_would_not_fit():
    layer = torch.nn.Linear(64, 48)  # 12 KB of float32 weights
    assert pack_linears(layer, memory_available=20_000) == 0  # more than half of it
    assert "forward" not in layer.__dict__
    assert pack_linears(layer, memory_available=30_000) == 1
