"""The fused query/key/value projections and rotary embedding (``train.qkv``) must compute what
transformers' attention computes with the fused LoRA linears: the same outputs, gradients within
rounding (fp32) or no further from the fp32 reference than the unfused path (bf16), for grouped
query attention with and without projection biases, on packed rows and on batches; and the
module's own forward must stay where the fused one does not apply."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from th_support import count_applies
from tunehouse.config import LoraConfig, TrainConfig
from tunehouse.data.tokenize import encode_chat
from tunehouse.train import qkv
from tunehouse.train.attention import use_varlen
from tunehouse.train.lora import use_fused_lora
from tunehouse.train.model import causal_lm, pack, packed_token_loss, wrap_for_training
from tunehouse.train.qkv import use_fused_qkv


def model_for(tok, *, bias=False, dtype=torch.float32, cls=LlamaForCausalLM, config=LlamaConfig):
    """A tiny random model with grouped-query attention (4 query, 2 key/value heads of 16),
    LoRA r=4 on every linear layer with random adapters, fp32 adapters as the trainer keeps them,
    switched to the varlen attention and the fused LoRA linears."""
    torch.manual_seed(11)
    cfg = config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, attention_bias=bias,
                 max_position_embeddings=512, tie_word_embeddings=True,
                 pad_token_id=tok.pad_token_id)
    model = wrap_for_training(cls(cfg).to(dtype), TrainConfig(train_file="unused.jsonl",
                                                              lora=LoraConfig(r=4, alpha=8)))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
            if p.requires_grad:
                p.data = p.data.float()
    causal_lm(model).config.use_cache = False  # as prepare_for_training sets it
    use_varlen(causal_lm(model))
    use_fused_lora(model)
    return model


@pytest.fixture
def node_calls(monkeypatch):
    """How many times the fused node ran (so a test cannot pass on the fallback alone)."""
    return count_applies(monkeypatch, qkv._QKVRotary)


def row(tok):
    convs = [[{"role": "user", "content": "tell me " * k},
              {"role": "assistant", "content": f"sure {k}, " * (2 * k)}] for k in (1, 6, 3)]
    return pack([(e.input_ids, e.labels) for e in (encode_chat(tok, c) for c in convs)])


def loss_and_grads(model, packed, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _, _ = packed_token_loss(model, packed)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bias", [False, True])
def test_fp32_same_loss_and_gradients(tiny_tokenizer, bias, node_calls):
    model, packed = model_for(tiny_tokenizer, bias=bias), row(tiny_tokenizer)
    ref_loss, ref_grads = loss_and_grads(model, packed, False)
    assert use_fused_qkv(model) == 2
    node_calls["n"] = 0  # not the install-time probes
    loss, grads = loss_and_grads(model, packed, False)
    assert node_calls["n"] == 2  # one per layer
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_no_further_from_fp32_than_the_unfused_path(tiny_tokenizer, bias, node_calls):
    packed = row(tiny_tokenizer)
    ref_loss, ref_grads = loss_and_grads(model_for(tiny_tokenizer, bias=bias), packed, False)
    model = model_for(tiny_tokenizer, bias=bias, dtype=torch.bfloat16)
    old_loss, old_grads = loss_and_grads(model, packed, True)
    assert use_fused_qkv(model) == 2
    node_calls["n"] = 0
    loss, grads = loss_and_grads(model, packed, True)
    assert node_calls["n"] == 2
    assert torch.equal(loss, old_loss)  # the forward pass is the same computation
    for name, g in grads.items():
        r = ref_grads[name]
        assert (g - r).norm() <= 1.5 * (old_grads[name] - r).norm() + 1e-3 * r.norm(), name


def test_batches_of_several_rows_with_padding(tiny_tokenizer, node_calls):
    """A padded batch (validation, DPO): the dense-mask path, rotary tables broadcast over rows."""
    model = model_for(tiny_tokenizer)
    torch.manual_seed(3)
    ids = torch.randint(0, len(tiny_tokenizer), (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * mask[..., None]).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref_out, ref_grads = run()
    assert use_fused_qkv(model) == 2
    node_calls["n"] = 0
    out, grads = run()
    assert node_calls["n"] == 2
    assert torch.allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, g in grads.items():  # gradients of up to ~60 here: fp32 rounding relative to that
        r = ref_grads[name]
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5 * float(r.abs().max())), name


def test_cache_disabled_adapters_and_replaced_weights_keep_the_module_forward(tiny_tokenizer,
                                                                             node_calls):
    model = model_for(tiny_tokenizer).eval()
    ids = torch.randint(0, len(tiny_tokenizer), (1, 9))
    with torch.no_grad():
        cached = model(input_ids=ids, use_cache=True).logits  # generation: a cache is passed
        with model.disable_adapter():
            disabled = model(input_ids=ids).logits
        assert use_fused_qkv(model) == 2
        node_calls["n"] = 0
        assert torch.equal(model(input_ids=ids, use_cache=True).logits, cached)
        with model.disable_adapter():
            assert torch.equal(model(input_ids=ids).logits, disabled)
        assert node_calls["n"] == 0
        fused = model(input_ids=ids).logits
        assert node_calls["n"] == 2
        for layer in model.get_base_model().model.layers:  # as model.to(...) would
            base = layer.self_attn.k_proj.base_layer
            base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        assert torch.allclose(model(input_ids=ids).logits, fused, rtol=1e-5, atol=1e-5)
        assert node_calls["n"] == 2  # the layers one by one


def test_attention_it_does_not_reproduce_is_left_alone(tiny_tokenizer):
    """Qwen3 normalises queries and keys before the rotary embedding: not what the node computes."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = model_for(tiny_tokenizer, cls=Qwen3ForCausalLM, config=Qwen3Config)
    assert use_fused_qkv(model) == 0
    llama = model_for(tiny_tokenizer)
    llama.get_base_model().config._attn_implementation = "sdpa"  # not the engine's attention
    assert use_fused_qkv(llama) == 0
