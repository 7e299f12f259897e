"""The serving benchmark's baseline: plain ``transformers`` ``generate`` on a merged model.

    .venv/bin/python benchmarks/_serve_baseline.py --adapter DIR --prompts prompts.json \
        --max-tokens 128 --dtypes fp32,bf16 --batch-sizes 1,8 --result out.json

The LoRA adapter ``DIR`` (a tunehouse training output) is folded into a float32 copy of its
base with peft's ``merge_and_unload``; a bfloat16 run casts that merged float32 model (merging
in bf16 would round the adapter twice). Prompts are rendered with the adapter's own chat
template (``apply_chat_template``) and generated greedily, batch 1 one by one and batch ``B``
left-padded in fixed groups, with the end-of-turn ids the server stops at. Nothing of
tunehouse's inference engine is used.

Counted like the server's ``usage.completion_tokens``: every generated token up to and
including the first stop token (rows of a batch that finished early keep being computed by
``generate``; those padding steps are not counted). Time to first token is taken by a
streamer: the moment ``generate`` hands over the first new token (after the prefill).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import cpu_seconds, peak_rss_mb, pytorch_cache_defaults  # noqa: E402

END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>",
               "<|end|>", "</s>")


class FirstTokenClock:
    """A ``generate`` streamer noting when the first new token appears (the first ``put``
    carries the prompt, the second the first sampled token of every row)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def load_merged(adapter: str) -> tuple[Any, Any, list[int]]:
    """(float32 merged model, tokenizer with left padding, stop ids) for a LoRA output dir."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunehouse import models

    pytorch_cache_defaults()
    source = models.resolve(adapter)
    base_dir = models.resolve(source.adapter_of).path
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter, is_trainable=False).merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(adapter if Path(adapter, "tokenizer_config.json").is_file()
                                        else base_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    vocab = tok.get_vocab()
    stops = {tok.eos_token_id} | {vocab[t] for t in END_OF_TURN if t in vocab}
    eos = model.generation_config.eos_token_id
    stops |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return model, tok, sorted(s for s in stops if s is not None)


def counted(new_tokens: list[int], stops: set[int]) -> int:
    """Generated tokens up to and including the first stop token (the server's count)."""
    for i, t in enumerate(new_tokens):
        if t in stops:
            return i + 1
    return len(new_tokens)


def run_batches(model: Any, tok: Any, prompts: list[list[dict]], batch: int, max_tokens: int,
                stops: list[int]) -> dict[str, Any]:
    """Generate every prompt in groups of ``batch``; per-request TTFT and token counts."""
    import torch

    stop_set = set(stops)
    ttft, tokens, prompt_tokens, answers = [], [], [], []
    wall = 0.0
    cpu0 = cpu_seconds()
    for s in range(0, len(prompts), batch):
        group = prompts[s:s + batch]
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in group]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        clock = FirstTokenClock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tok.pad_token_id,
                                 streamer=clock)
        elapsed = time.perf_counter() - t0
        wall += elapsed
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        for i, row in enumerate(new):
            n = counted(row, stop_set)
            tokens.append(n)
            answers.append(tok.decode(row[:n], skip_special_tokens=True))
            prompt_tokens.append(int(enc["attention_mask"][i].sum()))
            ttft.append((clock.first or time.perf_counter()) - t0)
    return {"batch": batch, "requests": len(prompts), "completion_tokens": tokens,
            "prompt_tokens": prompt_tokens, "ttft": ttft, "texts": answers, "wall_seconds": wall,
            "cpu_seconds": cpu_seconds() - cpu0,
            "tokens_per_second": sum(tokens) / wall if wall else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", required=True, help="LoRA output directory to merge")
    p.add_argument("--prompts", required=True, help="JSON list of message lists")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--result", required=True)
    args = p.parse_args()
    import torch

    prompts = json.loads(Path(args.prompts).read_text())
    t0 = time.perf_counter()
    merged, tok, stops = load_merged(args.adapter)
    res: dict[str, Any] = {"load_seconds": time.perf_counter() - t0, "stop_ids": stops,
                           "threads": torch.get_num_threads(), "runs": {}}
    for dtype in sorted(args.dtypes.split(","), key=lambda d: d != "fp32"):  # fp32 first:
        model = merged if dtype == "fp32" else merged.to(torch.bfloat16)  # .to() casts in place
        warm = tok(tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True),
                   return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():  # first call pays one-off costs (allocator, kernels)
            model.generate(**warm, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            load = os.getloadavg()[0]
            run = run_batches(model, tok, prompts, batch, args.max_tokens, stops)
            run.update(dtype=dtype, load_before=load, load_after=os.getloadavg()[0])
            res["runs"][f"{dtype}-b{batch}"] = run
            print(f"  merged {dtype} batch {batch}: {run['tokens_per_second']:.1f} tok/s", flush=True)
    res["peak_rss_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
