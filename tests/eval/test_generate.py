"""Batched generation and reference loss on a tiny model: padding must not change results."""

from __future__ import annotations

import math

import pytest
import torch

from tunehouse.data.tokenize import IGNORE_INDEX, encode_chat
from tunehouse.eval import generate as gen


@pytest.fixture(scope="module")
def tiny():
    from tunehouse.models.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, hidden_size=64, seed=3)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)  # sharp logits: no near-ties in argmax
    return model.eval(), tok


PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "a much longer question that needs padding in a batch"}],
    [{"role": "user", "content": "medium length prompt"}],
]


def test_batched_generation_matches_one_at_a_time(tiny):
    model, tok = tiny
    batched = gen.generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3)
    single = [gen.generate(model, tok, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert batched[1].prompt_tokens > batched[2].prompt_tokens > batched[0].prompt_tokens
    assert all(1 <= g.completion_tokens <= 6 and g.latency_s > 0 for g in batched)
    assert all("<|im_end|>" not in g.text for g in batched)


def test_stop_ids_include_im_end(tiny):
    _, tok = tiny
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen.stop_token_ids(tok)


def test_reference_loss_scores_only_the_last_answer(tiny):
    model, tok = tiny
    convs = [
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "first answer"},
         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "ref"}],
        [{"role": "user", "content": "short"},
         {"role": "assistant", "content": "a longer reference"}],
    ]
    batched = gen.reference_losses(model, tok, convs, batch_size=2)
    for conv, loss in zip(convs, batched, strict=True):
        # expected: HF's own loss with labels only on the last assistant message
        weighted = [({**m, "weight": 0} if m is not conv[-1] and m["role"] == "assistant" else m)
                    for m in conv]
        enc = encode_chat(tok, weighted)
        ids = torch.tensor([enc.input_ids])
        labels = torch.tensor([enc.labels])
        assert int((labels != IGNORE_INDEX).sum()) == len(conv[-1]["content"]) + 1  # + <|im_end|>
        with torch.no_grad():
            expected = float(model(input_ids=ids, labels=labels).loss)
        assert loss == pytest.approx(expected, rel=1e-4)


def test_reference_loss_nan_when_answer_truncated_away(tiny):
    model, tok = tiny
    long_prompt = "x" * 600  # the tiny model's context is 512 tokens (one per byte)
    losses = gen.reference_losses(model, tok, [[{"role": "user", "content": long_prompt},
                                                {"role": "assistant", "content": "y"}]])
    assert math.isnan(losses[0])


def test_long_prompt_is_left_truncated_to_fit_context(tiny):
    model, tok = tiny
    out = gen.generate(model, tok, [[{"role": "user", "content": "z" * 600}]], max_new_tokens=4)
    assert out[0].truncated_prompt and out[0].prompt_tokens == 512 - 4


def test_default_max_new_tokens(tiny):
    _, tok = tiny  # byte tokenizer: one token per character
    assert gen.default_max_new_tokens(tok, ["abcd"]) == 8  # at least 8
    assert gen.default_max_new_tokens(tok, ["a" * 100, "b" * 20]) == 151  # 1.5 x 100 + 1
    assert gen.default_max_new_tokens(tok, ["a" * 1000]) == gen.MAX_NEW_TOKENS_CAP
