"""A full disk through the API (reliability row 20), made real with ``RLIMIT_FSIZE``: a write past
the limit fails with EFBIG exactly where a full disk fails with ENOSPC.

* An upload to a server whose files cannot grow answers 507 in OpenAI's envelope and stores
  nothing; a small upload still works.
* A job whose checkpoint write hits the limit (set in the training process after its first
  checkpoint) fails with ``disk_full``; the first checkpoint is intact and no tmp dir is left.
"""

from __future__ import annotations

import io
import json
import resource

import openai
import pytest
from api_support import chat_example, jsonl, start_server, stop_server, wait_job

from tunehouse.models.tiny import save_tiny_model
from tunehouse.train import checkpoint as ck

UPLOAD_LIMIT = 512 * 1024  # bytes any file of the server process may grow to


def _limit_file_size() -> None:  # runs in the server process before exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (UPLOAD_LIMIT, UPLOAD_LIMIT))


def test_upload_on_a_full_disk_gets_507_and_stores_nothing(tmp_path, tiny_model_dir):
    srv = start_server(tmp_path, tiny_model_dir, workers=0, preexec_fn=_limit_file_size,
                       extra_env={"TUNEHOUSE_MAX_UPLOAD_BYTES": str(8 << 20)})
    try:
        client = srv.client()
        big = [{"messages": [{"role": "user", "content": f"Question {i}: " + "x" * 2000},
                             {"role": "assistant", "content": "ok"}]} for i in range(600)]
        data = jsonl(big)
        assert len(data) > 2 * UPLOAD_LIMIT
        with pytest.raises(openai.APIStatusError) as exc:
            client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="fine-tune")
        assert exc.value.status_code == 507
        error = exc.value.response.json()["error"]  # OpenAI's envelope
        assert error["code"] == "disk_full" and error["type"] == "server_error"
        assert "disk space" in error["message"]
        assert list((srv.home / "files").iterdir()) == []  # no staged or partial file
        small = client.files.create(file=("ok.jsonl", io.BytesIO(jsonl(
            [chat_example(i) for i in range(12)]))), purpose="fine-tune")
        assert [f.id for f in client.files.list().data] == [small.id]
    finally:
        stop_server(srv)


def test_checkpoint_on_a_full_disk_fails_the_job_with_disk_full(tmp_path):
    # full fine-tuning of a wider tiny model: a 12 MB model.safetensors per checkpoint, far
    # above everything else the training process writes (SQLite WAL, logs, metrics)
    model = save_tiny_model(tmp_path / "wide-llama", hidden_size=384)
    srv = start_server(tmp_path, model, workers=1, extra_env={
        "TUNEHOUSE_JOB_DEFAULTS": json.dumps({"full": True, "save_every": 1}),
        "TUNEHOUSE_FAULTS": f"fsize_limit_after_checkpoint={8 << 20}"})
    try:
        client = srv.client()
        train = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(
            [chat_example(i) for i in range(12)]))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=srv.model, training_file=train.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1,
                                                                     "batch_size": 4}}})
        job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"), timeout=180)
    finally:
        stop_server(srv)
    assert job.status == "failed"
    assert job.error.code == "disk_full", job.error
    assert "previous checkpoint is intact" in job.error.message
    assert job.fine_tuned_model is None
    ckpts = srv.home / "jobs" / job.id / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001"]  # no tmp-* left
    assert ck.verify(ckpts / "step-000001").step == 1  # every file matches its checksum
