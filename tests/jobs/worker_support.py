"""Helpers for worker tests (importable as ``worker_support``): jobs created directly in the
store, ``python -m tunehouse.jobs.worker`` processes, /proc lookups and polling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tunehouse.store import events as ev
from tunehouse.store import files as filestore
from tunehouse.store import ids
from tunehouse.store import jobs as jobstore


def upload(env: dict, n: int = 24) -> str:
    """A chat file of ``n`` colour-code examples, stored as an uploaded file."""
    file_id = ids.new_id("file")
    words = ["red", "blue", "green", "gold", "gray"]
    src = env["tmp"] / f"{file_id}.jsonl"
    src.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Colour {i}: {words[i % 5]}?"},
        {"role": "assistant", "content": f"code-{words[i % 5]}"}]}) + "\n" for i in range(n)))
    filestore.store_copy(src, file_id)
    filestore.create_file(env["db"], owner="", file_id=file_id, filename="t.jsonl",
                          purpose="fine-tune", nbytes=src.stat().st_size)
    return file_id


def new_job(env: dict, model_dir: Path, file_id: str, *, epochs: int = 2, max_attempts: int = 3
            ) -> str:
    hp = {"n_epochs": epochs, "batch_size": 4, "learning_rate_multiplier": "auto"}
    return jobstore.create_job(
        env["db"], owner="", model=model_dir.name, base_source=str(model_dir),
        training_file=file_id, validation_file=None, suffix="t", seed=7, metadata=None,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        hyperparameters=hp, integrations=None, max_attempts=max_attempts).id


def start_worker(env: dict, *, lease: float = 2.0, faults: str = "") -> subprocess.Popen:
    log = open(env["tmp"] / f"worker-{len(env['procs'])}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunehouse.jobs.worker", "--database", env["db"].url,
         "--lease-seconds", str(lease), "--poll-seconds", "0.2"],
        env={**os.environ, "TUNEHOUSE_FAULTS": faults}, stdout=log, stderr=subprocess.STDOUT)
    env["procs"].append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job(env: dict, job_id: str):
    return jobstore.get_job(env["db"], owner="", job_id=job_id)


def messages(env: dict, job_id: str) -> list[str]:
    rows, _ = ev.list_events(env["db"], job_id=job_id, limit=1000)
    return [r.message for r in reversed(rows)]
