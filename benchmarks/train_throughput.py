"""Training speed: the same LoRA SFT job with TRL (defaults), TRL (tuned) and tunehouse.

    make bench                                           # everything, 160 examples (~30-60 min on 2 cores)
    .venv/bin/python benchmarks/train_throughput.py --examples 16 --steps 2     # smoke run
    .venv/bin/python benchmarks/train_throughput.py --only c --examples 40      # tunehouse only

The job: default embedded model (SmolLM2-135M-Instruct), LoRA r=16 alpha=32 on all linear
layers, learning rate 1e-3 with one schedule, 1 epoch, batch 8, max length 1024, on a generated
long-tailed chat data set (``_bench_data.py``; fixed seed, nothing downloaded). Runs:

  (a) TRL SFTTrainer + peft at its defaults            (``_trl_run.py --variant a``)
  (b) TRL at the settings a knowledgeable CPU user picks (``_trl_run.py --variant b``)
  (c) tunehouse ``train``                               (``_tunehouse_run.py``)

Each run is its own process with torch threads = cores; it reports trained (non-padding)
tokens / wall time of its training loop (model load excluded), its CPU time and its peak
resident memory (``ru_maxrss``; for tunehouse, its worker processes' own pages added:
``_bench_data.TreeMemory``). Afterwards one evaluator (``_bench_eval.py loss``) scores every
adapter on the same assistant tokens, and the bf16 matmul ceiling is measured at the model's
shapes (``_bench_eval.py ceiling``). Results: a markdown table on stdout and a JSON file in
``benchmarks/results/``. Timings are only meaningful on an otherwise idle machine: the load
average before and after every run is recorded next to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import machine, make_dataset, pytorch_cache_defaults, token_stats, write_jsonl  # noqa: E402

RUNS = {
    "a": ("TRL defaults", "SFTTrainer + peft defaults: fp32 weights, bf16 autocast, gradient checkpointing, "
                          "padded random batches, loss on all tokens"),
    "b": ("TRL tuned", "bf16 base weights, no gradient checkpointing, assistant-only loss, "
                       "length-grouped batches (or padding-free)"),
    "c": ("tunehouse", "tunehouse train: bf16 base, random batches packed padding-free with per-example "
                      "attention, trained-token-only head"),
}


def run_step(name: str, cmd: list[str], log: Path, timeout: float) -> dict | None:
    """Run one measurement process; return its JSON result, or None (its log tail is printed)."""
    result = log.with_suffix(".json")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd + ["--result", str(result)], stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout, env=os.environ.copy()).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    elapsed = time.perf_counter() - t0
    if rc != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"  {name}: FAILED ({rc}) after {elapsed:.0f}s; log {log}:\n    " + "\n    ".join(tail))
        return None
    out = json.loads(result.read_text())
    out.update(process_seconds=elapsed, load_before=load_before, load_after=os.getloadavg()[0])
    print(f"  {name}: done in {elapsed:.0f}s (load {load_before:.1f} -> {out['load_after']:.1f})", flush=True)
    return out


def summarise(res: dict) -> dict:
    """Ratios of tunehouse to the TRL runs and the fraction of the matmul ceiling reached."""
    runs, losses = res["runs"], res.get("eval", {})
    for key, run in runs.items():
        if key in losses:
            run["eval_loss"] = losses[key]["loss"]
            run["eval_accuracy"] = losses[key]["accuracy"]
    s: dict = {}
    c = runs.get("c")
    for ref in ("a", "b"):
        r = runs.get(ref)
        if c and r:
            s[f"speed_c_over_{ref}"] = c["tokens_per_second"] / r["tokens_per_second"]
            s[f"memory_c_over_{ref}"] = c["peak_rss_mb"] / r["peak_rss_mb"]
            if "eval_loss" in c and "eval_loss" in r:
                s[f"loss_c_minus_{ref}"] = c["eval_loss"] - r["eval_loss"]
    ceil = res.get("ceiling", {}).get("bf16")
    if ceil:
        for run in runs.values():
            run["fraction_of_bf16_ceiling"] = run["tokens_per_second"] / ceil["tokens_per_second"]
    res["summary"] = s
    return res


def table(res: dict) -> str:
    m, ds = res["machine"], res["data"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['memory_gb']} GB, "
             f"torch {m['torch']}; load average at start {m['load_average'][0]:.1f}.",
             f"Data: {ds['examples']} chats, {ds['tokens']} tokens ({ds['assistant_fraction']:.0%} assistant), "
             f"mean {ds['mean_length']:.0f}, median {ds['median_length']}, max {ds['max_length']} tokens, "
             f"{ds['multi_turn']} multi-turn; random batches of 8 would be "
             f"{ds['padding_fraction_random_batches_of_8']:.0%} padding.", "",
             "| run | trained tok/s | vs (a) | vs (b) | peak RSS | loss (assistant tokens) | cores busy "
             "| tok per CPU-s | steps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    runs = res["runs"]
    for key, run in runs.items():
        va = run["tokens_per_second"] / runs["a"]["tokens_per_second"] if "a" in runs else None
        vb = run["tokens_per_second"] / runs["b"]["tokens_per_second"] if "b" in runs else None
        loss = f"{run['eval_loss']:.4f}" if "eval_loss" in run else "-"
        lines.append(f"| ({key}) {RUNS[key][0]} | {run['tokens_per_second']:.1f} | "
                     f"{f'{va:.2f}x' if va else '-'} | {f'{vb:.2f}x' if vb else '-'} | "
                     f"{run['peak_rss_mb'] / 1024:.2f} GB | {loss} | "
                     f"{run['cpu_seconds'] / run['train_seconds']:.2f} | "
                     f"{run['trained_tokens'] / run['cpu_seconds']:.1f} | {run['steps']} |")
    if "base" in res.get("eval", {}):
        lines.append(f"| untrained base | | | | | {res['eval']['base']['loss']:.4f} | | | |")
    ceil = res.get("ceiling")
    if ceil:
        lines += ["", f"bf16 matmul ceiling: {ceil['bf16']['flops_per_second'] / 1e9:.0f} GFLOP/s measured at "
                  f"the model's shapes = {ceil['bf16']['tokens_per_second']:.0f} trained tok/s at "
                  f"{ceil['flops_per_token'] / 1e9:.3f} GFLOP/token ({ceil['formula']}; fp32: "
                  f"{ceil['fp32']['flops_per_second'] / 1e9:.0f} GFLOP/s)."]
        if "c" in runs:
            lines.append(f"tunehouse reaches {runs['c']['fraction_of_bf16_ceiling']:.1%} of it.")
    lines += ["", "cores busy = CPU seconds / wall seconds of the training loop: below the core count, "
              "the run shared the machine (its wall-clock figures are then pessimistic; tok per CPU-s is "
              "less sensitive to that)."]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Training throughput: TRL defaults vs TRL tuned vs tunehouse.")
    p.add_argument("--examples", type=int, default=160, help="generated chats (default 160)")
    p.add_argument("--steps", type=int, default=0, help="stop each run after N optimiser steps (0: 1 epoch)")
    p.add_argument("--only", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument("--out", default=None, help="JSON result path (default benchmarks/results/"
                   "train_throughput-<date>.json)")
    p.add_argument("--seed", type=int, default=1234, help="data set seed")
    p.add_argument("--b-batching", choices=["grouped", "padding_free"], default="grouped",
                   help="TRL tuned: length-grouped padded batches, or padding-free rows")
    p.add_argument("--no-eval", action="store_true", help="skip the shared loss evaluation")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run")
    p.add_argument("--workdir", default=None, help="keep data, adapters and logs here")
    p.add_argument("--report", default=None, help="print the table of an existing results JSON and exit")
    args = p.parse_args()
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.only or any(x not in RUNS for x in args.only):
        p.error(f"--only takes a comma-separated subset of a,b,c; got {','.join(args.only)!r}")
    if args.examples < 10:
        p.error("--examples must be at least 10 (tunehouse, like OpenAI, refuses smaller training files)")
    return args


def main() -> None:
    args = parse_args()
    if args.report:
        print(table(summarise(json.loads(Path(args.report).read_text()))))
        return
    from tunehouse import models

    pytorch_cache_defaults()  # the TRL runs as their users have them; tunehouse sets its own
    source = models.resolve(None)
    tok = models.load_tokenizer(source)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tunehouse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = make_dataset(args.examples, tok, seed=args.seed)
    data = write_jsonl(rows, work / "train.jsonl")
    res: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                 "data": token_stats(rows, tok), "model": source.name,
                 "job": {"lora_r": 16, "lora_alpha": 32, "target_modules": "all-linear", "epochs": 1,
                         "batch_size": 8, "max_length": 1024, "learning_rate": 1e-3,
                         "schedule": "5% linear warm-up, linear decay to 10%", "max_steps": args.steps or None,
                         "seed": args.seed, "b_batching": args.b_batching},
                 "runs": {}, "workdir": str(work)}
    print(table_header(res), flush=True)
    py = [sys.executable]
    steps = ["--steps", str(args.steps)]
    ceil = run_step("bf16 matmul ceiling", py + [str(HERE / "_bench_eval.py"), "ceiling", "--model", source.path,
                    "--trained-fraction", str(res["data"]["assistant_fraction"])], work / "ceiling.log", 900)
    if ceil:
        res["ceiling"] = ceil
    for key in args.only:
        out = str(work / f"adapter-{key}")
        if key == "c":
            cmd = py + [str(HERE / "_tunehouse_run.py"), "--data", str(data), "--out", out] + steps
        else:
            cmd = py + [str(HERE / "_trl_run.py"), "--variant", key, "--data", str(data), "--model", source.path,
                        "--out", out, "--b-batching", args.b_batching] + steps
        run = run_step(f"({key}) {RUNS[key][0]}", cmd, work / f"run-{key}.log", args.timeout)
        if run:
            run["settings"] = RUNS[key][1]
            res["runs"][key] = run
    if res["runs"] and not args.no_eval:
        adapters = [f"{k}={r['adapter']}" for k, r in res["runs"].items()]
        cmd = py + [str(HERE / "_bench_eval.py"), "loss", "--data", str(data)]
        ev = run_step("shared loss evaluation", cmd + [x for a in adapters for x in ("--adapter", a)],
                      work / "eval.log", args.timeout)
        if ev:
            res["eval"] = {k: v for k, v in ev.items() if isinstance(v, dict)}
    summarise(res)
    res["machine"]["load_average_end"] = list(os.getloadavg())
    out = Path(args.out or HERE / "results" / f"train_throughput-{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    if res["runs"]:
        print("\n" + table(res))
    print(f"\nResults: {out}\nWork directory (data, adapters, logs): {work}")


def table_header(res: dict) -> str:
    m, d = res["machine"], res["data"]
    return (f"Training throughput on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, load "
            f"{m['load_average'][0]:.1f}): {d['examples']} chats, {d['tokens']} tokens.")


if __name__ == "__main__":
    main()
