"""A tiny base model, a LoRA adapter really trained on a learnable task, and its evaluation.

The base is the tiny random-init Llama with its embeddings scaled up: with the default
init (std 0.02) and a tied head the logits stay near-uniform whatever LoRA does, so no
answer could ever be right. Training is a plain PEFT loop (150 steps, ~4 s) that writes
what a tunehouse run writes: adapter, tokenizer, ``tunehouse.json`` naming the base, and a
``metrics.csv`` of the real losses.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

TASK = {"red": "warm", "blue": "cold"}


def task_example(i: int) -> dict:
    """'red N' -> warm, 'blue N' -> cold: a two-label task a tiny model learns in seconds."""
    word = ["red", "blue"][i % 2]
    return {"messages": [{"role": "user", "content": f"{i} {word}"},
                         {"role": "assistant", "content": TASK[word]}]}


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def build_base(directory: Path) -> Path:
    """Tiny Llama (hidden 64) whose tied embeddings are large enough for confident logits."""
    import torch

    from tunehouse.models.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, hidden_size=64, seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def _batch(encs: list, pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in encs)
    ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in encs])
    labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in encs])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                         for e in encs])
    return ids, mask, labels


def train_lora(base: Path, train_rows: list[dict], valid_rows: list[dict], out: Path, *,
               steps: int = 150, lr: float = 3e-3) -> Path:
    """Train a LoRA adapter with PEFT and write a tunehouse-style run directory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunehouse.data.tokenize import encode_chat

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    encs = [encode_chat(tok, r["messages"]) for r in train_rows]
    valid = _batch([encode_chat(tok, r["messages"]) for r in valid_rows], tok.pad_token_id)
    rows = []
    for step in range(1, steps + 1):
        ids, mask, labels = _batch([encs[(step * 8 + k) % len(encs)] for k in range(8)],
                                   tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        row = {"step": step, "train_loss": float(loss.detach()), "valid_loss": ""}
        if step % 10 == 0:
            with torch.no_grad():
                row["valid_loss"] = float(model(input_ids=valid[0], attention_mask=valid[1],
                                                labels=valid[2]).loss)
        rows.append(row)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tunehouse.json").write_text(json.dumps({"base_model": str(base), "method":
                                                    "supervised", "full": False}))
    with (out / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "train_loss", "train_accuracy",
                                                "valid_loss", "valid_mean_token_accuracy"])
        writer.writeheader()
        writer.writerows(rows)
    return out


@dataclass
class EvalRun:
    base: Path
    run: Path
    train: Path
    heldout: Path


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory) -> EvalRun:
    """A base dir, a trained LoRA run dir, its training file and a held-out file."""
    root = tmp_path_factory.mktemp("evalrun")
    train_rows = [task_example(i) for i in range(32)]
    heldout_rows = [task_example(100 + i) for i in range(12)]
    base = build_base(root / "base")
    run = train_lora(base, train_rows, heldout_rows, root / "run")
    return EvalRun(base=base, run=run, train=write_rows(root / "train.jsonl", train_rows),
                   heldout=write_rows(root / "heldout.jsonl", heldout_rows))


@pytest.fixture(scope="session")
def eval_report(eval_run):
    """The three-way evaluation of ``eval_run`` and its written report directory."""
    from tunehouse.eval import evaluate, write_report

    report = evaluate(str(eval_run.run), str(eval_run.heldout), few_shot=2,
                      shots_from=str(eval_run.train), batch_size=8)
    html = write_report(report, eval_run.run / "eval")
    return report, html
