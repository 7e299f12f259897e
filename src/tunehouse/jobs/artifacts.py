"""Where a job's files live and how its servable models are published.

``$TUNEHOUSE_HOME/jobs/<job-id>/run`` is the training output directory (resumable);
``$TUNEHOUSE_HOME/jobs/<job-id>/attempt-N.log`` the training process's log;
``$TUNEHOUSE_HOME/models/ft/<job-id>/attempt-N/{final,ckpt-step-K}`` the published adapters
(one directory per attempt: a stale attempt never overwrites a newer one's model). Publishing
hard-links the files of a *complete* checkpoint (they are never rewritten in place), so the
trainer may prune its own checkpoints without breaking a model that is being served.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunehouse.paths import home
from tunehouse.store import ids
from tunehouse.store.files import models_root, remove_model_dir

ORG_NAME = "tunehouse"
# Files a served adapter does not need (resume state and checkpoint bookkeeping).
_NOT_SERVED = {"optimizer.safetensors", "optimizer.json", "trainer_state.json", "MANIFEST.json",
               "checkpoints", "metrics.jsonl", "metrics.csv", "loss.png"}


def job_dir(job_id: str) -> Path:
    d = home() / "jobs" / ids.check("job", job_id)
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_dir(job_id: str) -> Path:
    return job_dir(job_id) / "run"


def model_dir(job_id: str, name: str) -> Path:
    return models_root() / ids.check("job", job_id) / name


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape: ``ft:{base}:{org}:{suffix}:{id}`` (empty suffix allowed)."""
    return f"ft:{base}:{ORG_NAME}:{suffix or ''}:{ids.short(job_id)}"


def publish(source: Path, target: Path) -> Path:
    """Hard-link (or copy) the servable files of ``source`` to ``target``, atomically."""
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if rel.parts[0] in _NOT_SERVED or any(p.startswith(".tmp") for p in rel.parts):
            continue
        dest = tmp / rel
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def remove(path: str | Path) -> None:
    """Delete a published model directory (only inside the models tree), and its
    ``attempt-N`` parent once that is empty."""
    remove_model_dir(path)
    parent = Path(path).parent
    if parent.name.startswith("attempt-"):
        try:
            parent.rmdir()
        except OSError:  # other models of that attempt remain (or it is gone)
            pass
