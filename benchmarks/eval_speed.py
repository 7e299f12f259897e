"""How long does `tunehouse eval` take? 100 short held-out examples, two candidates, default model.

    .venv/bin/python benchmarks/eval_speed.py            # full evaluate(), auto precision
    .venv/bin/python benchmarks/eval_speed.py --dtypes   # also: generation/loss, fp32 vs bf16
    .venv/bin/python benchmarks/eval_speed.py --model runs/latest --data heldout.jsonl

Without ``--model`` a LoRA adapter of the default model is created in a temporary directory
(PEFT's initialisation: it answers like the base, and costs exactly what a trained adapter
costs, since evaluation merges it). Prints seconds; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUBJECTS = ["The blender", "This laptop", "The hotel room", "Our delivery", "The new phone",
            "The coffee", "This jacket", "The support call", "The train ride", "The museum"]
VERDICTS = {
    "positive": ["works perfectly and I love it", "exceeded every expectation",
                 "was fast, friendly and cheap"],
    "negative": ["broke after two days", "was late and the box was crushed",
                 "is loud, slow and overpriced"],
    "neutral": ["arrived on Tuesday", "is blue and weighs two kilos", "was about what I expected"],
}


def heldout_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` short sentiment-classification chats with one-word answers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(VERDICTS))
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERDICTS[label])}."
        rows.append({"messages": [
            {"role": "system", "content": "Classify the review as positive, negative or neutral. "
                                          "Answer with one word."},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label}]})
    return rows


def make_adapter(directory: Path) -> Path:
    """A LoRA adapter dir of the default model, as a tunehouse run would write it."""
    from peft import LoraConfig, get_peft_model

    from tunehouse import models

    src = models.resolve(None)
    model = get_peft_model(models.load_model(src), LoraConfig(r=16, lora_alpha=32,
                                                              target_modules="all-linear"))
    model.save_pretrained(directory)
    models.load_tokenizer(src).save_pretrained(directory)
    (directory / "tunehouse.json").write_text(json.dumps({"base_model": src.name}))
    return directory


def time_dtypes(data: Path) -> None:
    """Generation and reference loss of the base model on the held-out set, fp32 vs bf16."""
    import torch

    from tunehouse import models
    from tunehouse.eval import generate as gen
    from tunehouse.eval.examples import load_heldout

    src = models.resolve(None)
    tok = models.load_tokenizer(src)
    examples = load_heldout(data)
    max_new = gen.default_max_new_tokens(tok, [e.reference for e in examples])
    for dtype in (torch.float32, torch.bfloat16):
        model = models.load_model(src, dtype=dtype)
        start = time.perf_counter()
        gen.generate(model, tok, [e.prompt for e in examples], max_new_tokens=max_new)
        mid = time.perf_counter()
        gen.reference_losses(model, tok, [e.full for e in examples])
        end = time.perf_counter()
        print(f"{str(dtype):16} generate {mid - start:6.1f} s   reference loss {end - mid:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="fine-tuned model dir (default: a fresh adapter)")
    parser.add_argument("--data", help="held-out JSONL (default: 100 generated examples)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--no-forgetting", action="store_true")
    parser.add_argument("--dtypes", action="store_true", help="also time fp32 vs bf16")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    args = parser.parse_args()
    from tunehouse.cli.common import quiet_libraries

    quiet_libraries()
    import torch

    from tunehouse.eval import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "heldout.jsonl"
        if not args.data:
            data.write_text("".join(json.dumps(r) + "\n" for r in heldout_rows(args.n)))
        model = args.model or str(make_adapter(Path(tmp) / "adapter"))
        print(f"torch threads: {torch.get_num_threads()}, examples: {args.n}")
        if args.dtypes:
            time_dtypes(data)
        start = time.perf_counter()
        report = evaluate(model, str(data), limit=args.n, forgetting=not args.no_forgetting,
                          precision=args.precision)
        total = time.perf_counter() - start
    print(report.summary_line())
    for c in report.candidates:
        print(f"{c.name:10} generation {c.generation_s:6.1f} s  "
              f"({c.prompt_tokens:.0f} prompt + {c.completion_tokens:.1f} completion tokens "
              "per request)")
    print(f"settings: {report.settings}")
    print(f"evaluate() total: {total:.1f} s for {report.n_examples} examples x "
          f"{len(report.candidates)} candidates")


if __name__ == "__main__":
    main()
