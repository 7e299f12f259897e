"""Where does a tunehouse training step spend its time and memory?

    python benchmarks/_profile_tunehouse.py --data chats.jsonl --steps 3 [--out DIR]

Two views of the real engine (``tunehouse.train.loop.Trainer``, default model, batch 8):

* ``time``: torch.profiler over ``--steps`` optimiser steps; operators grouped into matmuls,
  attention, element-wise/casts, norms, head + cross-entropy, optimiser, other; self CPU time
  of each group and the top operators.
* ``memory``: the tensors autograd saves for backward during one forward of a real micro-batch
  (``saved_tensors_hooks``), in bytes per token, by dtype, with peft's input casting on and off.
  Saved activations set the peak memory of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import set_threads  # noqa: E402

GROUPS = [  # (group, substrings of operator names), first match wins
    ("attention", ("attention", "sdpa")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("head+cross-entropy", ("log_softmax", "nll_loss", "cross_entropy", "argmax")),
    ("optimizer", ("adam", "_foreach", "clip_grad", "lerp", "addcdiv", "addcmul", "sqrt")),
    ("norms", ("pow", "mean", "rsqrt")),
    ("casts/copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "contiguous")),
    ("element-wise", ("aten::mul", "aten::add", "aten::silu", "aten::sub", "aten::div", "aten::neg",
                      "aten::cat", "aten::sum", "aten::fill_", "aten::zero_", "aten::where")),
    ("embedding/index", ("embedding", "index", "masked", "nonzero", "gather", "scatter")),
]


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def make_trainer(data: str, out: str, steps: int):
    from tunehouse.config import LoraConfig, TrainConfig
    from tunehouse.train.callbacks import TrainCallbacks
    from tunehouse.train.loop import Trainer

    cfg = TrainConfig(train_file=data, out=out, epochs=1, batch_size=8, max_length=1024,
                      lora=LoraConfig(r=16, alpha=32), max_steps=steps, progress=False)
    return Trainer(cfg, TrainCallbacks())


def time_profile(data: str, steps: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(data, str(Path(tmp) / "run"), steps)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = trainer.run()
    groups: dict[str, float] = defaultdict(float)
    ops = []
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        groups[group_of(ev.key)] += us
        ops.append((us, ev.key, ev.count))
    total = sum(groups.values())
    ops.sort(reverse=True)
    return {"steps": result.steps, "trained_tokens": result.trained_tokens, "self_cpu_seconds": total / 1e6,
            "groups": {g: {"seconds": v / 1e6, "share": v / total}
                       for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": k, "seconds": us / 1e6, "share": us / total, "calls": n}
                        for us, k, n in ops[:20]]}


def saved_bytes(forward, tokens: int, autocast, params: set[int]) -> dict:
    """Activation bytes autograd keeps for backward in ``forward()``, by dtype.

    Storages are counted once; the model's own parameters (``params``: storage pointers) are not
    activations and are skipped.
    """
    import torch

    seen: dict[int, tuple[int, str]] = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            if key not in params:
                seen[key] = (t.untyped_storage().nbytes(), str(t.dtype))
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        out = forward()
    del out
    by_dtype: dict[str, int] = defaultdict(int)
    for nbytes, dtype in seen.values():
        by_dtype[dtype] += nbytes
    return {"tokens": tokens, "bytes_per_token": sum(by_dtype.values()) / tokens,
            "by_dtype_per_token": {k: v / tokens for k, v in by_dtype.items()}}


def memory_profile(data: str) -> dict:
    from peft.helpers import disable_input_dtype_casting

    from tunehouse.train.model import causal_lm, collate, trained_token_loss

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(data, str(Path(tmp) / "run"), 1)
        ex = sorted(trainer.train_set, key=lambda e: e.length)[len(trainer.train_set) // 2:][:4]
        ids, att, lab = collate([(e.input_ids, e.labels) for e in ex], trainer.tokenizer.pad_token_id)
        model, n = trainer.model, int(ids.numel())
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def whole():
            return trained_token_loss(model, ids, att, lab)[0]

        def trunk():
            return causal_lm(model).model(input_ids=ids, attention_mask=att).last_hidden_state

        out = {"whole_step_cast_on": saved_bytes(whole, n, trainer.autocast, params),
               "trunk_cast_on": saved_bytes(trunk, n, trainer.autocast, params)}
        with disable_input_dtype_casting(model):
            out["trunk_cast_off"] = saved_bytes(trunk, n, trainer.autocast, params)
        layers = trainer.model.config.num_hidden_layers
        for v in out.values():
            v["bytes_per_token_per_layer"] = v["bytes_per_token"] / layers
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--what", default="memory,time")
    p.add_argument("--result", default=None, help="JSON file for the breakdown")
    args = p.parse_args()
    set_threads()
    res = {}
    if "memory" in args.what:
        res["memory"] = memory_profile(args.data)
    if "time" in args.what:
        res["time"] = time_profile(args.data, args.steps)
    text = json.dumps(res, indent=2)
    if args.result:
        Path(args.result).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
