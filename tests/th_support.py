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


def remote_code_model(source: Path, target: Path, marker: Path, *,
                      in_file: str = "config.json") -> Path:
    """A copy of the model dir ``source`` whose ``in_file`` maps classes to its own module
    (``auto_map``); importing that module would create ``marker``."""
    import shutil

    shutil.copytree(source, target)
    (target / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    cfg = json.loads((target / in_file).read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                       "AutoTokenizer": ["evil.EvilTokenizer", None]}
    (target / in_file).write_text(json.dumps(cfg))
    return target


def children(pid: int) -> list[int]:
    """Child pids of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out
