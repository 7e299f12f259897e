"""Serving speed: chat completions through ``tunehouse serve`` vs ``generate`` on a merged model.

    .venv/bin/python benchmarks/serve_throughput.py                  # full run (~6 min on 2 cores)
    .venv/bin/python benchmarks/serve_throughput.py --quick          # smoke run, a few minutes
    .venv/bin/python benchmarks/serve_throughput.py --workdir /tmp/sb # keep (and reuse) the adapters
    .venv/bin/python benchmarks/serve_throughput.py --threads 1      # on a machine shared with other work

1. **Two fine-tuned models, made through the real API**: a ``tunehouse serve`` process (own
   ``$TUNEHOUSE_HOME`` in the work directory, the embedded base linked in) gets two small
   generated chat files (10 chats each, different answer styles) uploaded with the OpenAI SDK
   and one fine-tuning job per file (1 epoch, batch 5: two optimiser steps, real LoRA r=16 on
   all linear layers). Their ``ft:`` models are real PEFT adapter directories.
2. **Serving**: a fresh ``tunehouse serve --workers 0`` on the same home; the real ``openai``
   SDK streams chat completions (``temperature=0``, fixed ``max_tokens``, ``include_usage``):
   - batch 1: requests one after another, alternating between the two fine-tuned models;
   - 8 clients: 8 threads at once (4 per model), each sending its share of the same requests.
   The server has no "ignore EOS" option, so output tokens are the server's own
   ``usage.completion_tokens`` (the prompts ask for long answers: most hit ``max_tokens``).
3. **Baseline** (``_serve_baseline.py``, its own process, after the server has stopped): plain
   ``transformers`` ``generate`` on the first adapter merged into the base (peft
   ``merge_and_unload``), batch 1 and batch 8 (left-padded), float32 and bfloat16.

Reported per configuration: output tokens / wall time (aggregate), time to first token (mean,
p50, p90), per-request decode speed, cores busy (CPU seconds / wall seconds of the measuring
process: below the core count the machine was shared). Results: a markdown table on stdout and
a JSON file in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import machine, pytorch_cache_defaults  # noqa: E402
from _serve_api import BASE_MODEL, Server, make_adapters, measure_serving, prepare_home  # noqa: E402

CLIENTS = 8
PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Explain how a refrigerator keeps food cold, step by step."}],
    [{"role": "system", "content": "You are a concise support assistant."},
     {"role": "user", "content": "My order arrived damaged. What are my options for a refund or a "
                                 "replacement, and what should I send you?"}],
    [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message "
                                 "in a bottle."}],
    [{"role": "user", "content": "What are the main differences between renting and buying a home? "
                                 "Give the pros and cons of each."}],
    [{"role": "user", "content": "Describe a healthy weekly meal plan for a busy student on a budget."}],
    [{"role": "system", "content": "You help small businesses with operations."},
     {"role": "user", "content": "How should I organise the inventory of a small bakery?"}],
    [{"role": "user", "content": "Explain the water cycle to a ten-year-old."}],
    [{"role": "user", "content": "Give me tips for preparing for a job interview at a software "
                                 "company."}],
    [{"role": "user", "content": "Summarise the main causes of the French Revolution."}],
    [{"role": "user", "content": "How do I write a polite email asking my landlord to fix the "
                                 "heating? Please include an example."}],
    [{"role": "system", "content": "Answer politely and in plain English."},
     {"role": "user", "content": "Why is the sky blue, and why are sunsets red?"}],
    [{"role": "user", "content": "Plan a three-day trip to Rome for someone who loves art and food."}],
    [{"role": "user", "content": "What is the difference between a virus and a bacterium?"}],
    [{"role": "user", "content": "Write a product description for a waterproof hiking backpack."}],
    [{"role": "user", "content": "Explain what a budget is and how to make a monthly budget."}],
    [{"role": "system", "content": "You are an expert travel and logistics planner."},
     {"role": "user", "content": "How do I ship a bicycle across the country safely?"}],
]


# ----- figures ---------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """TTFT statistics, decode speed per request, cores busy, share of requests cut by max_tokens."""
    ttft, toks = run["ttft"], run["completion_tokens"]
    f = {"ttft_mean": sum(ttft) / len(ttft), "ttft_p50": pct(ttft, 0.5), "ttft_p90": pct(ttft, 0.9),
         "output_tokens": sum(toks), "mean_output_tokens": sum(toks) / len(toks),
         "cores_busy": run["cpu_seconds"] / run["wall_seconds"],
         "tokens_per_cpu_second": sum(toks) / run["cpu_seconds"] if run["cpu_seconds"] else None}
    if "request_seconds" in run:  # streamed: decode speed after the first token, per request
        rates = [(n - 1) / (s - t) for n, s, t in zip(toks, run["request_seconds"], ttft, strict=True)
                 if n > 1 and s > t]
        f["decode_tokens_per_second_per_request"] = sum(rates) / len(rates) if rates else None
    return f


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    runs = res["runs"]
    for run in runs.values():
        run.update(figures(run))
        run["hit_max_tokens"] = sum(n >= res["max_tokens"] for n in run["completion_tokens"]) / len(
            run["completion_tokens"])

    def ratio(a: str, b: str) -> float | None:
        if a in runs and b in runs and runs[b]["tokens_per_second"]:
            return runs[a]["tokens_per_second"] / runs[b]["tokens_per_second"]
        return None

    s = {f"serve_c1_over_merged_{d}_b1": ratio("serve-c1", f"merged-{d}-b1") for d in ("fp32", "bf16")}
    s |= {f"serve_c8_over_merged_{d}_b8": ratio("serve-c8", f"merged-{d}-b8") for d in ("fp32", "bf16")}
    s["serve_c8_over_serve_c1"] = ratio("serve-c8", "serve-c1")
    s |= consistency(res)
    same = res["server_dtype"]
    s["target_batch1_within_10pct"] = (s[f"serve_c1_over_merged_{same}_b1"] or 0) >= 0.9
    s["target_c8_above_merged_b8"] = (s[f"serve_c8_over_merged_{same}_b8"] or 0) > 1
    s["target_c8_above_serve_c1"] = (s["serve_c8_over_serve_c1"] or 0) > 1
    res["summary"] = s
    return res


def consistency(res: dict[str, Any]) -> dict[str, Any]:
    """Greedy answers compared (a sanity check, not a speed figure): the same prompt and model
    at batch 1 and among 8 clients; different models on the same prompt; serve vs merged."""
    runs = res["runs"]
    one, eight = runs.get("serve-c1"), runs.get("serve-c8")
    out: dict[str, Any] = {}
    if one and eight:
        pairs = list(zip(one["models"], eight["models"], one["texts"], eight["texts"], strict=True))
        same = [a == b for m1, m8, a, b in pairs if m1 == m8]
        diff = [a != b for m1, m8, a, b in pairs if m1 != m8]
        out["same_model_batch1_vs_8_clients_identical"] = f"{sum(same)}/{len(same)}"
        out["two_adapters_answer_differently"] = f"{sum(diff)}/{len(diff)}"
    merged = runs.get(f"merged-{res['server_dtype']}-b1")
    if one and merged and res.get("adapters"):
        first = res["adapters"][0]["model"]
        hits = [a.strip() == b.strip() for m, a, b in zip(one["models"], one["texts"], merged["texts"],
                                                          strict=True) if m == first]
        out["serve_batch1_vs_merged_identical"] = f"{sum(hits)}/{len(hits)}"
    return out


LABELS = {"serve-c1": "tunehouse serve, batch 1 (alternating 2 adapters)",
          "serve-c8": f"tunehouse serve, {CLIENTS} clients (4 per adapter)"}


def label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    _, dtype, b = key.split("-")
    return f"merged model + generate, {dtype}, batch {b[1:]}"


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['memory_gb']} GB, "
             f"torch {m['torch']}; load average at start {m['load_average'][0]:.1f}.",
             f"Model {res['model']} + LoRA r=16 adapters (2 training steps each, through the API); "
             f"{res['requests']} requests, max_tokens {res['max_tokens']}, temperature 0; "
             f"server dtype {res['server_dtype']}; torch threads {res.get('threads')}.", "",
             "| configuration | output tok/s | tokens | hit max | TTFT mean | p50 | p90 "
             "| decode tok/s per request | cores busy | tok per CPU-s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in res["runs"].items():
        dec = r.get("decode_tokens_per_second_per_request")
        lines.append(f"| {label(key)} | {r['tokens_per_second']:.1f} | {r['output_tokens']} | "
                     f"{r['hit_max_tokens']:.0%} | {r['ttft_mean'] * 1000:.0f} ms | "
                     f"{r['ttft_p50'] * 1000:.0f} ms | {r['ttft_p90'] * 1000:.0f} ms | "
                     f"{f'{dec:.1f}' if dec else '-'} | {r['cores_busy']:.2f} | "
                     f"{r['tokens_per_cpu_second'] or 0:.1f} |")
    s, d = res["summary"], res["server_dtype"]
    other = "bf16" if d == "fp32" else "fp32"

    def fmt(x: float | None) -> str:
        return f"{x:.2f}x" if x is not None else "-"

    lines += ["", f"- serve batch 1 / merged batch 1 ({d}): {fmt(s[f'serve_c1_over_merged_{d}_b1'])} "
              f"(target >= 0.90x: {'met' if s['target_batch1_within_10pct'] else 'NOT met'}); "
              f"vs {other}: {fmt(s[f'serve_c1_over_merged_{other}_b1'])}",
              f"- serve {CLIENTS} clients / merged batch 8 ({d}): {fmt(s[f'serve_c8_over_merged_{d}_b8'])} "
              f"(target > 1x: {'met' if s['target_c8_above_merged_b8'] else 'NOT met'})",
              f"- serve {CLIENTS} clients / serve batch 1: {fmt(s['serve_c8_over_serve_c1'])} "
              f"(target > 1x: {'met' if s['target_c8_above_serve_c1'] else 'NOT met'})",
              f"- greedy answers: {', '.join(f'{k} {v}' for k, v in s.items() if '/' in str(v))}",
              f"- peak RSS: server {res.get('server_peak_rss_mb') or 0:.0f} MB, generate baseline "
              f"{res.get('baseline', {}).get('peak_rss_mb') or 0:.0f} MB",
              "", "TTFT: request sent to first non-empty content chunk (serve), start of `generate` to "
              "its first new token (merged; in a batch every row shares it). cores busy: CPU s / wall s "
              "of the measuring process (server or baseline); below the core count the machine was "
              "shared and wall-clock figures are pessimistic."]
    return "\n".join(lines)


# ----- driver ------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serving throughput: tunehouse serve vs generate on a "
                                            "merged model.")
    p.add_argument("--requests", type=int, default=None, help="requests per configuration "
                   "(default 16; the 16 prompts repeat if more)")
    p.add_argument("--max-tokens", type=int, default=None, help="max_tokens per request (default 128)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 requests, 16 tokens, baseline "
                   "in the server's dtype only")
    p.add_argument("--dtypes", default=None, help="baseline dtypes (default fp32,bf16)")
    p.add_argument("--no-baseline", action="store_true", help="serve only")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server and the "
                   "baseline (OMP_NUM_THREADS; default: torch's, one per core)")
    p.add_argument("--out", default=None, help="JSON result (default benchmarks/results/"
                   "serve_throughput-<date>.json)")
    p.add_argument("--workdir", default=None, help="keep the home (adapters), logs and results here; "
                   "adapters found there are reused")
    p.add_argument("--report", default=None, help="print the table of an existing results JSON")
    args = p.parse_args()
    args.requests = args.requests or (8 if args.quick else 16)
    args.max_tokens = args.max_tokens or (16 if args.quick else 128)
    args.dtypes = args.dtypes or (server_dtype() if args.quick else "fp32,bf16")
    if args.requests < CLIENTS:
        p.error(f"--requests must be at least {CLIENTS} (one per concurrent client)")
    if not 1 <= args.max_tokens <= 4096:
        p.error("--max-tokens must be in 1..4096")
    if any(d not in ("fp32", "bf16") for d in args.dtypes.split(",")):
        p.error(f"--dtypes takes fp32 and/or bf16, comma-separated; got {args.dtypes!r}")
    return args


def server_dtype() -> str:
    """What ``tunehouse serve`` computes in on this machine (its ``dtype="auto"`` on CPU)."""
    import torch

    from tunehouse.serve.adapters import resolve_dtype

    return "bf16" if resolve_dtype("auto", "cpu") == torch.bfloat16 else "fp32"


def run_baseline(adapter: str, prompts_file: Path, args: argparse.Namespace, work: Path) -> dict:
    result, log = work / "baseline.json", work / "baseline.log"
    cmd = [sys.executable, str(HERE / "_serve_baseline.py"), "--adapter", adapter, "--prompts",
           str(prompts_file), "--max-tokens", str(args.max_tokens), "--dtypes", args.dtypes,
           "--batch-sizes", f"1,{CLIENTS}", "--result", str(result)]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode  # noqa: S603
    if rc != 0 or not result.is_file():
        raise RuntimeError(f"baseline failed ({rc}); log {log}:\n{log.read_text()[-2000:]}")
    print("\n".join(x for x in log.read_text().splitlines() if x.startswith("  merged")), flush=True)
    return json.loads(result.read_text())


def main() -> None:
    args = parse_args()
    pytorch_cache_defaults()  # the baseline process as its users have it; tunehouse sets its own
    if args.report:
        print(table(summarise(json.loads(Path(args.report).read_text()))))
        return
    if args.threads:  # inherited by the server and the baseline process
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tunehouse-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    home = prepare_home(work)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    prompts_file = work / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    res: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                           "model": BASE_MODEL, "requests": args.requests, "max_tokens": args.max_tokens,
                           "server_dtype": server_dtype(), "clients": CLIENTS, "workdir": str(work), "runs": {},
                           "threads": args.threads or "torch default (one per core)"}
    print(f"Serving throughput: {args.requests} requests, max_tokens {args.max_tokens}; work {work}",
          flush=True)
    print("Fine-tuning two adapters through the API...", flush=True)
    server = Server(home, work / "serve-train.log", workers=1)
    try:
        res["adapters"] = make_adapters(server, home, work)
    finally:
        server.stop()
    print("Serving (fresh server, no workers)...", flush=True)
    server = Server(home, work / "serve.log", workers=0)
    try:
        served = measure_serving(server, res["adapters"], prompts, args.max_tokens, CLIENTS)
    finally:
        server.stop()
    res["cold_first_request_ttft"] = served["cold_first_request_ttft"]
    res["server_peak_rss_mb"] = served["server_peak_rss_mb"]
    res["runs"].update(served["runs"])
    if not args.no_baseline:
        print(f"Baseline: generate on {res['adapters'][0]['model']} merged...", flush=True)
        base = run_baseline(res["adapters"][0]["path"], prompts_file, args, work)
        res["baseline"] = {k: v for k, v in base.items() if k != "runs"}
        res["runs"].update({f"merged-{k}": v for k, v in base["runs"].items()})
    summarise(res)
    res["machine"]["load_average_end"] = list(os.getloadavg())
    out = Path(args.out or HERE / "results" / f"serve_throughput-{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + table(res) + f"\n\nResults: {out}")
    if args.workdir:
        print(f"Work directory (home with the adapters, logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
