"""Truth tests on the real embedded model (SmolLM2-135M-Instruct): training helps, for real."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from th_support import REPO, embedded_home

pytestmark = pytest.mark.integration
DATA = REPO / "examples" / "ticket-triage"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    os.environ["TUNEHOUSE_HOME"] = embedded_home()
    from tunehouse.config import TrainConfig
    from tunehouse.train.loop import train

    out = tmp_path_factory.mktemp("smol") / "run"
    cfg = TrainConfig(train_file=str(DATA / "train.jsonl"), out=str(out), batch_size=8,
                      max_steps=8, epochs=1, save_every=4, progress=False)
    return train(cfg), out


def heldout_loss(model, tok) -> float:
    from tunehouse.data.tokenize import encode_chat
    from tunehouse.train.data import read_records
    from tunehouse.train.model import collate, trained_token_loss

    recs = read_records(str(DATA / "heldout.jsonl"))[:24]
    encs = [encode_chat(tok, r["messages"]) for r in recs]
    ids, att, lab = collate([(e.input_ids, e.labels) for e in encs], tok.pad_token_id)
    with torch.no_grad():
        total, n, _ = trained_token_loss(model, ids, att, lab)
    return float(total) / n


def test_short_run_lowers_heldout_loss_and_changes_outputs(trained_run):
    from tunehouse import models

    result, out = trained_run
    assert result.steps == 8
    base_src = models.resolve(None)
    tok = models.load_tokenizer(base_src)
    base = models.load_model(base_src).eval()
    tuned = models.load_model(models.resolve(str(out)), merge_adapter=True).eval()
    before, after = heldout_loss(base, tok), heldout_loss(tuned, tok)
    assert after < 0.7 * before, (before, after)

    from tunehouse.data.tokenize import encode_prompt
    from tunehouse.train.data import read_records

    msgs = read_records(str(DATA / "heldout.jsonl"))[0]["messages"][:-1]
    ids = torch.tensor([encode_prompt(tok, msgs)])
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        a = tok.decode(base.generate(ids, **kw)[0, ids.shape[1]:], skip_special_tokens=True)
        b = tok.decode(tuned.generate(ids, **kw)[0, ids.shape[1]:], skip_special_tokens=True)
    assert a != b and b.strip().startswith('{"category"'), (a, b)


def test_every_trainable_parameter_changed(trained_run):
    _, out = trained_run
    first = load_file(str(out / "checkpoints" / "step-000004" / "adapter_model.safetensors"))
    final = load_file(str(out / "adapter_model.safetensors"))
    assert len(final) == 30 * 7 * 2  # 30 layers x 7 linear layers x (A, B)
    for k, v in final.items():
        assert not torch.equal(v, first[k]), k
        if "lora_B" in k:
            assert v.abs().sum() > 0, k
