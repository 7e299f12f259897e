"""Run state, checkpoint save/restore and the final output directory for the training loop.

Split from ``loop.py`` so the loop reads as the sequence of steps. A checkpoint holds the
trainable weights (a servable PEFT adapter, or full weights), the tokenizer, AdamW's state as
safetensors + JSON, the torch RNG state and ``trainer_state.json``; resume restores all of it
and skips exactly the batches already seen in the current epoch.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from tunehouse.train import checkpoint as ck
from tunehouse.train.outputs import plot_loss, write_json

if TYPE_CHECKING:
    from tunehouse.train.loop import Trainer

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_config.json", "model.safetensors",
                "config.json", "generation_config.json")


@dataclass
class RunState:
    step: int = 0
    epoch: int = 0  # 0-based epoch in progress
    step_in_epoch: int = 0  # batches of this epoch already done
    trained_tokens: int = 0
    best_loss: float | None = None
    best_step: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    interrupted: bool = False


def run_meta(tr: Trainer) -> dict[str, Any]:
    """``tunehouse.json``: what a serving or evaluation process needs to know about the run."""
    return {
        "base_model": tr.base_name,
        "method": tr.cfg.method,
        "full": tr.cfg.full,
        **({"beta": tr.hp.beta} if tr.cfg.method == "dpo" else {}),  # DPO's KL-penalty strength
        "hyperparameters": tr.hp.to_dict(),
        "lora": None if tr.cfg.full else asdict(tr.cfg.lora),
        "seed": tr.cfg.seed,
        "train_file": tr.cfg.train_file,
        "validation_file": tr.cfg.validation_file,
        "n_train_examples": len(tr.train_set),
        "n_valid_examples": len(tr.valid_set),
        "step": tr.state.step,
        "best_step": tr.state.best_step,
        "trained_tokens": tr.state.trained_tokens,
    }


def _write_weights(tr: Trainer, directory: Path) -> None:
    tr.model.save_pretrained(directory, safe_serialization=True)
    (directory / "README.md").unlink(missing_ok=True)  # peft's empty model card
    tr.tokenizer.save_pretrained(directory)
    write_json(directory / "tunehouse.json", run_meta(tr))


def save_checkpoint(tr: Trainer, *, epoch_end: bool) -> Path:
    """Write a complete checkpoint atomically, prune old ones, then report it."""
    st = tr.state

    def write(tmp: Path) -> None:
        _write_weights(tr, tmp)
        tensors, meta = ck.flatten_optimizer(tr.opt.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))

    size = sum(p.numel() * 4 * 3 for p in tr.model.parameters() if p.requires_grad)
    path = ck.save_atomic(tr.out / "checkpoints", st.step, write,
                          {**asdict(st), "hparams": tr.hp.to_dict()}, min_free_bytes=2 * size)
    protect = {st.best_step} if st.best_step is not None else set()
    ck.prune(tr.out / "checkpoints", tr.cfg.keep_checkpoints, protect)
    if st.best_step is not None:
        write_json(tr.out / "checkpoints" / "best.json", {"step": st.best_step,
                                                          "full_valid_loss": st.best_loss})
    metrics = tr.metrics.rows[-1] if tr.metrics.rows else {"step": st.step}
    tr.cb.on_checkpoint(st.step, str(path), metrics, epoch_end)
    return path


def restore(tr: Trainer) -> None:
    """Load the newest complete checkpoint of ``tr.out`` into the trainer, if there is one."""
    ckpt = ck.latest_valid(tr.out / "checkpoints", lambda m: tr.cb.on_message("warn", m))
    if ckpt is None:
        tr.cb.on_message("info", "No complete checkpoint to resume from; starting fresh.")
        return
    saved = ckpt.state.get("hparams", {})
    if saved.get("batch_size") != tr.hp.batch_size or saved.get("total_steps") != tr.hp.total_steps:
        tr.cb.on_message("warn", "Resuming with different hyperparameters than the checkpoint's.")
    if (ckpt.path / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(tr.model, load_file(str(ckpt.path / "adapter_model.safetensors")))
    else:
        tr.model.load_state_dict(load_file(str(ckpt.path / "model.safetensors")), strict=False)
    tensors = load_file(str(ckpt.path / "optimizer.safetensors"))
    rng = tensors.pop("rng.torch")
    meta = json.loads((ckpt.path / "optimizer.json").read_text())
    tr.opt.load_state_dict(ck.unflatten_optimizer(tensors, meta))
    torch.set_rng_state(rng)
    fields = {k: v for k, v in ckpt.state.items() if k in RunState.__dataclass_fields__}
    tr.state = RunState(**{**fields, "interrupted": False})
    tr.metrics.truncate_after(tr.state.step)
    tr.cb.on_message("info", f"Resumed from checkpoint at step {tr.state.step} "
                     f"(epoch {tr.state.epoch + 1}).")


def finish_run(tr: Trainer) -> None:
    """Write the final output: best (or last) weights, tokenizer, metadata, CSV and loss plot."""
    st = tr.state
    best = tr.out / "checkpoints" / ck.step_dir_name(st.best_step) if st.best_step else None
    tmp = tr.out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    if best is not None and best.is_dir() and st.best_step != st.step:
        shutil.copytree(best, tmp, ignore=shutil.ignore_patterns("optimizer.*", "trainer_state.json",
                                                               ck.MANIFEST))
        tr.cb.on_message("info", f"Final weights are the best checkpoint's (step {st.best_step}).")
    else:
        _write_weights(tr, tmp)
    meta = run_meta(tr) | {"weights_from_step": st.best_step if best is not None and
                           best.is_dir() else st.step}
    write_json(tmp / "tunehouse.json", meta)
    for f in tmp.iterdir():
        os.replace(f, tr.out / f.name)
    tmp.rmdir()
    tr.metrics.write_csv(tr.out)
    plot_loss(tr.metrics.rows, tr.out / "loss.png", title=f"{tr.base_name}: fine-tuning loss")
