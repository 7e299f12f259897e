"""Dataset statistics: token counts, duplicates, conflicting answers, "auto" epochs, time estimate.

Token counts use the model's own chat template through :func:`tunehouse.data.tokenize.encode_chat`,
so "trained tokens" are exactly the tokens the loss will see (labels != -100).

Training-time heuristic (``estimate_seconds``): a forward plus backward pass costs about
``6 × n_params`` FLOPs per token (2 forward, 4 backward; Kaplan et al. 2020), over every token
of an example, not only the trained ones. DPO runs the policy on both answers and a frozen
reference model forward (``2 × n_params``), hence a factor of 8. The machine's speed is a
single-thread matrix-multiply probe (numpy float32, best of ~0.1 s of runs, once per
process) times the number of cores, times ``engine_efficiency()``: the training speed
tunehouse's engine measured, in those FLOPs per second, per probe FLOP/s. Its LoRA engine
does less than ``6 × n_params`` per token (frozen weights get no gradient, the vocabulary head
runs on trained tokens only) and computes in bf16 where the CPU has native bf16, so the ratio
can exceed 1. Set ``TUNEHOUSE_CPU_GFLOPS`` to override the measured peak. The estimate is for
this CPU when no other job competes for it; it is an order of magnitude, not a promise.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from typing import Any

from tunehouse.data.formats import CHAT, PREFERENCE, Record
from tunehouse.data.tokenize import encode_chat
from tunehouse.hardware import cpu_has_native_bf16

# tunehouse's LoRA training speed in 6 x n_params FLOP/s per probe FLOP/s, measured on the
# 2-core AMD EPYC build machine (probe 226 GFLOP/s) with SmolLM2-135M on the demo's tickets
# (2026-11-30): 340 tokens/s in bf16 (1.2), 239 tokens/s with --precision fp32 (0.85), the
# latter standing for CPUs without native bf16.
ENGINE_EFFICIENCY = {"bf16": 1.2, "fp32": 0.85}
FALLBACK_GFLOPS = 50.0  # if numpy is unavailable: ~2 cores of a recent x86 CPU, float32
FLOPS_FACTOR = {CHAT: 6, PREFERENCE: 8}


@dataclass(frozen=True)
class TokenCount:
    """Tokens of one example: ``n_tokens`` before truncation, ``n_trained`` after it."""

    line: int
    n_tokens: int
    n_processed: int  # tokens the model actually sees (after truncation; both answers for DPO)
    n_trained: int
    truncated: bool


def count_tokens(tokenizer: Any, fmt: str, record: Record, max_length: int | None) -> TokenCount:
    """Token counts of one valid example under the model's chat template.

    For a preference example the prompt is encoded with each answer; the longer sequence
    decides truncation, and trained tokens are those of both answers.

    Raises:
        Exception: whatever the chat template raises for an example it refuses.
    """
    data = record.data
    if fmt == PREFERENCE:
        prompt = data["input"]["messages"]
        tools = data["input"].get("tools")
        encs = [encode_chat(tokenizer, prompt + data[key], max_length=max_length, tools=tools)
                for key in ("preferred_output", "non_preferred_output")]
    else:
        tools = data.get("tools") or data.get("functions")
        encs = [encode_chat(tokenizer, data["messages"], max_length=max_length, tools=tools)]
    return TokenCount(
        line=record.line,
        n_tokens=max(e.full_length for e in encs),
        n_processed=sum(len(e.input_ids) for e in encs),
        n_trained=sum(e.n_trained for e in encs),
        truncated=any(e.truncated for e in encs),
    )


def summarize(values: list[int]) -> dict[str, float | int]:
    """min / median / mean / max of a list of counts (zeros when empty)."""
    if not values:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    median = statistics.median(values)
    return {"min": min(values), "median": int(median) if median == int(median) else median,
            "mean": round(statistics.fmean(values), 1), "max": max(values)}


def histogram(lengths: list[int]) -> dict[str, list[int]]:
    """Counts of lengths in power-of-two buckets: ``counts[i]`` is ``edges[i] <= n < edges[i+1]``.

    >>> histogram([3, 20, 40, 40])
    {'edges': [0, 16, 32, 64], 'counts': [1, 1, 2]}
    """
    edges = [0, 16]
    while lengths and edges[-1] <= max(lengths):
        edges.append(edges[-1] * 2)
    counts = [0] * (len(edges) - 1)
    for n in lengths:
        i = 0 if n < 16 else min(n.bit_length() - 4, len(counts) - 1)
        counts[i] += 1
    return {"edges": edges, "counts": counts}


def token_stats(counts: list[TokenCount], max_length: int | None) -> dict[str, Any]:
    """Per-example and total token statistics, JSON-able."""
    lengths = [c.n_tokens for c in counts]
    return {
        "per_example": summarize(lengths),
        "trained_per_example": summarize([c.n_trained for c in counts]),
        "total": sum(lengths),
        "processed_total": sum(c.n_processed for c in counts),
        "trained_total": sum(c.n_trained for c in counts),
        "max_length": max_length,
        "n_truncated": sum(c.truncated for c in counts),
        "histogram": histogram(lengths),
    }


def _digest(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def example_key(data: dict[str, Any]) -> bytes:
    """A digest of a whole example: equal for exact duplicates (key order ignored)."""
    return _digest(data)


def prompt_and_answer(fmt: str, data: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """Digests of an example's prompt and of its answer, or None if it has no final answer.

    Chat: the prompt is every message before the last assistant message (plus tools), the
    answer that message. Preference: the prompt is ``input``, the answer ``preferred_output``.
    """
    if fmt == PREFERENCE:
        return _digest(data["input"]), _digest(data["preferred_output"])
    messages = data["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return None
    prompt = {"messages": messages[:last], "tools": data.get("tools") or data.get("functions")}
    answer = {k: v for k, v in messages[last].items() if k != "weight"}
    return _digest(prompt), _digest(answer)


def find_duplicates(records: list[Record]) -> list[tuple[int, int]]:
    """``(line, earlier_line)`` for every example that repeats an earlier one exactly."""
    first: dict[bytes, int] = {}
    pairs = []
    for rec in records:
        key = example_key(rec.data)
        if key in first:
            pairs.append((rec.line, first[key]))
        else:
            first[key] = rec.line
    return pairs


def find_conflicts(fmt: str, records: list[Record]) -> list[list[int]]:
    """Groups of lines that share a prompt but give different answers (chat files only)."""
    if fmt != CHAT:
        return []
    by_prompt: dict[bytes, dict[bytes, int]] = defaultdict(dict)
    for rec in records:
        pa = prompt_and_answer(fmt, rec.data)
        if pa is not None:
            by_prompt[pa[0]].setdefault(pa[1], rec.line)
    return [sorted(answers.values()) for answers in by_prompt.values() if len(answers) > 1]


def find_overlap(fmt: str, train: list[Record], valid: list[Record]
                 ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(validation_line, training_line)`` pairs: exact same example, and same prompt only."""
    exact_lines = {example_key(r.data): r.line for r in reversed(train)}
    prompt_lines = {}
    for rec in reversed(train):
        pa = prompt_and_answer(fmt, rec.data)
        if pa is not None:
            prompt_lines[pa[0]] = rec.line
    exact, prompts = [], []
    for rec in valid:
        key = example_key(rec.data)
        pa = prompt_and_answer(fmt, rec.data)
        if key in exact_lines:
            exact.append((rec.line, exact_lines[key]))
        elif pa is not None and pa[0] in prompt_lines:
            prompts.append((rec.line, prompt_lines[pa[0]]))
    return exact, prompts


