"""Stacked frozen weights (``train.stacked``): the layers' weights become views of one tensor
with the same numbers, and a stack that no longer backs its layers, or whose adapters are no
longer plain, is not used."""

import torch

from th_support import lora_model
from tunehouse.train.stacked import stack


def qkv_layers(tok):
    attn = lora_model(tok).get_base_model().model.layers[0].self_attn
    return [attn.q_proj, attn.k_proj, attn.v_proj]


def test_layers_become_views_of_one_tensor_with_the_same_numbers(tiny_tokenizer):
    layers = qkv_layers(tiny_tokenizer)
    before = [layer.base_layer.weight.detach().clone() for layer in layers]
    st = stack(layers)
    assert st is not None and st.weight.shape == (sum(w.shape[0] for w in before), 64)
    assert torch.equal(st.weight, torch.cat(before))
    for layer, w in zip(layers, before):
        weight = layer.base_layer.weight
        assert torch.equal(weight, w) and not weight.requires_grad
        assert weight.untyped_storage().data_ptr() == st.weight.untyped_storage().data_ptr()
    weight, bias, a, b, scales = st.args(torch.float32)
    assert bias is None and len(a) == len(b) == len(scales) == 3
    assert a[0] is layers[0].lora_A["default"].weight  # the trainable parameters themselves
    with torch.no_grad():  # an in-place update of a layer's weight (a merge) is seen by the stack
        layers[1].base_layer.weight.add_(1.0)
    assert torch.equal(st.weight[64:128], before[1] + 1.0)


def test_not_used_once_a_weight_is_replaced_or_an_adapter_is_disabled(tiny_tokenizer):
    layers = qkv_layers(tiny_tokenizer)
    st = stack(layers)
    assert st.args(torch.float32) is not None
    layers[0].enable_adapters(False)  # what ``disable_adapter()`` does to every layer
    assert st.args(torch.float32) is None
    layers[0].enable_adapters(True)
    base = layers[2].base_layer
    base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)  # model.to()
    assert st.args(torch.float32) is None


def test_refuses_what_cannot_be_one_matmul(tiny_tokenizer):
    mlp = lora_model(tiny_tokenizer).get_base_model().model.layers[0].mlp
    assert stack([mlp.gate_proj, mlp.down_proj]) is None  # different inputs
    layers = qkv_layers(tiny_tokenizer)
    layers[0].base_layer.bias = torch.nn.Parameter(torch.zeros(64), requires_grad=False)
    assert stack(layers) is None  # a bias on some layers only
    layers = qkv_layers(tiny_tokenizer)
    layers[1].base_layer.weight.requires_grad_(True)  # full fine-tuning of that weight
    assert stack(layers) is None
