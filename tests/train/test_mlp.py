"""The fused SwiGLU MLP (``train.mlp``) must give exactly the outputs of the MLP with fused LoRA
linears, gradients within rounding (fp32) or no further from the fp32 reference than that path
(bf16: the gate and up projections' input gradient is now one matmul), keep fewer activations,
and leave alone what it does not reproduce."""

import torch

from th_support import count_applies, ids_for, lora_model, run
from tunehouse.train import mlp
from tunehouse.train.lora import use_fused_lora
from tunehouse.train.mlp import use_fused_mlps


def fp32_adapters(model):
    for p in model.parameters():  # adapters train in fp32, as in the trainer
        if p.requires_grad:
            p.data = p.data.float()
    return model


def test_fp32_same_outputs_and_gradients(tiny_tokenizer, monkeypatch):
    ids = ids_for(tiny_tokenizer)
    model = lora_model(tiny_tokenizer)
    use_fused_lora(model)
    ref_out, ref_grads = run(model, ids)
    assert use_fused_mlps(model) == 2  # one MLP per decoder layer
    calls = count_applies(monkeypatch, mlp._SwiGLU)
    out, grads = run(model, ids)
    assert calls["n"] == 2  # the fused node ran, not the fallback
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-5), name


def test_bf16_same_outputs_gradients_no_further_from_fp32(tiny_tokenizer):
    ids = ids_for(tiny_tokenizer)
    _, ref_grads = run(lora_model(tiny_tokenizer), ids)
    model = fp32_adapters(lora_model(tiny_tokenizer, dtype=torch.bfloat16))
    use_fused_lora(model)
    old_out, old_grads = run(model, ids, autocast=True)
    assert use_fused_mlps(model) == 2
    out, grads = run(model, ids, autocast=True)
    assert torch.equal(out, old_out)
    for name, g in grads.items():
        r = ref_grads[name]
        assert (g - r).norm() <= 1.5 * (old_grads[name] - r).norm() + 1e-3 * r.norm(), name


def saved_bytes(fn):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_keeps_only_gate_and_up(tiny_tokenizer):
    mlp = lora_model(tiny_tokenizer).get_base_model().model.layers[0].mlp
    use_fused_lora(mlp)
    x = torch.randn(1, 50, 64, requires_grad=True)
    before = saved_bytes(lambda: mlp(x))
    assert use_fused_mlps(mlp) == 1
    after = saved_bytes(lambda: mlp(x))
    inter = 50 * 128 * 4  # one (tokens, intermediate) fp32 tensor
    assert before - after >= 2 * inter  # the SiLU output and the product are no longer kept


def test_not_plain_down_projection_keeps_transformers_forward(tiny_tokenizer):
    model = lora_model(tiny_tokenizer, dropout=0.1)  # dropout: not a plain adapter
    use_fused_lora(model)
    assert use_fused_mlps(model) == 0
    model = lora_model(tiny_tokenizer)
    use_fused_lora(model)
    assert use_fused_mlps(model) == 2
    mlp = model.get_base_model().model.layers[0].mlp
    x = torch.randn(1, 7, 64)
    with torch.no_grad(), model.disable_adapter():  # per call: DPO's reference model
        assert torch.equal(mlp(x), mlp.down_proj.base_layer(
            mlp.act_fn(mlp.gate_proj.base_layer(x)) * mlp.up_proj.base_layer(x)))


def test_other_activations_left_alone(tiny_tokenizer):
    model = lora_model(tiny_tokenizer)
    use_fused_lora(model)
    for layer in model.get_base_model().model.layers:
        layer.mlp.act_fn = torch.nn.GELU()
    assert use_fused_mlps(model) == 0
