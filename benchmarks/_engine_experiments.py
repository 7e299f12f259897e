"""Measured candidates for a faster tunehouse engine, applied from outside ``src/tunehouse/train``.

    python benchmarks/_engine_experiments.py --data chats.jsonl --steps 4 [--only 0,1,2,3,4]

Each level adds one change to the previous one and runs ``--steps`` real optimiser steps of
``tunehouse.train.loop.Trainer`` in its own process (its peak memory is its own); the first step
(oneDNN warm-up) is not timed. Levels:

  0  the committed engine
  1  micro-batch token budget 8192 -> 2048 padded tokens (memory; less padding)
  2  + peft's LoRA input casting off (no fp32 copy + bf16 re-cast of every LoRA input)
  3  + fused AdamW, flush denormals
  4  + padding-free micro-batches: examples packed into one row, position ids restarting per
       example, attention run per example (SDPA ``is_causal``, GQA in-kernel) via a registered
       attention function: no padding, no mask, no cross-example attention
  5  + fused LoRA linear: one autograd function per adapted layer computing
       ``addmm(x @ W.T, x @ A.T, (s*B).T)`` and, backward, ``addmm(dY @ W, dY @ (s*B), A)``: no
       input casts, no separate scaling multiply or residual add, only ``x`` and ``x @ A.T`` saved
  6  + torch.compile of each decoder layer (inductor, dynamic shapes)

This is a benchmark-side prototype: the proposed engine diffs are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import cpu_seconds, peak_rss_mb, set_threads  # noqa: E402

PACKED_BUDGET = 2048  # real tokens per packed micro-batch (level 4+)


def sdpa_varlen(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention per packed example: ``cu_seq_lens_q`` bounds, causal SDPA, no mask, GQA in-kernel."""
    import torch
    import torch.nn.functional as F

    bounds = kwargs["cu_seq_lens_q"].tolist()
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                           scale=scaling, enable_gqa=True)
            for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _lora_fn():
    import torch

    class LoraLinear(torch.autograd.Function):
        """y = x W^T + s (x A^T) B^T in the input's dtype; gradients for A and B in their own dtype."""

        @staticmethod
        def forward(ctx, x, w, a, b, scale):
            x2 = x.reshape(-1, x.shape[-1])
            a16, sb16 = a.to(x.dtype), (b * scale).to(x.dtype)
            h = x2 @ a16.t()
            y = torch.addmm(x2 @ w.t(), h, sb16.t())
            ctx.save_for_backward(x2, h, w, a16, sb16)
            ctx.scale, ctx.shape = scale, x.shape
            return y.view(*x.shape[:-1], w.shape[0])

        @staticmethod
        def backward(ctx, gy):
            x2, h, w, a16, sb16 = ctx.saved_tensors
            g = gy.reshape(-1, gy.shape[-1]).to(x2.dtype)
            gh = g @ sb16
            gx = torch.addmm(g @ w, gh, a16)
            ga = (gh.t() @ x2).float()
            gb = (g.t() @ h).float() * ctx.scale
            return gx.view(ctx.shape), None, ga, gb, None

    return LoraLinear


def fuse_lora(model) -> int:
    """Route every single-adapter, bias-free peft ``lora.Linear`` through ``LoraLinear``."""
    import types

    from peft.tuners.lora.layer import Linear

    fn = _lora_fn()

    def forward(self, x, *args, **kwargs):
        names = self.active_adapters
        if self.disable_adapters or self.merged or len(names) != 1 or self.base_layer.bias is not None:
            return self._unfused_forward(x, *args, **kwargs)
        n = names[0]
        return fn.apply(x, self.base_layer.weight, self.lora_A[n].weight, self.lora_B[n].weight, self.scaling[n])

    count = 0
    for m in model.modules():
        if isinstance(m, Linear):
            m._unfused_forward = m.forward
            m.forward = types.MethodType(forward, m)
            count += 1
    return count


def register_varlen(model) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register("sdpa_varlen", sdpa_varlen)
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_varlen", flash_attention_mask)
    model.set_attn_implementation("sdpa_varlen")


