"""The training loop on a tiny random-init Llama: outputs, learning, checkpoints and resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from tunehouse.config import TrainConfig
from tunehouse.errors import InvalidFile, InvalidRequest
from tunehouse.train.callbacks import TrainCallbacks
from tunehouse.train.loop import train


def cfg_for(model_dir, train_file, out, **kw) -> TrainConfig:
    base = dict(train_file=str(train_file), model=str(model_dir), out=str(out), epochs=2,
                batch_size=4, progress=False, seed=7, learning_rate_multiplier=5.0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_writes_run_and_learns(tiny_model_dir, chat_files, tmp_path):
    train_file, valid_file = chat_files
    rows, ckpts = [], []
    cb = TrainCallbacks(on_metrics=rows.append, on_checkpoint=lambda s, p, m, e: ckpts.append(s))
    res = train(cfg_for(tiny_model_dir, train_file, tmp_path / "run", epochs=3,
                        validation_file=str(valid_file)), cb)
    out = tmp_path / "run"
    assert res.steps == res.total_steps == 18 and not res.interrupted
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                 "tunehouse.json", "metrics.csv", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "tunehouse.json").read_text())
    assert meta["base_model"] == str(tiny_model_dir) and meta["hyperparameters"]["n_epochs"] == 3
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["step", "train_loss", "train_accuracy", "valid_loss",
                              "valid_mean_token_accuracy"]
    assert len(table) == 18
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert [r["step"] for r in rows if "full_valid_loss" in r] == [6, 12, 18]
    assert ckpts == [6, 12, 18] and res.best_step in (6, 12, 18)
    assert len(list((out / "checkpoints").glob("step-*"))) == 3


def test_every_trainable_parameter_changes(tiny_model_dir, chat_files, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, chat_files[0], out, epochs=1, save_every=1, keep_checkpoints=10),
          None)
    first = load_file(str(out / "checkpoints" / "step-000001" / "adapter_model.safetensors"))
    final = load_file(str(out / "adapter_model.safetensors"))
    assert set(first) == set(final) and len(final) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    for k, v in final.items():
        if "lora_B" in k:  # initialised to zero by LoRA
            assert (v.abs().sum(dim=1) > 0).all(), k
        assert not torch.equal(v, first[k]), k


def test_full_finetune_changes_all_weights(tiny_model_dir, chat_files, tmp_path):
    train(cfg_for(tiny_model_dir, chat_files[0], tmp_path / "full", epochs=1, full=True,
                  learning_rate_multiplier=50.0), None)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert set(after) == set(before)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_interrupt_then_resume_matches_uninterrupted(tiny_model_dir, chat_files, tmp_path):
    train_file = chat_files[0]
    train(cfg_for(tiny_model_dir, train_file, tmp_path / "a", save_every=2), None)
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    res = train(cfg_for(tiny_model_dir, train_file, tmp_path / "b", save_every=2),
                TrainCallbacks(should_stop=stop_after_three))
    assert res.interrupted and res.steps == 3
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()
    messages = []
    res = train(cfg_for(tiny_model_dir, train_file, tmp_path / "b", save_every=2, resume=True),
                TrainCallbacks(on_message=lambda lvl, m: messages.append(m)))
    assert res.steps == 12 and any("Resumed from checkpoint at step 3" in m for m in messages)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_resume_uses_previous_checkpoint_when_last_is_corrupt(tiny_model_dir, chat_files, tmp_path):
    out = tmp_path / "c"
    train(cfg_for(tiny_model_dir, chat_files[0], out, save_every=2, max_steps=4), None)
    last = out / "checkpoints" / "step-000004" / "adapter_model.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    messages = []
    res = train(cfg_for(tiny_model_dir, chat_files[0], out, save_every=2, max_steps=6, resume=True),
                TrainCallbacks(on_message=lambda lvl, m: messages.append(m)))
    assert res.steps == 6
    assert any("Skipping checkpoint step-000004" in m for m in messages)
    assert any("Resumed from checkpoint at step 2" in m for m in messages)


def test_refuses_to_overwrite_a_run(tiny_model_dir, chat_files, tmp_path):
    train(cfg_for(tiny_model_dir, chat_files[0], tmp_path / "d", max_steps=1), None)
    with pytest.raises(InvalidRequest, match="--resume"):
        train(cfg_for(tiny_model_dir, chat_files[0], tmp_path / "d", max_steps=1), None)


def test_bad_data_is_refused_before_training(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                           for _ in range(12)))
    with pytest.raises(InvalidFile) as exc:
        train(cfg_for(tiny_model_dir, bad, tmp_path / "e"), None)
    assert "line 1" in str(exc.value)
    assert not (tmp_path / "e" / "checkpoints").exists()


def test_early_stopping_and_best_checkpoint(tiny_model_dir, chat_files, tmp_path):
    train_file, valid_file = chat_files
    res = train(cfg_for(tiny_model_dir, train_file, tmp_path / "f", epochs=6, patience=1,
                        learning_rate_multiplier=200.0, validation_file=str(valid_file)), None)
    meta = json.loads((tmp_path / "f" / "tunehouse.json").read_text())
    assert meta["best_step"] == res.best_step
    best = json.loads((tmp_path / "f" / "checkpoints" / "best.json").read_text())
    assert best["step"] == res.best_step
    assert (tmp_path / "f" / "checkpoints" / f"step-{res.best_step:06d}").is_dir()
    if res.stopped_early:
        assert res.steps < res.total_steps
