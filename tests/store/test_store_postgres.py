"""The store on a real PostgreSQL server (a throwaway cluster, see ``pg_support``).

Schema creation from several processes at once, ``FOR UPDATE SKIP LOCKED`` claims raced by two
processes, lease expiry with fencing, and the row lock that makes a fenced write atomic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import inspect

from pg_support import pg_cluster, pg_url  # noqa: F401 (fixtures)
from tunehouse.store import Database, ids
from tunehouse.store import events as ev
from tunehouse.store import jobs as jobstore


@pytest.fixture
def db(pg_url, tmp_path, monkeypatch) -> Database:  # noqa: F811
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    database = Database(pg_url)
    database.create_all()
    yield database
    database.dispose()


def _job(db: Database) -> str:
    return jobstore.create_job(
        db, owner="", model="tiny", base_source="/m/tiny", training_file=ids.new_id("file"),
        validation_file=None, suffix=None, seed=1, metadata=None, method={"type": "supervised"},
        hyperparameters={}, integrations=None).id


_CREATOR = """
import sys
from tunehouse.store import Database
db = Database(sys.argv[1]); db.create_all(); db.dispose()
"""


def test_schema_is_created_once_by_concurrent_processes(pg_url, tmp_path):  # noqa: F811
    procs = [subprocess.Popen([sys.executable, "-c", _CREATOR, pg_url], stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err  # no "relation already exists" from the race
    db = Database(pg_url)
    try:
        insp = inspect(db.engine)
        assert {"files", "jobs", "events", "metrics", "checkpoints", "models"} <= \
            set(insp.get_table_names())
        assert "ix_jobs_claim" in {i["name"] for i in insp.get_indexes("jobs")}
        types = {c["name"]: str(c["type"]) for c in insp.get_columns("files")}
        assert types["bytes"] == "BIGINT"  # uploads over 2 GiB fit
        db.create_all()  # idempotent
    finally:
        db.dispose()


def test_plain_postgresql_url_uses_psycopg3(pg_cluster):  # noqa: F811
    url = pg_cluster.url().replace("postgresql+psycopg://", "postgresql://")
    db = Database(url)
    try:
        assert db.engine.dialect.driver == "psycopg"
        db.create_all()
    finally:
        db.dispose()


_CLAIMER = """
import json, sys, time
from pathlib import Path
from tunehouse.store import Database
from tunehouse.store.jobs import claim_job
db = Database(sys.argv[1]); got = []
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
while True:
    c = claim_job(db, worker_id=sys.argv[2], lease_s=600)
    if c is None:
        break
    got.append([c.job_id, c.attempt])
    time.sleep(0.01)  # let the other process in
print(json.dumps(got))
"""


def test_two_processes_race_to_claim_30_jobs_each_exactly_once(db, tmp_path):
    made = [_job(db) for _ in range(30)]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, db.url, f"w{i}", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    time.sleep(1.5)  # both are connected and waiting
    go.touch()
    got: dict[str, list] = {}
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        got[f"w{i}"] = json.loads(out)
    claimed = [job for rows in got.values() for job, _attempt in rows]
    assert sorted(claimed) == sorted(made)  # every job once, none twice
    assert all(attempt == 1 for rows in got.values() for _job_id, attempt in rows)
    assert got["w0"] and got["w1"], "both processes claimed (a real race)"
    for worker, rows in got.items():
        for job_id, _ in rows:
            assert jobstore.get_job(db, owner="", job_id=job_id).worker_id == worker


def test_expired_lease_is_requeued_and_the_old_attempt_fenced_out(db):
    job_id = _job(db)
    old = jobstore.claim_job(db, worker_id="w1", lease_s=0.3)
    with jobstore.fenced(db, job_id, old.attempt) as (_s, row):
        row.status, row.started_at = "running", time.time()
    assert jobstore.claim_job(db, worker_id="w2", lease_s=30) is None  # lease still valid
    time.sleep(0.4)
    new = jobstore.claim_job(db, worker_id="w2", lease_s=30)
    assert (new.job_id, new.attempt) == (job_id, 2)
    assert jobstore.heartbeat(db, old, lease_s=30) is None
    with pytest.raises(jobstore.LeaseLost), jobstore.fenced(db, job_id, old.attempt):
        pass
    jobstore.release(db, old, outcome="crashed", error_text="late")  # changes nothing
    row = jobstore.get_job(db, owner="", job_id=job_id)
    assert (row.worker_id, row.failures, row.status, row.attempt) == ("w2", 1, "running", 2)
    assert any("stopped heartbeating" in e.message for e in ev.list_events(db, job_id=job_id)[0])


def test_a_fenced_write_holds_the_row_so_a_claim_cannot_slip_in(db):
    """Without ``FOR UPDATE`` in ``fenced``, a claim could commit attempt 2 between attempt 1's
    check and its write (READ COMMITTED), and the stale attempt would write anyway."""
    job_id = _job(db)
    old = jobstore.claim_job(db, worker_id="w1", lease_s=0.2)
    time.sleep(0.3)  # the lease has expired: the job is claimable
    result: dict[str, object] = {}
    with jobstore.fenced(db, job_id, old.attempt) as (s, _row):
        t = threading.Thread(target=lambda: result.update(
            claim=jobstore.claim_job(db, worker_id="w2", lease_s=30)))
        t.start()
        t.join(10)
        ev.add_event(s, job_id, "info", "written by attempt 1 while it still held the job")
    assert result["claim"] is None  # the locked row was skipped, not taken
    new = jobstore.claim_job(db, worker_id="w2", lease_s=30)
    assert new.attempt == 2
    with pytest.raises(jobstore.LeaseLost), jobstore.fenced(db, job_id, old.attempt):
        pass


def test_controls_and_metrics_on_postgresql(db):
    job_id = _job(db)
    claim = jobstore.claim_job(db, worker_id="w", lease_s=30)
    with jobstore.fenced(db, job_id, claim.attempt) as (s, row):
        row.status, row.started_at = "running", time.time()
        for step in (1, 2, 3):
            ev.add_metrics(s, job_id, claim.attempt, {"step": step, "train_loss": float("1e-3")})
    assert [m["step"] for m in ev.list_metrics(db, job_id=job_id, after=1)] == [2, 3]
    assert jobstore.control(db, owner="", job_id=job_id, action="cancel").status == "cancelled"
    assert jobstore.heartbeat(db, claim, lease_s=30) == "cancelled"
    jobstore.release(db, claim, outcome="done")
    row = jobstore.get_job(db, owner="", job_id=job_id)
    assert (row.status, row.worker_id) == ("cancelled", None)
