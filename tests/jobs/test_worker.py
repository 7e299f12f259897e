"""The job worker with real processes and signals: crash retries, kill -9 and resume, cancel.

Jobs are created directly in the store (the HTTP side is covered in ``tests/api``); workers
are ``python -m tunehouse.jobs.worker`` processes training the tiny model in child processes.
``TUNEHOUSE_FAULTS`` slows steps down so that signals land mid-training.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from worker_support import (
    alive,
    job,
    messages,
    new_job,
    start_worker,
    stop,
    upload,
    wait_for,
)

from th_support import children
from tunehouse.store import events as ev
from tunehouse.store import jobs as jobstore


def test_poison_job_fails_after_max_attempts_with_the_error(env, tiny_model_dir):
    job_id = new_job(env, tiny_model_dir, upload(env), max_attempts=2)
    worker = start_worker(env, faults="crash_on_start=1")
    try:
        row = wait_for(lambda: job(env, job_id).status == "failed" and job(env, job_id), 90,
                       "the job to fail")
    finally:
        stop(worker)
    assert row.error["code"] == "max_attempts_exceeded"
    assert "injected fault on start" in row.error["message"]
    assert row.attempt == 2 and row.failures == 2
    assert any("retrying (1 of 2" in m for m in messages(env, job_id))


def test_kill_9_of_the_worker_then_restart_resumes_and_matches_uninterrupted(env, tiny_model_dir):
    file_id = upload(env)
    killed = new_job(env, tiny_model_dir, file_id)
    reference = new_job(env, tiny_model_dir, file_id)
    first = start_worker(env, faults="step_sleep=0.4")
    wait_for(lambda: ev.list_checkpoints(env["db"], job_id=killed)[0], 180, "a first checkpoint")
    kids = children(first.pid)
    assert kids, "the worker trains in a child process"
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: not any(alive(k) for k in kids), 10, "the training child to die too")
    assert job(env, killed).status == "running"  # abandoned: its lease will expire
    second = start_worker(env)
    try:
        wait_for(lambda: job(env, killed).status in ("succeeded", "failed") and
                 job(env, reference).status in ("succeeded", "failed"), 300, "both jobs")
    finally:
        stop(second)
    row = job(env, killed)
    assert row.status == "succeeded", row.error
    assert row.attempt == 2 and row.failures == 1
    text = messages(env, killed)
    assert any("stopped heartbeating" in m for m in text)
    assert any(m.startswith("Resuming fine-tuning") for m in text)
    assert any("Resumed from checkpoint at step" in m for m in text)
    steps = [m["step"] for m in ev.list_metrics(env["db"], job_id=killed)]
    assert steps == list(range(1, row.total_steps + 1))  # every step's metrics stored
    a = load_file(str(Path(ev.get_model(env["db"], owner="", model_id=row.fine_tuned_model).path)
                      / "adapter_model.safetensors"))
    ref = job(env, reference)
    b = load_file(str(Path(ev.get_model(env["db"], owner="", model_id=ref.fine_tuned_model).path)
                      / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_cancel_while_running_stops_the_child_within_seconds(env, tiny_model_dir):
    job_id = new_job(env, tiny_model_dir, upload(env), epochs=5)
    worker = start_worker(env, lease=10, faults="step_sleep=0.5")
    try:
        wait_for(lambda: job(env, job_id).step >= 1, 180, "training to start")
        kids = children(worker.pid)
        n_ckpts = len(ev.list_checkpoints(env["db"], job_id=job_id)[0])
        t0 = time.monotonic()
        jobstore.control(env["db"], owner="", job_id=job_id, action="cancel")
        wait_for(lambda: not any(alive(k) for k in kids), 10, "the child to be killed")
        assert time.monotonic() - t0 < 10
        time.sleep(1.5)
        row = job(env, job_id)
        assert row.status == "cancelled" and row.worker_id is None
        assert len(ev.list_checkpoints(env["db"], job_id=job_id)[0]) == n_ckpts
        assert worker.poll() is None  # the worker survives and waits for the next job
    finally:
        stop(worker)
