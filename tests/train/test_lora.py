"""The fused LoRA linear (``train.lora``) must compute what PEFT's layer computes.

In fp32 the forward output and every gradient (input, ``lora_A``, ``lora_B``) match PEFT's op-by-op
path to rounding; under bf16 autocast they stay at least as close to the fp32 reference as PEFT's
own bf16 path. Layers PEFT computes differently (dropout, disabled adapters) keep PEFT's forward.
"""

import pytest
import torch

from th_support import ids_for, lora_model, run
from tunehouse.train.lora import plain_adapter, use_fused_lora


def test_fp32_matches_peft(tiny_tokenizer):
    ids = ids_for(tiny_tokenizer)
    model = lora_model(tiny_tokenizer)
    ref_out, ref_grads = run(model, ids)
    assert use_fused_lora(model) == 14  # 7 linear layers x 2 decoder layers
    out, grads = run(model, ids)
    assert torch.allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_input_gradient_matches_peft(tiny_tokenizer):
    """The gradient that flows to the layer's input, checked on one layer directly."""
    layer = lora_model(tiny_tokenizer).get_base_model().model.layers[0].mlp.up_proj
    x = torch.randn(2, 5, 64, requires_grad=True)
    dy = torch.randn(2, 5, 128)
    layer(x).backward(dy)
    ref = x.grad.clone()
    x.grad = None
    use_fused_lora(layer)
    layer(x).backward(dy)
    assert torch.allclose(x.grad, ref, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_no_further_from_fp32_than_peft(tiny_tokenizer):
    ids = ids_for(tiny_tokenizer)
    ref_out, ref_grads = run(lora_model(tiny_tokenizer), ids)
    model = lora_model(tiny_tokenizer, dtype=torch.bfloat16)
    for p in model.parameters():  # the loop's layout: bf16 base, fp32 adapters
        if p.requires_grad:
            p.data = p.data.float()
    peft_out, peft_grads = run(model, ids, autocast=True)
    use_fused_lora(model)
    out, grads = run(model, ids, autocast=True)
    assert all(g.dtype == torch.float32 for g in grads.values())
    err, peft_err = (out - ref_out).abs().max(), (peft_out - ref_out).abs().max()
    assert err <= 1.5 * peft_err + 1e-3, (float(err), float(peft_err))
    for name, g in grads.items():
        r = ref_grads[name]
        assert (g - r).norm() <= 1.5 * (peft_grads[name] - r).norm() + 1e-3 * r.norm(), name


@pytest.mark.parametrize("case", ["dropout", "disabled"])
def test_layers_peft_computes_differently_keep_its_forward(tiny_tokenizer, case):
    ids = ids_for(tiny_tokenizer)
    model = lora_model(tiny_tokenizer, dropout=0.1 if case == "dropout" else 0.0).eval()
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    use_fused_lora(model)
    if case == "dropout":
        assert plain_adapter(layer) is None  # dropout is a module even in eval mode
        return
    assert plain_adapter(layer) == "default"
    with torch.no_grad():
        with model.disable_adapter():
            assert plain_adapter(layer) is None
            disabled = model(input_ids=ids).logits
        base = model.get_base_model()
        for m in base.modules():  # PEFT's own forwards again
            m.__dict__.pop("forward", None)
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert torch.equal(disabled, plain)