def packed_groups(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    out: list[list[int]] = [[]]
    for i in sorted(indices, key=lambda j: lengths[j]):
        if out[-1] and sum(lengths[j] for j in out[-1]) + lengths[i] > budget:
            out.append([])
        out[-1].append(i)
    return out


def packed_batch(examples):
    """One row: ids, labels (first token of each example never a target), position ids, bounds."""
    import torch

    ids, labels, pos, cu = [], [], [], [0]
    for e in examples:
        ids += e.input_ids
        labels += [-100] + e.labels[1:]
        pos += list(range(e.length))
        cu.append(cu[-1] + e.length)
    t = lambda x: torch.tensor([x])  # noqa: E731
    return t(ids), t(labels), t(pos), torch.tensor(cu, dtype=torch.int32)


def packed_loss(model, ids, labels, pos, cu):
    """``trained_token_loss`` for a packed row (the head on trained tokens only, in chunks)."""
    import torch
    import torch.nn.functional as F

    from tunehouse.train.model import HEAD_CHUNK, causal_lm

    lm = causal_lm(model)
    longest = int((cu[1:] - cu[:-1]).max())
    hidden = lm.model(input_ids=ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                      max_length_q=longest, max_length_k=longest).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    h, y = hidden[:, :-1][mask], targets[mask]
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, int(y.numel()), HEAD_CHUNK):
        logits = lm.lm_head(h[s:s + HEAD_CHUNK]).float()
        total = total + F.cross_entropy(logits, y[s:s + HEAD_CHUNK], reduction="sum")
    return total


def experimental_trainer(level: int, cfg):
    import torch

    from tunehouse.train import loop
    from tunehouse.train.callbacks import TrainCallbacks
    from tunehouse.train.model import causal_lm

    if level >= 1:
        loop.TOKEN_BUDGET = 2048
    if level >= 3:
        torch.set_flush_denormal(True)

    class Experimental(loop.Trainer):
        def _step(self, batch):
            if level < 4:
                return super()._step(batch)
            t0 = time.perf_counter()
            lr = loop.lr_at(self.state.step, self.hp.total_steps, self.hp.learning_rate, self.cfg.warmup_ratio)
            for g in self.opt.param_groups:
                g["lr"] = lr
            n_targets = sum(self.train_set[i].n_targets for i in batch)
            lengths = [e.length for e in self.train_set]
            loss_sum, tokens = 0.0, 0
            for grp in packed_groups(batch, lengths, max(PACKED_BUDGET, max(lengths[i] for i in batch))):
                ids, lab, pos, cu = packed_batch([self.train_set[i] for i in grp])
                with self.autocast():
                    loss = packed_loss(self.model, ids, lab, pos, cu)
                (loss / n_targets).backward()
                loss_sum, tokens = loss_sum + float(loss.detach()), tokens + int(ids.numel())
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.state.step += 1
            self.state.trained_tokens += tokens
            dt = time.perf_counter() - t0
            return {"step": self.state.step, "train_loss": loss_sum / n_targets, "tokens": tokens,
                    "trained_tokens": self.state.trained_tokens, "step_seconds": dt}

    rows: list[dict] = []
    tr = Experimental(cfg, TrainCallbacks(on_metrics=lambda r: rows.append({**r, "cpu": cpu_seconds()})))
    if level >= 2:
        for m in tr.model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False
    if level >= 3:
        params = [p for p in tr.model.parameters() if p.requires_grad]
        tr.opt = torch.optim.AdamW(params, lr=tr.hp.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    if level >= 4:
        register_varlen(tr.model)
    if level >= 5:
        fuse_lora(tr.model)
    if level >= 6:
        for layer in causal_lm(tr.model).model.layers:
            layer.compile(dynamic=True)
    return tr, rows


def run_level(level: int, data: str, steps: int) -> dict:
    from tunehouse.config import LoraConfig, TrainConfig

    set_threads()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(train_file=data, out=str(Path(tmp) / "run"), epochs=1, batch_size=8, max_length=1024,
                          lora=LoraConfig(r=16, alpha=32), max_steps=steps, progress=False, save_every=10_000)
        tr, rows = experimental_trainer(level, cfg)
        start_cpu, start = cpu_seconds(), time.perf_counter()
        tr.run()
    timed = rows[1:]
    wall = sum(r["step_seconds"] for r in timed)
    cpu = rows[-1]["cpu"] - rows[0]["cpu"]
    tokens = sum(r["tokens"] for r in timed)
    return {"level": level, "steps_timed": len(timed), "tokens": tokens, "wall_seconds": wall,
            "tokens_per_second": tokens / wall, "tokens_per_cpu_second": tokens / cpu,
            "first_step_seconds": rows[0]["step_seconds"], "losses": [r["train_loss"] for r in rows],
            "peak_rss_mb": peak_rss_mb(), "total_seconds": time.perf_counter() - start,
            "total_cpu": cpu_seconds() - start_cpu, "load": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--only", default="0,1,2,3,4")
    p.add_argument("--level", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None)
    args = p.parse_args()
    if args.level is not None:
        print(json.dumps(run_level(args.level, args.data, args.steps)))
        return
    results = []
    for level in [int(x) for x in args.only.split(",")]:
        proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--steps", str(args.steps),
                               "--level", str(level)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"level {level} failed:\n{proc.stderr[-3000:]}", flush=True)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
    if args.result:
        Path(args.result).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
