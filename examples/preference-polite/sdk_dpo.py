"""Preference fine-tuning (DPO) with the OpenAI Python SDK against a running ``tunehouse serve``.

Uploads this folder's polite-vs-curt pairs (train.jsonl, validation.jsonl), creates a job with
``method={"type": "dpo", ...}``, prints its events while it runs, then reads the evaluation
the job ran on the validation file (a result file) and prints held-out preference accuracy:
how often the base and the fine-tuned model give the polite answer the higher likelihood.

    tunehouse serve &                                    # embedded SmolLM2-135M-Instruct
    python examples/preference-polite/sdk_dpo.py         # base_url from $TUNEHOUSE_BASE_URL

Only ``base_url`` differs from code written for OpenAI's API.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from openai import OpenAI

HERE = Path(__file__).resolve().parent
TERMINAL = ("succeeded", "failed", "cancelled")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default=os.environ.get("TUNEHOUSE_BASE_URL",
                                                         "http://127.0.0.1:8000/v1"))
    ap.add_argument("--api-key", default=os.environ.get("TUNEHOUSE_API_KEY", "tunehouse"),
                    help="one of the server's TUNEHOUSE_API_KEYS (any value when none is set)")
    ap.add_argument("--model", default=os.environ.get("TUNEHOUSE_MODEL", "smollm2-135m-instruct"))
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate-multiplier", type=float, default=1.0)
    ap.add_argument("--max-pairs", type=int, default=None,
                    help="train on the first N pairs only (a quicker demo)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    return ap.parse_args()


def upload(client: OpenAI, name: str, max_lines: int | None = None) -> str:
    """Upload one of this folder's JSONL files (optionally its first lines) for fine-tuning."""
    lines = (HERE / name).read_text(encoding="utf-8").splitlines(keepends=True)
    data = "".join(lines[:max_lines] if max_lines else lines).encode()
    f = client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")
    print(f"uploaded {name}: {f.id} ({f.bytes} bytes)")
    return f.id


def follow(client: OpenAI, job_id: str, timeout: float):
    """Print the job's events as they arrive until it ends; return the finished job."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for ev in reversed(events):  # the API lists newest first
            if ev.id not in seen:
                seen.add(ev.id)
                print(f"  [{ev.level}] {ev.message}", flush=True)
        if job.status in TERMINAL:
            return job
        if time.monotonic() > deadline:
            sys.exit(f"job {job_id} is still {job.status} after {timeout:.0f}s")
        time.sleep(2)


def print_evaluation(client: OpenAI, job) -> None:
    """Held-out preference accuracy of base and fine-tuned, from the job's evaluation report."""
    names = {client.files.retrieve(fid).filename: fid for fid in job.result_files}
    if "eval_report.json" not in names:
        print("no evaluation report among the result files (see the events above)")
        return
    report = json.loads(client.files.content(names["eval_report.json"]).text)
    print(f"\nHeld-out preference accuracy on {report['n_examples']} validation pairs "
          "(the polite answer has the higher likelihood):")
    for c in report["candidates"]:
        s, ci = c["summary"], c["ci"].get("preference_accuracy") or [None, None]
        interval = f" [95% CI {ci[0]:.2f}..{ci[1]:.2f}]" if ci[0] is not None else ""
        print(f"  {c['name']:>10}: {s['preference_accuracy']:.0%}{interval}, per token "
              f"{s['normalized_preference_accuracy']:.0%}, mean margin {s['margin']:+.2f} nats")
    for cmp in report["comparisons"]:
        if cmp["metric"] == "preference_accuracy":
            print(f"  fine-tuned minus base: {cmp['diff']:+.2f} (95% CI {cmp['ci_low']:+.2f}.."
                  f"{cmp['ci_high']:+.2f}), wins/ties/losses {cmp['wins']}/{cmp['ties']}/"
                  f"{cmp['losses']}")
    for c in report["candidates"]:  # one prompt answered by each model
        print(f"\n  {report['examples'][0]['prompt']!r} -> {c['name']}: {c['answers'][0]!r}")


def main() -> None:
    args = parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    train_id = upload(client, "train.jsonl", args.max_pairs)
    valid_id = upload(client, "validation.jsonl")
    job = client.fine_tuning.jobs.create(
        model=args.model, training_file=train_id, validation_file=valid_id, suffix="polite",
        method={"type": "dpo", "dpo": {"hyperparameters": {
            "beta": args.beta, "n_epochs": args.epochs, "batch_size": args.batch_size,
            "learning_rate_multiplier": args.learning_rate_multiplier}}})
    print(f"created {job.id} ({job.status}), method {job.method.type}")
    job = follow(client, job.id, args.timeout)
    print(f"\nstatus: {job.status}; fine-tuned model: {job.fine_tuned_model}")
    if job.status != "succeeded":
        sys.exit(f"job {job.status}: {job.error}")
    print_evaluation(client, job)


if __name__ == "__main__":
    main()