def auto_epochs(n_examples: int) -> int:
    """OpenAI's "auto" epochs: 3, raised for small files and lowered for big ones.

    >>> auto_epochs(10), auto_epochs(40), auto_epochs(10000), auto_epochs(100000)
    (10, 3, 2, 1)
    """
    if n_examples <= 0:
        return 3
    if n_examples * 3 < 100:
        return min(25, 100 // n_examples)
    if n_examples * 3 > 25_000:
        return max(1, 25_000 // n_examples)
    return 3


@cache
def cpu_flops() -> float:
    """Sustained matmul FLOP/s of this machine: ``TUNEHOUSE_CPU_GFLOPS`` or a ~0.1 s probe."""
    override = os.environ.get("TUNEHOUSE_CPU_GFLOPS")
    if override:
        try:
            return float(override) * 1e9
        except ValueError:
            pass
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with transformers
        return FALLBACK_GFLOPS * 1e9
    # A stack of 64x64 products: BLAS runs each on one thread, so the probe is not thrown off
    # by thread contention on a busy machine; training uses every core, hence x cores.
    a = np.random.default_rng(0).standard_normal((64, 64, 64), dtype=np.float32)
    a @ a
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < 0.1:  # best of many: other processes add noise
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 64**4 / best * _n_cores()


def engine_efficiency() -> float:
    """``ENGINE_EFFICIENCY`` for this CPU: bf16 where it has native bf16, else float32."""
    return ENGINE_EFFICIENCY["bf16" if cpu_has_native_bf16() else "fp32"]


def _n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def estimate_seconds(tokens_per_epoch: int, epochs: int, n_params: int, *,
                     flops_factor: int = 6, flops_per_second: float | None = None) -> float:
    """Seconds to train on this CPU: ``factor × n_params × tokens × epochs / sustained FLOP/s``.

    ``tokens_per_epoch`` counts every token the model processes (prompt tokens too: the
    backward pass runs through them even where the loss is masked).

    >>> round(estimate_seconds(1000, 3, 1_000_000, flops_per_second=1e9 / engine_efficiency()))
    18
    """
    speed = (flops_per_second or cpu_flops()) * engine_efficiency()
    return flops_factor * n_params * tokens_per_epoch * epochs / speed
