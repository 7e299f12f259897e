"""The store: SQLite settings, job claims with leases and fencing, controls, owner scoping."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tunehouse.errors import InvalidConfig, InvalidRequest, NotFound
from tunehouse.store import Database, ids
from tunehouse.store import events as ev
from tunehouse.store import files as filestore
from tunehouse.store import jobs as jobstore


@pytest.fixture
def db(tmp_path, monkeypatch) -> Database:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.create_all()
    yield database
    database.dispose()


def _job(db: Database, owner: str = "", **kw) -> str:
    args = dict(owner=owner, model="tiny", base_source="/m/tiny", training_file=ids.new_id("file"),
                validation_file=None, suffix=None, seed=1, metadata=kw.pop("metadata", None),
                method={"type": "supervised"}, hyperparameters={}, integrations=None)
    args.update(kw)
    return jobstore.create_job(db, **args).id


def test_sqlite_is_wal_with_full_sync_and_busy_timeout(db):
    assert db.pragma("journal_mode") == "wal"
    assert db.pragma("synchronous") == 2  # FULL
    assert db.pragma("busy_timeout") >= 10_000


def test_network_filesystem_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("tunehouse.store.db._fs_type", lambda _p: "nfs4")
    with pytest.raises(InvalidConfig, match="network filesystem"):
        Database(f"sqlite:///{tmp_path}/nfs.db")


def test_claims_oldest_first_and_each_job_once(db):
    a, b = _job(db), _job(db)
    c1 = jobstore.claim_job(db, worker_id="w1", lease_s=30)
    c2 = jobstore.claim_job(db, worker_id="w2", lease_s=30)
    assert (c1.job_id, c2.job_id) == (a, b)
    assert (c1.attempt, c2.attempt) == (1, 1)
    assert jobstore.claim_job(db, worker_id="w3", lease_s=30) is None


def test_postgresql_claims_skip_locked_rows():
    from sqlalchemy.dialects import postgresql

    sql = str(jobstore.claim_query(time.time()).compile(dialect=postgresql.dialect()))
    assert sql.rstrip().endswith("FOR UPDATE SKIP LOCKED")


def test_expired_lease_is_reclaimed_and_old_attempt_is_fenced_out(db):
    job_id = _job(db)
    old = jobstore.claim_job(db, worker_id="w1", lease_s=0.2)
    with jobstore.fenced(db, job_id, old.attempt) as (_s, row):
        row.status = "running"
    time.sleep(0.3)
    new = jobstore.claim_job(db, worker_id="w2", lease_s=30)
    assert new.job_id == job_id and new.attempt == 2
    assert jobstore.heartbeat(db, old, lease_s=30) is None  # the stalled worker learns it lost
    with pytest.raises(jobstore.LeaseLost), jobstore.fenced(db, job_id, old.attempt):
        pass
    jobstore.release(db, old, outcome="crashed", error_text="late")  # changes nothing
    row = jobstore.get_job(db, owner="", job_id=job_id)
    assert row.worker_id == "w2" and row.failures == 1 and row.status == "running"
    events, _ = ev.list_events(db, job_id=job_id, limit=50)
    assert any("lost" in e.message for e in events)


def test_crashes_are_bounded_by_max_attempts(db):
    job_id = _job(db, max_attempts=2)
    for attempt in (1, 2):
        claim = jobstore.claim_job(db, worker_id="w", lease_s=30)
        assert claim.attempt == attempt
        jobstore.release(db, claim, outcome="crashed", error_text=f"boom {attempt}")
    row = jobstore.get_job(db, owner="", job_id=job_id)
    assert row.status == "failed"
    assert row.error["code"] == "max_attempts_exceeded" and "boom 2" in row.error["message"]
    assert jobstore.claim_job(db, worker_id="w", lease_s=30) is None


def test_graceful_stop_requeues_without_counting_a_failure(db):
    job_id = _job(db)
    claim = jobstore.claim_job(db, worker_id="w", lease_s=30)
    with jobstore.fenced(db, job_id, claim.attempt) as (_s, row):
        row.status, row.started_at = "running", time.time()
    jobstore.release(db, claim, outcome="stopped")
    row = jobstore.get_job(db, owner="", job_id=job_id)
    assert (row.status, row.failures, row.worker_id) == ("queued", 0, None)


def test_controls_and_their_allowed_states(db):
    job_id = _job(db)
    assert jobstore.control(db, owner="", job_id=job_id, action="pause").status == "paused"
    assert jobstore.claim_job(db, worker_id="w", lease_s=30) is None  # paused: not claimable
    assert jobstore.control(db, owner="", job_id=job_id, action="resume").status == \
        "validating_files"
    assert jobstore.control(db, owner="", job_id=job_id, action="cancel").status == "cancelled"
    assert jobstore.control(db, owner="", job_id=job_id, action="cancel").status == "cancelled"
    with pytest.raises(InvalidRequest, match="status is 'cancelled'"):
        jobstore.control(db, owner="", job_id=job_id, action="resume")


def test_objects_of_another_owner_are_not_found(db):
    job_id = _job(db, owner="alice")
    with pytest.raises(NotFound):
        jobstore.get_job(db, owner="bob", job_id=job_id)
    with pytest.raises(NotFound):
        jobstore.control(db, owner="bob", job_id=job_id, action="cancel")
    with pytest.raises(NotFound):
        jobstore.get_job(db, owner="alice", job_id="ftjob-../../etc/passwd")


def test_list_jobs_pages_newest_first_and_filters_metadata(db):
    made = [_job(db, metadata={"team": "a" if i % 2 else "b"}) for i in range(5)]
    page, more = jobstore.list_jobs(db, owner="", limit=2)
    assert [r.id for r in page] == made[::-1][:2] and more
    page2, _ = jobstore.list_jobs(db, owner="", after=page[-1].id, limit=10)
    assert [r.id for r in page2] == made[::-1][2:]
    only_a, _ = jobstore.list_jobs(db, owner="", metadata={"team": "a"})
    assert {r.id for r in only_a} == {made[1], made[3]}


def test_file_ids_are_checked_before_touching_the_disk(db):
    for bad in ("../../x", "file-../../etc", "file-abc", "", "file-" + "a" * 23 + "/"):
        with pytest.raises(NotFound):
            filestore.file_path(bad)
    assert ids.is_valid("file", ids.new_id("file"))


_CLAIMER = """
import json, sys
from tunehouse.store import Database
from tunehouse.store.jobs import claim_job
db = Database(sys.argv[1]); got = []
while True:
    c = claim_job(db, worker_id=sys.argv[2], lease_s=600)
    if c is None:
        break
    got.append(c.job_id)
print(json.dumps(got))
"""


def test_50_concurrent_creations_then_concurrent_claims_each_exactly_once(db, tmp_path):
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _i: _job(db), range(50)))
    assert len(set(made)) == 50
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, db.url, f"w{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    claimed: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "database is locked" not in err
        claimed += json.loads(out)
    assert sorted(claimed) == sorted(made)  # every job once, none twice
