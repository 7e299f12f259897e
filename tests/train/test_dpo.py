"""Preference fine-tuning (DPO): the loss by hand, pair encoding, training on a tiny Llama, resume,
starting from a supervised adapter, bad input, and the embedded model learning a preference."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from th_support import REPO, chat_example, embedded_home, write_jsonl
from tunehouse.config import TrainConfig
from tunehouse.data.tokenize import IGNORE_INDEX, render
from tunehouse.errors import InvalidFile
from tunehouse.models.tiny import build_model
from tunehouse.train.callbacks import TrainCallbacks
from tunehouse.train.dpo import (
    dpo_loss,
    encode_pair,
    pair_logps,
    preference_accuracy,
    score_pairs,
    sequence_logps,
)
from tunehouse.train.loop import train
from tunehouse.train.model import collate

COLOURS = ["blue", "gold", "gray", "pink", "teal", "lime", "navy", "rose"]


def pref(i: int) -> dict:
    """Preferred "Sure, <colour>" over "Nope <colour>": one byte longer, so an untrained model
    (about -5.5 nats per byte) prefers the other answer; a consistent, learnable preference."""
    w = COLOURS[i % len(COLOURS)]
    return {"input": {"messages": [{"role": "user", "content": f"Colour {i}: {w}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Sure, {w}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Nope {w}"}]}


@pytest.fixture
def pref_files(tmp_path) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "prefs.jsonl", [pref(i) for i in range(24)]),
            write_jsonl(tmp_path / "prefs-valid.jsonl", [pref(100 + i) for i in range(12)]))


def dpo_cfg(model_dir, train_file, out, **kw) -> TrainConfig:
    base = dict(train_file=str(train_file), model=str(model_dir), out=str(out), method="dpo",
                beta=0.5, epochs=3, batch_size=8, learning_rate_multiplier=10.0, seed=7,
                eval_every=3, progress=False)
    return TrainConfig(**{**base, **kw})


# ----- the loss ------------------------------------------------------------------------------
def test_dpo_loss_matches_hand_computed_values():
    pc = torch.tensor([-1.0, -3.0, -2.0], requires_grad=True)
    pr = torch.tensor([-2.0, -1.0, -2.0])
    rc = torch.tensor([-1.5, -2.0, -2.0])
    rr = torch.tensor([-1.5, -2.0, -2.0])
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 0: r_w = 0.1 * 0.5 = 0.05, r_l = 0.1 * -0.5 = -0.05, loss = log(1 + e^-0.1)
    # pair 1: r_w = -0.1, r_l = 0.1, loss = log(1 + e^0.2); pair 2: policy = reference, log 2
    assert torch.allclose(chosen, torch.tensor([0.05, -0.1, 0.0]))
    assert torch.allclose(rejected, torch.tensor([-0.05, 0.1, 0.0]))
    assert torch.allclose(losses, torch.tensor([0.6443966600, 0.7981388693, 0.6931471806]),
                          atol=1e-7)
    losses.sum().backward()
    # d loss / d log pi(y_w) = -beta * sigmoid(-(r_w - r_l)): 0.1 * sigmoid(-0.1), ...
    assert torch.allclose(pc.grad, torch.tensor([-0.0475020813, -0.0549833997, -0.05]),
                          atol=1e-7)
    big, _, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                         torch.tensor([-2.0]), beta=0.5)  # r_w - r_l = 1: log(1 + e^-1)
    assert abs(float(big[0]) - 0.3132616875) < 1e-7


# ----- encoding ------------------------------------------------------------------------------
def test_pair_encoding_masks_prompt_and_keeps_end_of_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = {"input": {"messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "earlier answer"},
                                  {"role": "user", "content": "and now?"}]},
           "preferred_output": [{"role": "assistant", "content": "Sure, now."}],
           "non_preferred_output": [{"role": "assistant", "content": "No."}]}
    p = encode_pair(tok, rec)
    prompt_text = render(tok, rec["input"]["messages"], add_generation_prompt=True)
    assert tok.decode(p.prompt_ids) == prompt_text and prompt_text.endswith("assistant\n")
    assert tok.decode(p.chosen_ids) == "Sure, now.<|im_end|>"
    assert tok.decode(p.rejected_ids) == "No.<|im_end|>"
    (c_ids, c_lab), (r_ids, r_lab) = p.sequences()
    n = len(p.prompt_ids)
    assert c_ids == p.prompt_ids + p.chosen_ids and r_ids == p.prompt_ids + p.rejected_ids
    assert c_lab == [IGNORE_INDEX] * n + p.chosen_ids  # the earlier assistant turn is not trained
    assert r_lab == [IGNORE_INDEX] * n + p.rejected_ids
    assert p.length == 2 * len(c_ids) and p.n_tokens == len(c_ids) + len(r_ids)


def test_too_long_pairs_keep_the_end_of_the_prompt(tiny_tokenizer):
    rec = pref(1)
    rec["input"]["messages"][0]["content"] = "x" * 300 + " last words?"
    p = encode_pair(tiny_tokenizer, rec, max_length=64)
    for ids, _ in p.sequences():
        assert len(ids) <= 64
    assert tiny_tokenizer.decode(p.prompt_ids).endswith("last words?<|im_end|>\n<|im_start|>"
                                                        "assistant\n")
    assert tiny_tokenizer.decode(p.chosen_ids) == "Sure, gold<|im_end|>"


def test_sequence_logps_match_full_logits(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=3)
    pairs = [encode_pair(tiny_tokenizer, pref(i)) for i in (0, 13)]
    pairs[1].chosen_ids = pairs[1].chosen_ids * 3  # uneven lengths: padding must not count
    seqs = [s for p in pairs for s in p.sequences()]
    ids, att, lab = collate(seqs, tiny_tokenizer.pad_token_id)
    ours = sequence_logps(model, ids, att, lab)
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=att).logits[:, :-1].log_softmax(-1)
    tgt = lab[:, 1:]
    mask = tgt != IGNORE_INDEX
    ref = (logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * mask).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-4)
    chosen, rejected = pair_logps(model, pairs, tiny_tokenizer.pad_token_id, "cpu")
    assert torch.allclose(chosen, ref[0::2], atol=1e-4)  # seqs are [c1, r1, c2, r2]
    assert torch.allclose(rejected, ref[1::2], atol=1e-4)


# ----- training on the tiny model ------------------------------------------------------------
def test_dpo_run_learns_the_preference_and_writes_run(tiny_model_dir, pref_files, tmp_path):
    train_file, valid_file = pref_files
    before = preference_accuracy(str(tiny_model_dir), valid_file)
    rows = []
    res = train(dpo_cfg(tiny_model_dir, train_file, tmp_path / "run",
                        validation_file=str(valid_file)), TrainCallbacks(on_metrics=rows.append))
    out = tmp_path / "run"
    after = preference_accuracy(str(out), valid_file)
    assert before < 0.5 and after >= 0.9, (before, after)
    assert res.steps == 9 and rows[0]["train_loss"] == pytest.approx(math.log(2), abs=2e-3)
    assert rows[-1]["train_loss"] < 0.3 and rows[-1]["full_valid_reward_accuracy"] == 1.0
    for key in ("train_reward_accuracy", "train_reward_margin", "train_chosen_reward",
                "train_rejected_reward", "train_chosen_logps", "train_rejected_logps",
                "valid_loss", "valid_reward_accuracy", "full_valid_loss"):
        assert key in rows[-1], key
    assert rows[-1]["train_mean_token_accuracy"] == rows[-1]["train_reward_accuracy"]
    meta = json.loads((out / "tunehouse.json").read_text())
    assert meta["method"] == "dpo" and meta["beta"] == 0.5
    assert meta["base_model"] == str(tiny_model_dir)
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["step", "train_loss", "train_accuracy", "valid_loss",
                              "valid_mean_token_accuracy"] and len(table) == 9
    assert float(table[-1]["train_accuracy"]) == rows[-1]["train_reward_accuracy"]
    assert len(out.joinpath("metrics.jsonl").read_text().splitlines()) == 9


def test_dpo_resume_matches_uninterrupted(tiny_model_dir, pref_files, tmp_path):
    train_file = pref_files[0]
    train(dpo_cfg(tiny_model_dir, train_file, tmp_path / "a", epochs=2, save_every=2), None)
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    res = train(dpo_cfg(tiny_model_dir, train_file, tmp_path / "b", epochs=2, save_every=2),
                TrainCallbacks(should_stop=stop_after_four))
    assert res.interrupted and res.steps == 4
    messages: list[str] = []
    res = train(dpo_cfg(tiny_model_dir, train_file, tmp_path / "b", epochs=2, save_every=2,
                        resume=True), TrainCallbacks(on_message=lambda lvl, m: messages.append(m)))
    assert res.steps == 6 and any("Resumed from checkpoint at step 4" in m for m in messages)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_dpo_from_a_supervised_adapter_uses_it_as_reference(tiny_model_dir, chat_files,
                                                            pref_files, tmp_path):
    from tunehouse.train.dpo_trainer import DpoTrainer

    sft = tmp_path / "sft"
    train(TrainConfig(train_file=str(chat_files[0]), model=str(tiny_model_dir), out=str(sft),
                      epochs=1, batch_size=8, learning_rate_multiplier=20.0, progress=False),
          None)
    tr = DpoTrainer(dpo_cfg(sft, pref_files[0], tmp_path / "dpo").check(), TrainCallbacks())
    pad = tr.tokenizer.pad_token_id
    policy = score_pairs(tr.model, pad, tr.train_set, autocast=tr.autocast)
    with tr.model.disable_adapter():
        base = score_pairs(tr.model, pad, tr.train_set, autocast=tr.autocast)
    refs = [(p.ref_chosen, p.ref_rejected) for p in tr.train_set]
    assert torch.allclose(torch.tensor(refs), torch.tensor(policy), atol=1e-2)
    assert not torch.allclose(torch.tensor(refs), torch.tensor(base), atol=1.0)
    res = tr.run()
    meta = json.loads((tmp_path / "dpo" / "tunehouse.json").read_text())
    assert res.steps == 9 and meta["base_model"] == str(tiny_model_dir)
    assert tr.metrics.rows[0]["train_loss"] == pytest.approx(math.log(2), abs=2e-3)


def test_full_finetune_dpo_needs_no_reference_copy(tiny_model_dir, pref_files, tmp_path):
    rows = []
    train(dpo_cfg(tiny_model_dir, pref_files[0], tmp_path / "full", full=True, max_steps=3,
                  learning_rate_multiplier=50.0), TrainCallbacks(on_metrics=rows.append))
    assert rows[0]["train_loss"] == pytest.approx(math.log(2), abs=2e-3)
    assert rows[-1]["train_reward_margin"] > 0
    assert (tmp_path / "full" / "model.safetensors").is_file()


# ----- bad input -----------------------------------------------------------------------------
def test_wrong_format_for_method_is_one_clear_error(tiny_model_dir, chat_files, pref_files,
                                                   tmp_path):
    with pytest.raises(InvalidFile) as exc:
        train(dpo_cfg(tiny_model_dir, chat_files[0], tmp_path / "a"), None)
    msg = str(exc.value)
    assert str(chat_files[0]) in msg and "--method dpo" in msg and "preferred_output" in msg
    with pytest.raises(InvalidFile) as exc:
        train(dpo_cfg(tiny_model_dir, pref_files[0], tmp_path / "b", method="supervised"), None)
    assert "preference pairs" in str(exc.value) and "--method dpo" in str(exc.value)
    assert "\n" not in msg and "\n" not in str(exc.value)
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_bad_preference_lines_are_reported_line_exact(tiny_model_dir, tmp_path):
    rows = [pref(i) for i in range(12)]
    rows[2]["non_preferred_output"] = rows[2]["preferred_output"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InvalidFile, match=r"bad.jsonl line 3: .*identical"):
        train(dpo_cfg(tiny_model_dir, bad, tmp_path / "c"), None)
    valid = write_jsonl(tmp_path / "chat-valid.jsonl", [chat_example(i) for i in range(4)])
    good = write_jsonl(tmp_path / "good.jsonl", [pref(i) for i in range(12)])
    with pytest.raises(InvalidFile, match="validation file is chat"):
        train(dpo_cfg(tiny_model_dir, good, tmp_path / "d", validation_file=str(valid)), None)


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tunehouse", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_dpo_run_and_wrong_file(tiny_model_dir, pref_files, chat_files, tmp_path, home):
    r = run_cli("train", "--method", "dpo", "--beta", "0.5", "--train", str(pref_files[0]),
                "--validation", str(pref_files[1]), "--model", str(tiny_model_dir), "--epochs",
                "1", "--batch-size", "8", "--learning-rate-multiplier", "10", "--out",
                str(tmp_path / "run"), home=home)
    assert r.returncode == 0, r.stderr
    assert "Done: 3 steps" in r.stdout and "reward accuracy" in r.stdout
    r = run_cli("train", "--method", "dpo", "--train", str(chat_files[0]), "--model",
                str(tiny_model_dir), "--out", str(tmp_path / "bad"), home=home)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--method dpo" in lines[0]


# ----- the embedded model --------------------------------------------------------------------
@pytest.mark.integration
def test_embedded_model_learns_to_prefer_polite_answers(tmp_path, monkeypatch):
    """12 pairs, 2 LoRA steps: held-out preference accuracy goes from ~0.1 to ~1.0."""
    monkeypatch.setenv("TUNEHOUSE_HOME", embedded_home())
    data = REPO / "examples" / "preference-polite"
    train_file = write_jsonl(tmp_path / "train.jsonl",
                             (data / "train.jsonl").read_text().splitlines()[:12])
    heldout = write_jsonl(tmp_path / "heldout.jsonl",
                          (data / "heldout.jsonl").read_text().splitlines()[:10])
    before = preference_accuracy(None, heldout)
    train(TrainConfig(train_file=str(train_file), out=str(tmp_path / "run"), method="dpo",
                      epochs=1, batch_size=6, learning_rate_multiplier=3.0, progress=False), None)
    after = preference_accuracy(str(tmp_path / "run"), heldout)
    assert before <= 0.3 and after >= before + 0.5, (before, after)
