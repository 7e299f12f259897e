"""SIGKILL of the API, its worker and the training process, then a restart (reliability row 24):
no job is lost, the job whose lease died with its worker is resumed, and SQLite is intact."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time
from pathlib import Path

from api_support import chat_example, jsonl, start_server, stop_server, wait_job

from th_support import children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_kill_9_of_api_and_worker_then_restart_loses_no_job(tmp_path, tiny_model_dir):
    srv = start_server(tmp_path, tiny_model_dir, workers=1, lease_seconds=2,
                       extra_env={"TUNEHOUSE_FAULTS": "step_sleep=0.4"})
    try:
        client = srv.client()
        train = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(
            [chat_example(i) for i in range(12)]))), purpose="fine-tune")
        hp = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1,
                                                                       "batch_size": 4}}}
        running, waiting = (client.fine_tuning.jobs.create(model=srv.model, training_file=train.id,
                                                           method=hp).id for _ in range(2))
        deadline = time.monotonic() + 120
        while client.fine_tuning.jobs.retrieve(running).status != "running":
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.2)
        tree = process_tree(srv.proc.pid)
        assert len(tree) >= 3  # serve, its worker, the training process
        for pid in tree:  # all at once, as a power cut or the OOM killer would
            os.kill(pid, signal.SIGKILL)
        srv.proc.wait()
    finally:
        stop_server(srv)
    db = srv.home / "tunehouse.db"
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    rows = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
    conn.close()
    assert rows[running] == "running"  # abandoned: its lease expires, nobody released it
    assert rows[waiting] in ("validating_files", "queued")

    srv = start_server(tmp_path, tiny_model_dir, workers=1, lease_seconds=2)
    try:
        client = srv.client()
        for job_id in (running, waiting):
            job = wait_job(client, job_id, ("succeeded", "failed", "cancelled"), timeout=180)
            assert job.status == "succeeded", job.error
        events = [e.message for e in client.fine_tuning.jobs.list_events(running, limit=200).data]
        assert any("Attempt 1 was lost" in m for m in events)
        assert not any("was lost" in e.message
                       for e in client.fine_tuning.jobs.list_events(waiting, limit=200).data)
    finally:
        stop_server(srv)
    assert integrity(db) == "ok"
