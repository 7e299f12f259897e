"""A hung worker (reliability row 22), with real SIGSTOP/SIGCONT on a real worker process tree.

The worker and its training process are frozen mid-job, as a stalled host would be. Their lease
expires, a second worker takes the job over (attempt 2) and finishes it. When the first pair
wakes up it must write nothing: every database write is fenced by the attempt number and the
published model lives in attempt 2's directory, which attempt 1 never touches.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

from sqlalchemy import select
from worker_support import alive, job, messages, new_job, start_worker, stop, upload, wait_for

from th_support import children
from tunehouse.store import events as ev
from tunehouse.store.models import CheckpointRow, EventRow, FileRow, JobRow, MetricRow, ModelRow

LEASE = 2.0


def holds_write_lock(pid: int) -> bool:
    """Whether ``pid`` holds a POSIX write lock (SQLite's write transaction) per /proc/locks."""
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[3] == "WRITE" and parts[4] == str(pid):
            return True
    return False


def freeze(pids: list[int]) -> None:
    """SIGSTOP ``pids`` at a moment when none of them is inside a database write: a process
    stopped while holding SQLite's write lock would block every writer (no lease helps)."""
    for _ in range(200):
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)
        if not any(holds_write_lock(pid) for pid in pids):
            return
        thaw(pids)
        time.sleep(0.02)
    raise AssertionError("could not stop the worker outside a write transaction")


def thaw(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)


def snapshot(env: dict, job_id: str) -> dict:
    """Everything the job owns in the database and the published model files."""
    with env["db"].read() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
        tables = {t.__name__: len(s.scalars(select(t).where(t.job_id == job_id)).all())
                  for t in (EventRow, MetricRow, CheckpointRow, ModelRow)}
        tables["files"] = len(s.scalars(select(FileRow)).all())
        models = sorted((m.id, m.path) for m in s.scalars(select(ModelRow)
                                                          .where(ModelRow.job_id == job_id)))
    state = {k: getattr(row, k) for k in ("status", "attempt", "failures", "worker_id",
                                          "lease_expires_at", "fine_tuned_model", "finished_at",
                                          "step", "error", "result_files")}
    published = env["home"] / "models" / "ft" / job_id
    files = {str(p.relative_to(published)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(published.rglob("*")) if p.is_file()}
    return {"job": state, "rows": tables, "models": models, "files": files}


def test_a_hung_worker_is_replaced_and_writes_nothing_after_it_wakes(env, tiny_model_dir):
    job_id = new_job(env, tiny_model_dir, upload(env), epochs=1)  # 6 steps
    first = start_worker(env, lease=LEASE, faults="step_sleep=0.3")
    try:
        wait_for(lambda: job(env, job_id).step >= 2, 120, "attempt 1 to train")
        assert f":{first.pid}:" in job(env, job_id).worker_id
        start_worker(env, lease=LEASE)  # a second worker: idle until the lease of attempt 1 expires
        kids = children(first.pid)
        assert len(kids) == 1
        frozen = [first.pid, kids[0]]
        freeze(frozen)
        step_at_freeze = job(env, job_id).step
        done = wait_for(lambda: (r := job(env, job_id)).status in ("succeeded", "failed")
                        and r.worker_id is None and r, 180, "attempt 2 to finish and release")
        assert done.status == "succeeded", done.error
        assert done.attempt == 2 and done.failures == 1
        before = snapshot(env, job_id)
        final = ev.get_model(env["db"], owner="", model_id=done.fine_tuned_model).path
        assert Path(final).parts[-2:] == ("attempt-2", "final")

        thaw(frozen)  # attempt 1 wakes up, still believing it holds the job
        wait_for(lambda: not alive(kids[0]), 20, "the stale training process to end")
        time.sleep(LEASE)  # the woken worker heartbeats (and would write) meanwhile
        assert snapshot(env, job_id) == before  # not one row or file changed
        assert first.poll() is None  # the old worker survives and goes back to polling
        log = (env["tmp"] / "worker-0.log").read_text()
        assert "lost the lease" in log or "released" in log
        text = messages(env, job_id)
        assert any("Attempt 1 was lost" in m for m in text)
        assert step_at_freeze < done.step == done.total_steps
    finally:
        thaw([first.pid, *children(first.pid)])
        for proc in env["procs"]:
            stop(proc)
