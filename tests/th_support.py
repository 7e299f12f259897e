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


def lora_model(tok, dtype=None, dropout=0.0):
    """A tiny random Llama (hidden 64, two layers) with LoRA r=4 on every linear layer, its
    adapters random (B non-zero, so they change outputs and gradients)."""
    import torch

    from tunehouse.config import LoraConfig, TrainConfig
    from tunehouse.models.tiny import build_model
    from tunehouse.train.model import wrap_for_training

    cfg = TrainConfig(train_file="unused.jsonl", lora=LoraConfig(r=4, alpha=8, dropout=dropout))
    model = wrap_for_training(build_model(tok, hidden_size=64, seed=7).to(dtype or torch.float32), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def run(model, ids, autocast=False):
    """Logits of ``ids`` and the gradients of a fixed function of them."""
    import torch

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits.float()
    weights = torch.linspace(-1, 1, logits.shape[-1])
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def ids_for(tok):
    import torch

    torch.manual_seed(3)
    return torch.randint(0, len(tok), (2, 19))


def count_applies(monkeypatch, node) -> dict:
    """Count the calls of an autograd Function's ``apply`` from now on (``["n"]``), so that a
    test of a fused node cannot pass on the module's own fallback alone."""
    calls = {"n": 0}
    apply = node.apply

    def counted(*args):
        calls["n"] += 1
        return apply(*args)

    monkeypatch.setattr(node, "apply", counted)
    return calls
