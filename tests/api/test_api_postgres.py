"""``tunehouse serve --database postgresql+psycopg://...``: the SDK workflow on a real PostgreSQL
server (a throwaway cluster, see ``pg_support``): upload, fine-tune, poll, chat with ``ft:``."""

from __future__ import annotations

import io

from api_support import chat_example, jsonl, start_server, stop_server, wait_job
from sqlalchemy import select

from pg_support import pg_cluster, pg_url  # noqa: F401 (fixtures)
from tunehouse.store import Database
from tunehouse.store.models import JobRow


def test_fine_tune_and_chat_with_the_jobs_in_postgresql(tmp_path, tiny_model_dir, pg_url):  # noqa: F811
    srv = start_server(tmp_path, tiny_model_dir, workers=1, lease_seconds=3,
                       extra_args=("--database", pg_url))
    try:
        client = srv.client()
        train = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(
            [chat_example(i) for i in range(12)]))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=srv.model, training_file=train.id, suffix="pg",
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 4}}})
        job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"), timeout=180)
        assert job.status == "succeeded", job.error
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any("successfully completed" in e.message for e in events)
        reply = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "Colour 3: gold?"}],
            max_tokens=4, temperature=0)
        assert reply.choices[0].message.content is not None
        assert not (srv.home / "tunehouse.db").exists()  # nothing went to SQLite
    finally:
        stop_server(srv)
    db = Database(pg_url)
    try:  # the rows really are in PostgreSQL
        with db.read() as s:
            row = s.scalar(select(JobRow).where(JobRow.id == job.id))
        assert row.status == "succeeded" and row.attempt == 1 and row.worker_id is None
    finally:
        db.dispose()
