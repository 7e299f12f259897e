"""Plain helpers shared by tests (importable as ``th_support``; conftest names collide)."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def chat_example(i: int) -> dict:
    """A trivially learnable example: the answer is a fixed function of the question."""
    word = ["red", "blue", "green", "gold", "gray"][i % 5]
    return {"messages": [
        {"role": "system", "content": "Answer with the colour code."},
        {"role": "user", "content": f"Colour {i}: {word}?"},
        {"role": "assistant", "content": f"code-{word}"},
    ]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def embedded_home() -> str:
    """The real tunehouse home (where the embedded model was converted once)."""
    return os.environ.get("TUNEHOUSE_HOME") or str(Path.home() / ".tunehouse")
