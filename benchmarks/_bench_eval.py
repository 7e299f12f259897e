"""The benchmark's shared measurements: one loss evaluator for every adapter, and the matmul ceiling.

    python benchmarks/_bench_eval.py loss --data chats.jsonl --result r.json [--adapter NAME=DIR ...]
    python benchmarks/_bench_eval.py ceiling --trained-fraction 0.6 --result r.json

``loss``: every adapter (and the untrained base, as ``base``) is merged into a fresh fp32 copy of
the base model and scored with tunehouse's ``trained_token_loss`` on the same examples' assistant
tokens (tunehouse's chat encoding), without autocast. The trainers' own logged losses differ in
what they average over (TRL's defaults train on every token); this number does not.

``ceiling``: bf16 (and, for reference, fp32) matmuls at the model's real shapes: for a block of
``--rows`` tokens, every linear layer's forward ``X @ W.T`` and input-gradient ``dY @ W``, times
the layers, plus the vocabulary head forward and input-gradient on the trained fraction of the
tokens. The LoRA weight gradients, attention scores, norms and the optimiser are left out, so
this is an upper bound on the trained tokens per second any LoRA trainer can reach here:

    FLOPs per token = 4 * P_layers + 4 * P_head * f
    P_layers = layers * (q + k + v + o + gate + up + down weights), P_head = hidden * vocab,
    f = trained (assistant) tokens / all tokens
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

from _bench_data import read_jsonl, set_threads  # noqa: E402

EVAL_BUDGET = 4096  # padded tokens per evaluation micro-batch


def model_shapes(config) -> dict:
    """(in, out) of each linear layer of one decoder block, the layer count and the head."""
    h, i = config.hidden_size, config.intermediate_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    linears = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    return {"linears": linears, "layers": config.num_hidden_layers, "hidden": h,
            "vocab": config.vocab_size}


def flops_per_token(shapes: dict, trained_fraction: float) -> dict:
    p_layers = shapes["layers"] * sum(a * b for a, b in shapes["linears"])
    p_head = shapes["hidden"] * shapes["vocab"]
    total = 4 * p_layers + 4 * p_head * trained_fraction
    return {"P_layers": p_layers, "P_head": p_head, "trained_fraction": trained_fraction,
            "flops_per_token": total,
            "formula": "4*P_layers + 4*P_head*f (forward 2P + input-gradient 2P; head only on trained tokens)"}


def _pair(x, w, dy):
    """One linear layer's forward and input-gradient matmuls."""
    import torch.nn.functional as F

    return F.linear(x, w), dy @ w


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_block_seconds(shapes: dict, rows: int, trained_fraction: float, dtype, repeats: int) -> float:
    """Seconds for one block of ``rows`` tokens' forward + input-gradient matmuls through the model."""
    import functools

    import torch

    torch.manual_seed(0)
    total = 0.0
    for n_in, n_out in shapes["linears"]:
        w = torch.randn(n_out, n_in, dtype=dtype) * 0.02
        x = torch.randn(rows, n_in, dtype=dtype)
        dy = torch.randn(rows, n_out, dtype=dtype)
        total += shapes["layers"] * _best_time(functools.partial(_pair, x, w, dy), repeats)
    head_rows = max(1, round(rows * trained_fraction))
    w = torch.randn(shapes["vocab"], shapes["hidden"], dtype=dtype) * 0.02
    x = torch.randn(head_rows, shapes["hidden"], dtype=dtype)
    dy = torch.randn(head_rows, shapes["vocab"], dtype=dtype)
    total += _best_time(functools.partial(_pair, x, w, dy), repeats)
    return total


def ceiling(model_dir: str, trained_fraction: float, rows: int, repeats: int) -> dict:
    import torch
    from transformers import AutoConfig

    threads = set_threads()
    shapes = model_shapes(AutoConfig.from_pretrained(model_dir))
    fl = flops_per_token(shapes, trained_fraction)
    out = {"rows": rows, "threads": threads, "repeats": repeats, **fl, "shapes": shapes}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        secs = matmul_block_seconds(shapes, rows, trained_fraction, dtype, repeats)
        out[name] = {"tokens_per_second": rows / secs,
                     "flops_per_second": rows * fl["flops_per_token"] / secs}
    return out


def adapter_losses(data: str, adapters: dict[str, str]) -> dict:
    """Assistant-token loss of the base model and of each adapter merged into it (fp32, no autocast)."""
    import torch

    from tunehouse import models
    from tunehouse.data.packing import micro_batches
    from tunehouse.data.tokenize import encode_chat
    from tunehouse.train.model import collate, trained_token_loss

    set_threads()
    source = models.resolve(None)
    tok = models.load_tokenizer(source)
    encs = [encode_chat(tok, r["messages"], max_length=1024) for r in read_jsonl(data)]
    lengths = [len(e.input_ids) for e in encs]
    results = {}
    for name, path in {"base": "", **adapters}.items():
        t0 = time.perf_counter()
        model = models.load_model(source, dtype=torch.float32)
        if path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        model.eval()
        total, n_all, correct = 0.0, 0, 0
        with torch.inference_mode():
            for mb in micro_batches(list(range(len(encs))), lengths, max(EVAL_BUDGET, max(lengths))):
                ids, att, lab = collate([(encs[i].input_ids, encs[i].labels) for i in mb], tok.pad_token_id)
                loss, n, c = trained_token_loss(model, ids, att, lab)
                total, n_all, correct = total + float(loss), n_all + n, correct + c
        results[name] = {"loss": total / n_all, "accuracy": correct / n_all, "tokens": n_all,
                         "seconds": time.perf_counter() - t0}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("loss")
    lp.add_argument("--data", required=True)
    lp.add_argument("--adapter", action="append", default=[], help="NAME=DIR")
    lp.add_argument("--result", required=True)
    cp = sub.add_parser("ceiling")
    cp.add_argument("--model", required=True, help="base model directory (its config.json)")
    cp.add_argument("--trained-fraction", type=float, required=True)
    cp.add_argument("--rows", type=int, default=2048)
    cp.add_argument("--repeats", type=int, default=5)
    cp.add_argument("--result", required=True)
    args = p.parse_args()
    if args.cmd == "loss":
        out = adapter_losses(args.data, dict(a.split("=", 1) for a in args.adapter))
    else:
        out = ceiling(args.model, args.trained_fraction, args.rows, args.repeats)
    Path(args.result).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
