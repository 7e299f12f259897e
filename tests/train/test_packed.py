"""Packed, padding-free micro-batches must give the same loss and gradients as padded batches.

The packed path (``train.model.pack`` + ``packed_token_loss`` + ``train.attention``) runs
several examples in one row with restarting position ids; any attention across examples, a
wrong boundary label or a wrong rotary position shows up as a loss or gradient difference.
"""

import torch

from tunehouse.config import TrainConfig
from tunehouse.data.tokenize import encode_chat
from tunehouse.models.tiny import build_model
from tunehouse.train.attention import use_varlen
from tunehouse.train.model import causal_lm, collate, pack, packed_token_loss, trained_token_loss, wrap_for_training


def examples(tok):
    convs = [[{"role": "user", "content": "tell me " * k}, {"role": "assistant", "content": f"sure {k}, " * (2 * k)}]
             for k in (1, 4, 9, 2)]
    encs = [encode_chat(tok, c) for c in convs]
    return [(e.input_ids, e.labels) for e in encs]


def lora_model(tok):
    model = wrap_for_training(build_model(tok, hidden_size=64, seed=3), TrainConfig(train_file="unused.jsonl"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_packed_loss_and_gradients_equal_padded(tiny_tokenizer):
    exs = examples(tiny_tokenizer)
    model = lora_model(tiny_tokenizer)
    ids, att, lab = collate(exs, tiny_tokenizer.pad_token_id)
    ref, n_ref, c_ref = trained_token_loss(model, ids, att, lab)
    ref.backward()
    ref_grads = grads(model)
    model.zero_grad()

    use_varlen(causal_lm(model))
    packed = pack(exs)
    assert packed.tokens == int(att.sum()) and packed.cu_seq_lens.tolist()[-1] == packed.tokens
    loss, n, c = packed_token_loss(model, packed)
    loss.backward()
    assert (n, c) == (n_ref, c_ref)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-5)
    for name, g in grads(model).items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_packed_examples_do_not_see_each_other(tiny_tokenizer):
    """Changing one example's tokens leaves the other examples' losses unchanged."""
    exs = examples(tiny_tokenizer)
    model = lora_model(tiny_tokenizer).eval()
    use_varlen(causal_lm(model))
    with torch.no_grad():
        alone, _, _ = packed_token_loss(model, pack(exs[1:2]))
        first = pack(exs[:2])
        other = pack([([(t * 7 + 3) % 200 for t in exs[0][0]], exs[0][1]), exs[1]])
        hid_a = causal_lm(model).model(input_ids=first.input_ids, position_ids=first.position_ids,
                                       cu_seq_lens_q=first.cu_seq_lens, cu_seq_lens_k=first.cu_seq_lens)
        hid_b = causal_lm(model).model(input_ids=other.input_ids, position_ids=other.position_ids,
                                       cu_seq_lens_q=other.cu_seq_lens, cu_seq_lens_k=other.cu_seq_lens)
    start = int(first.cu_seq_lens[1])
    assert torch.allclose(hid_a.last_hidden_state[0, start:], hid_b.last_hidden_state[0, start:], atol=1e-6)
    assert not torch.allclose(hid_a.last_hidden_state[0, :start], hid_b.last_hidden_state[0, :start])
    assert alone.item() > 0


def test_padded_calls_still_work_after_switching(tiny_tokenizer):
    """Generation and padded (DPO, evaluation) calls fall back to masked SDPA with the same result."""
    exs = examples(tiny_tokenizer)
    model = lora_model(tiny_tokenizer).eval()
    ids, att, lab = collate(exs, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        before = trained_token_loss(model, ids, att, lab)[0]
        use_varlen(causal_lm(model))
        after = trained_token_loss(model, ids, att, lab)[0]
    assert torch.allclose(before, after, rtol=1e-5)
