"""The fast loss path must equal the plain reference: HF's own loss with labels."""

import torch

from tunehouse.data.tokenize import encode_chat
from tunehouse.models.tiny import build_model
from tunehouse.train.model import collate, trained_token_loss


def batch(tok):
    convs = [[{"role": "user", "content": "hello " * k}, {"role": "assistant", "content": "ok" * k}]
             for k in (1, 3, 5)]
    encs = [encode_chat(tok, c) for c in convs]
    return collate([(e.input_ids, e.labels) for e in encs], tok.pad_token_id)


def test_loss_and_gradients_match_reference(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=3)
    ids, att, lab = batch(tiny_tokenizer)
    total, n, _ = trained_token_loss(model, ids, att, lab)
    (total / n).backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref = model(input_ids=ids, attention_mask=att, labels=lab).loss
    ref.backward()
    assert torch.allclose(total / n, ref, atol=1e-5)
    for k, p in model.named_parameters():
        assert torch.allclose(ours[k], p.grad, atol=1e-5, rtol=1e-4), k


def test_accuracy_counts_argmax_hits(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=3)
    ids, att, lab = batch(tiny_tokenizer)
    _, n, correct = trained_token_loss(model, ids, att, lab)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    tgt = lab[:, 1:]
    mask = tgt != -100
    assert correct == int((logits.argmax(-1)[mask] == tgt[mask]).sum()) and n == int(mask.sum())
