"""Held-out examples for evaluation: the last assistant message is the reference answer.

Reading is strict and line-exact: a missing file, an empty file, a line that is not a chat
example or a chat without an assistant message is one clear ``InvalidFile`` error naming the
file and line. Few-shot prompts reuse training examples as earlier user/assistant turns.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tunehouse.errors import InvalidFile


@dataclass(frozen=True)
class HeldoutExample:
    """One evaluation item: the conversation before the reference, and the reference."""

    line: int
    prompt: list[dict]  # messages the candidates answer (ends with a user/tool turn)
    reference: str  # content of the last assistant message
    tools: list | None = None

    @property
    def full(self) -> list[dict]:
        """The conversation with the reference answer appended (for reference loss)."""
        return [*self.prompt, {"role": "assistant", "content": self.reference}]

    def last_user_text(self) -> str:
        """The last user message's text, for report tables."""
        for msg in reversed(self.prompt):
            if msg.get("role") == "user":
                return _text(msg.get("content"))
        return ""


def _text(content: object) -> str:
    """Message content as text (OpenAI content parts are joined)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _read_records(path: str | Path) -> list[tuple[int, dict]]:
    """``(line_number, record)`` for every non-blank line; raises on unreadable input."""
    p = Path(path)
    if not p.is_file():
        raise InvalidFile(f"{path}: no such file", code="file_not_found")
    records: list[tuple[int, dict]] = []
    with p.open(encoding="utf-8", errors="strict") as fh:
        try:
            for no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError as err:
                    raise InvalidFile(f"{path}, line {no}: not valid JSON ({err.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
                    raise InvalidFile(
                        f"{path}, line {no}: expected an object with a 'messages' list")
                records.append((no, rec))
        except UnicodeDecodeError:
            raise InvalidFile(f"{path}: not UTF-8 text") from None
    if not records:
        raise InvalidFile(f"{path}: the file is empty; it needs at least one chat example")
    return records


def _split(path: str | Path, no: int, rec: dict) -> HeldoutExample:
    """Cut a chat at its last assistant message."""
    messages = rec["messages"]
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidFile(f"{path}, line {no}: messages[{i}] needs a 'role'")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise InvalidFile(
            f"{path}, line {no}: no assistant message; the last assistant message is the "
            "reference answer"
        )
    reference = _text(messages[last].get("content"))
    if not reference.strip():
        raise InvalidFile(f"{path}, line {no}: the last assistant message has no text content")
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:last]]
    if not any(m["role"] == "user" for m in prompt):
        raise InvalidFile(f"{path}, line {no}: no user message before the last assistant message")
    return HeldoutExample(line=no, prompt=prompt, reference=reference, tools=rec.get("tools"))


def load_heldout(path: str | Path, limit: int | None = None) -> list[HeldoutExample]:
    """Held-out examples from a chat JSONL file (the first ``limit`` when given)."""
    examples = [_split(path, no, rec) for no, rec in _read_records(path)]
    return examples[:limit] if limit else examples


def load_shots(path: str | Path, k: int, *, exclude: list[HeldoutExample] | None = None,
               seed: int = 0) -> list[list[dict]]:
    """``k`` training examples (fixed-seed sample) as user/assistant turn lists.

    System messages are dropped (the held-out example's own system prompt is kept) and
    examples whose prompt equals a held-out prompt are skipped so answers do not leak.
    """
    seen = {json.dumps(e.prompt[-1:], sort_keys=True) for e in exclude or []}
    pool = []
    for no, rec in _read_records(path):
        ex = _split(path, no, rec)
        if json.dumps(ex.prompt[-1:], sort_keys=True) in seen:
            continue
        turns = [m for m in ex.full if m["role"] in ("user", "assistant")]
        pool.append(turns)
    if len(pool) < k:
        raise InvalidFile(f"{path}: --few-shot {k} needs {k} examples, the file has {len(pool)} "
                          "usable ones")
    rng = random.Random(seed)
    return rng.sample(pool, k)


def with_shots(example: HeldoutExample, shots: list[list[dict]]) -> list[dict]:
    """The example's prompt with the shots inserted as earlier turns (after any system prompt)."""
    system = [m for m in example.prompt if m["role"] == "system"]
    rest = [m for m in example.prompt if m["role"] != "system"]
    return [*system, *(m for shot in shots for m in shot), *rest]
