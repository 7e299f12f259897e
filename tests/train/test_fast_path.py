"""The training fast path as the loop runs it (bf16 base weights, fp32 LoRA adapters, bf16 autocast,
head on trained tokens only) must stay close to the plain fp32 reference: HF's own loss with labels.

``test_model.py`` checks the trained-token loss exactly in fp32; this checks the precision the
benchmarked engine actually trains in, within bf16 tolerances.
"""

import torch

from tunehouse.config import TrainConfig
from tunehouse.data.tokenize import encode_chat
from tunehouse.models.tiny import build_model
from tunehouse.train.model import (
    autocast_context,
    collate,
    pack,
    packed_token_loss,
    prepare_for_training,
    trained_token_loss,
    wrap_for_training,
)


def batch(tok):
    convs = [[{"role": "user", "content": "tell me " * k}, {"role": "assistant", "content": "sure, " * (2 * k)}]
             for k in (1, 4, 9)]
    encs = [encode_chat(tok, c) for c in convs]
    return collate([(e.input_ids, e.labels) for e in encs], tok.pad_token_id)


def lora_models(tok):
    """The same LoRA model twice: fp32 reference, and bf16 base + fp32 adapters (as the loop loads it)."""
    cfg = TrainConfig(train_file="unused.jsonl")
    ref = wrap_for_training(build_model(tok, hidden_size=64, seed=5), cfg)
    fast = wrap_for_training(build_model(tok, hidden_size=64, seed=5).to(torch.bfloat16), cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero B so every adapter weight gets a gradient
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    fast.load_state_dict({k: v for k, v in ref.state_dict().items() if "lora_" in k}, strict=False)
    return ref, fast


def assert_matches_reference(ref, ref_loss, fast, total, n, lab):
    """The fast path's summed loss over ``n`` trained tokens within 2% of the fp32 reference's
    mean, and every adapter gradient fp32, pointing the same way (cosine > 0.98) and of the same
    size (within 5%)."""
    assert n == int((lab[:, 1:] != -100).sum())
    assert abs(float(total.detach() / n) - float(ref_loss.detach())) < 0.02 * float(ref_loss.detach())
    ref_grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        if not p.requires_grad:
            continue
        g, r = p.grad.flatten(), ref_grads[name].grad.flatten()
        assert p.grad.dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(g, r, dim=0)
        assert cos > 0.98 and abs(g.norm() / r.norm() - 1) < 0.05, (name, float(cos))


def test_bf16_fast_path_matches_fp32_reference(tiny_tokenizer):
    ref, fast = lora_models(tiny_tokenizer)
    assert all(p.dtype == torch.float32 for p in fast.parameters() if p.requires_grad)
    assert fast.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    ids, att, lab = batch(tiny_tokenizer)
    ref_loss = ref(input_ids=ids, attention_mask=att, labels=lab).loss
    ref_loss.backward()
    with autocast_context("bf16", "cpu"):
        total, n, _ = trained_token_loss(fast, ids, att, lab)
    (total / n).backward()
    assert_matches_reference(ref, ref_loss, fast, total, n, lab)


def test_packed_engine_path_matches_fp32_reference(tiny_tokenizer):
    """The same check through everything the loop installs (``prepare_for_training``: varlen
    attention over a packed row, fused LoRA linears, MLPs and norms) and the loop's loss function."""
    ref, fast = lora_models(tiny_tokenizer)
    prepare_for_training(fast)
    ids, att, lab = batch(tiny_tokenizer)
    ref_loss = ref(input_ids=ids, attention_mask=att, labels=lab).loss
    ref_loss.backward()
    rows = [(ids[i][att[i].bool()].tolist(), lab[i][att[i].bool()].tolist()) for i in range(len(ids))]
    with autocast_context("bf16", "cpu"):
        total, n, _ = packed_token_loss(fast, pack(rows))
    (total / n).backward()
    assert_matches_reference(ref, ref_loss, fast, total, n, lab)
