"""Shared pieces of the training benchmark: the synthetic chat data set, the machine, peak memory.

The data set is generated, never downloaded: English-looking sentences from a small grammar and
word list, message lengths drawn from a lognormal distribution (most chats short, a long tail),
some conversations multi-turn, some with a system prompt. A fixed seed makes it identical for
every run, and every example is fitted to ``max_length`` tokens so that all trainers see exactly
the same tokens (TRL's padding-free mode refuses to truncate by itself).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUBJECTS = ["the customer", "our team", "the new release", "this invoice", "the warehouse", "my manager",
            "the printer", "your account", "the support agent", "the mobile app", "the delivery driver",
            "the database", "this contract", "the kitchen", "the hotel", "the recipe", "the train",
            "the report", "the landlord", "the school", "the engineer", "the garden", "the budget"]
VERBS = ["needs", "fixed", "reviewed", "cancelled", "updated", "sent", "lost", "approved", "moved",
         "checked", "ignored", "improved", "delayed", "explained", "returned", "ordered", "cleaned",
         "measured", "scheduled", "tested", "shared", "rejected", "prepared", "described"]
OBJECTS = ["the order", "a refund", "the password", "the shipping label", "the meeting", "the backup",
           "a new laptop", "the monthly plan", "the error message", "the schedule", "the menu",
           "the parking permit", "a second opinion", "the quarterly numbers", "the login page",
           "the heating system", "a short summary", "the travel plan", "the warranty", "the notes"]
ADVERBS = ["yesterday", "this morning", "last week", "again", "on time", "too late", "very quickly",
           "without asking", "after lunch", "twice", "carefully", "before the deadline", "at night"]
LINKS = ["because", "although", "so", "and then", "but", "while", "after", "before", "unless"]
OPENERS = ["Thanks for the details.", "Good question.", "Here is what I would do.", "I understand.",
           "Sure, let me explain.", "That makes sense.", "Happy to help with that."]
ASKS = ["Can you help me understand why", "Please explain what happens when", "I am worried that",
        "Could you tell me if", "What should I do now that", "Is it normal that", "Why do you think"]
SYSTEMS = ["You are a concise support assistant.", "You help small businesses with operations.",
           "Answer politely and in plain English.", "You are an expert travel and logistics planner."]


def clause(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ADVERBS)}"


def sentence(rng: random.Random) -> str:
    text = clause(rng)
    if rng.random() < 0.45:
        text += f" {rng.choice(LINKS)} {clause(rng)}"
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!"])


def paragraph(rng: random.Random, n_words: int, *, asking: bool) -> str:
    """About ``n_words`` words of sentences; questions for users, an opener for the assistant."""
    parts = [f"{rng.choice(ASKS)} {clause(rng)}?" if asking else rng.choice(OPENERS)]
    words = len(parts[0].split())
    while words < n_words:
        s = sentence(rng)
        parts.append(s)
        words += len(s.split())
    return " ".join(parts)


def lognormal_words(rng: random.Random, median: float, sigma: float, cap: int = 900) -> int:
    return max(3, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def make_conversation(rng: random.Random) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
    turns = rng.choices([1, 2, 3], weights=[0.7, 0.2, 0.1])[0]
    for _ in range(turns):
        msgs.append({"role": "user", "content": paragraph(rng, lognormal_words(rng, 35, 0.9), asking=True)})
        msgs.append({"role": "assistant",
                     "content": paragraph(rng, lognormal_words(rng, 70, 0.9), asking=False)})
    return msgs


def fit(messages: list[dict[str, str]], n_tokens: Callable[[list[dict]], int], max_length: int
        ) -> list[dict[str, str]]:
    """Shorten the longest message (by whole sentences) until the chat fits ``max_length`` tokens."""
    while n_tokens(messages) > max_length:
        longest = max((m for m in messages if m["role"] != "system"), key=lambda m: len(m["content"]))
        sents = longest["content"].split(". ")
        longest["content"] = ". ".join(sents[: max(1, int(len(sents) * 0.8))])
        if len(sents) == 1:
            longest["content"] = " ".join(longest["content"].split()[: -10])
    return messages


def make_dataset(n: int, tokenizer: Any, *, seed: int = 1234, max_length: int = 1024) -> list[dict]:
    """``n`` chat records ``{"messages": [...]}``, each fitting ``max_length`` tokens."""
    from tunehouse.data.tokenize import encode_chat

    rng = random.Random(seed)

    def n_tokens(msgs: list[dict]) -> int:
        return len(encode_chat(tokenizer, msgs).input_ids)

    return [{"messages": fit(make_conversation(rng), n_tokens, max_length)} for _ in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def token_stats(rows: list[dict], tokenizer: Any) -> dict[str, Any]:
    """Lengths under tunehouse's encoding: tokens, assistant (trained) tokens, padding of random batches."""
    from tunehouse.data.tokenize import encode_chat

    encs = [encode_chat(tokenizer, r["messages"]) for r in rows]
    lengths = sorted(len(e.input_ids) for e in encs)
    trained = sum(sum(1 for x in e.labels[1:] if x != -100) for e in encs)
    total = sum(lengths)
    rng = random.Random(0)
    order = list(range(len(encs)))
    rng.shuffle(order)
    padded = 0
    for s in range(0, len(order), 8):  # what random batches of 8 pad to
        batch = [len(encs[i].input_ids) for i in order[s:s + 8]]
        padded += max(batch) * len(batch)
    return {"examples": len(rows), "tokens": total, "assistant_tokens": trained,
            "assistant_fraction": trained / total, "mean_length": total / len(rows),
            "median_length": lengths[len(lengths) // 2], "max_length": lengths[-1],
            "p90_length": lengths[int(len(lengths) * 0.9)],
            "multi_turn": sum(1 for r in rows if sum(m["role"] == "assistant" for m in r["messages"]) > 1),
            "padding_fraction_random_batches_of_8": 1 - total / padded}


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, torch version and current load (timings are only as good as idle)."""
    import torch

    model = platform.processor() or "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal")).split()[1])
        mem_gb = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags.split()]
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": mem_gb, "isa": isa,
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": list(os.getloadavg()), "cuda": torch.cuda.is_available()}


def pytorch_cache_defaults() -> None:
    """Undo the kernel-cache bounds that importing tunehouse set (``tunehouse/__init__.py``) in
    this process and the processes it starts: the baseline runs keep PyTorch's defaults, as
    their users have them. Call it before torch's first matmul (when the capacities are read)."""
    import tunehouse

    for name in tunehouse.BOUNDED_CACHES:
        os.environ.pop(name, None)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) this process and its child processes (running or ended) have
    used: less sensitive than wall time to a busy machine."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # children: ended and waited for
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in child_pids():
        try:  # utime and stime: fields 14 and 15, after the parenthesised command name
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def child_pids(pid: int | str = "self") -> list[int]:
    """The running child processes of ``pid`` (Linux; none elsewhere)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return out


class TreeMemory:
    """Peak resident memory of this process and its worker processes together.

    A forked worker shares the pages it has not written with its parent (the frozen weights,
    most of the interpreter), so adding the workers' resident sets would count those several
    times. What the process tree holds is this process's resident set plus each worker's pages
    that it does not share. A thread samples every resident set ten times a second
    (``/proc/<pid>/statm``: counters, cheap); each worker's shared pages are measured from its
    page tables (``smaps_rollup``) only when ``shared()`` is called, between steps, and the
    smallest measure is taken for all samples, which errs towards more memory. Walking a
    process's page tables while it computes slows it down (about 12% at five walks a second),
    hence not from the thread. ``peak_mb()`` is at least this process's ``ru_maxrss``.
    """

    def __init__(self, interval: float = 0.1):
        self.samples: list[tuple[int, dict[int, int]]] = []
        self.min_shared: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        from tunehouse.train.parallel import resident_bytes

        while not self._stop.is_set():
            self.samples.append((resident_bytes(), {pid: resident_bytes(pid) for pid in child_pids()}))
            self._stop.wait(interval)

    def shared(self) -> None:
        """Measure the running workers' shared pages (call while they are idle)."""
        from tunehouse.train.parallel import smaps_rollup

        for pid in child_pids():
            r = smaps_rollup(pid)
            shared = r.get("Shared_Clean", 0) + r.get("Shared_Dirty", 0)
            self.min_shared[pid] = min(self.min_shared.get(pid, shared), shared)

    def peak_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        peak = max((own + sum(max(0, rss - self.min_shared.get(pid, 0)) for pid, rss in kids.items())
                    for own, kids in self.samples), default=0)
        return max(peak / 2**20, peak_rss_mb())


def set_threads() -> int:
    """torch threads = cores (both intra-op and inter-op left to torch's defaults otherwise)."""
    import torch

    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
