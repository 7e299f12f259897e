"""One tunehouse run of the benchmark job, in its own process (for its peak memory).

    python benchmarks/_tunehouse_run.py --data chats.jsonl --out DIR --result r.json [--steps N]

The job is ``tunehouse.train.loop.train``'s: a ``TrainConfig`` with epochs=1, batch_size=8,
max_length=1024, LoRA r=16 alpha=32 on all linear layers, learning rate "auto" (1e-3 for LoRA),
seed 42. The ``Trainer`` is built first (data validation, tokenisation, model load: not timed),
then ``run()`` is timed from its start to the end of the last optimiser step (reported by the
metrics callback), so the final checkpoint and loss plot are not counted, as TRL's adapter save
is not. ``--profile DIR`` also records a torch.profiler trace of a few steps (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import TreeMemory, cpu_seconds, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default=None, help="base model (default: the embedded one)")
    p.add_argument("--out", required=True, help="tunehouse output directory (the adapter)")
    p.add_argument("--result", required=True, help="JSON file for the measurements")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    args = p.parse_args()
    threads = set_threads()

    from tunehouse.config import LoraConfig, TrainConfig
    from tunehouse.train.callbacks import TrainCallbacks
    from tunehouse.train.loop import Trainer

    cfg = TrainConfig(train_file=args.data, model=args.model, out=args.out, epochs=1,
                      batch_size=args.batch_size, max_length=args.max_length,
                      lora=LoraConfig(r=16, alpha=32), max_steps=args.steps or None, seed=42,
                      progress=False)
    rows: list[dict] = []
    marks: dict[str, float] = {}

    def on_metrics(row: dict) -> None:
        rows.append(row)
        if row["step"] in (1, row["total_steps"]):  # the workers wait: cheap for them
            memory.shared()
        marks["end"], marks["cpu_end"] = time.perf_counter(), cpu_seconds()

    memory = TreeMemory()  # the trainer's worker processes included
    t_load = time.perf_counter()
    trainer = Trainer(cfg, TrainCallbacks(on_metrics=on_metrics))
    load_s = time.perf_counter() - t_load
    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = trainer.run()
    train_s = marks["end"] - start
    rss = memory.peak_mb()
    out = {"variant": "c", "threads": threads, "steps": result.steps,
           "trained_tokens": result.trained_tokens, "train_seconds": train_s,
           "tokens_per_second": result.trained_tokens / train_s,
           "cpu_seconds": marks["cpu_end"] - cpu_start, "peak_rss_mb": rss, "load_seconds": load_s,
           "logged_train_losses": [r["train_loss"] for r in rows], "adapter": args.out,
           "step_seconds": [r["step_seconds"] for r in rows]}
    Path(args.result).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
