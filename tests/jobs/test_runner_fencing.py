"""A stale attempt (its lease expired and the job was claimed again) publishes nothing that a
newer attempt or a client could see: no database row, no file under the published model tree."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from worker_support import job, new_job, upload

from tunehouse.jobs import runner
from tunehouse.store import events as ev
from tunehouse.store import jobs as jobstore


def fake_run(root: Path) -> Path:
    """A run directory as the trainer leaves it (only what publishing reads)."""
    root.mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(b"weights of the stale attempt")
    (root / "adapter_config.json").write_text("{}")
    (root / "tunehouse.json").write_text(json.dumps({"hyperparameters": {"n_epochs": 1},
                                                     "trained_tokens": 10}))
    (root / "metrics.csv").write_text("step,train_loss\n1,0.5\n")
    return root


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else []


def test_a_stale_attempt_publishes_no_model_and_no_checkpoint(env, tiny_model_dir):
    job_id = new_job(env, tiny_model_dir, upload(env))
    old = jobstore.claim_job(env["db"], worker_id="w1", lease_s=0.1)
    with jobstore.fenced(env["db"], job_id, old.attempt) as (_s, row):
        row.status, row.started_at = "running", time.time()
    time.sleep(0.2)
    new = jobstore.claim_job(env["db"], worker_id="w2", lease_s=30)
    assert new.attempt == 2
    row = job(env, job_id)
    published = env["home"] / "models" / "ft" / job_id
    files_before = tree(env["home"] / "files")
    run = fake_run(env["tmp"] / "run")

    reporter = runner.JobReporter(env["db"], row, old.attempt, threading.Event())
    with pytest.raises(jobstore.LeaseLost):
        reporter.on_checkpoint(4, str(run), {"step": 4, "train_loss": 0.5}, True)
    with pytest.raises(jobstore.LeaseLost):
        runner.register_result(env["db"], row, old.attempt, run)

    assert tree(published) == []  # its attempt-1 directories were removed again
    assert tree(env["home"] / "files") == files_before  # no result file left behind
    assert ev.list_checkpoints(env["db"], job_id=job_id)[0] == []
    after = job(env, job_id)
    assert (after.status, after.attempt, after.fine_tuned_model) == ("running", 2, None)

    # the attempt that holds the job publishes into its own directory
    reporter = runner.JobReporter(env["db"], after, new.attempt, threading.Event())
    reporter.on_checkpoint(4, str(run), {"step": 4, "train_loss": 0.5}, True)
    assert tree(published) == ["attempt-2", "attempt-2/ckpt-step-4",
                               "attempt-2/ckpt-step-4/adapter_config.json",
                               "attempt-2/ckpt-step-4/adapter_model.safetensors",
                               "attempt-2/ckpt-step-4/tunehouse.json"]
    (ckpt,), _ = ev.list_checkpoints(env["db"], job_id=job_id)
    assert ckpt.step_number == 4
