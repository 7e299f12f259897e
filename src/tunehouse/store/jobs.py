"""Fine-tuning jobs: creation, listing, user controls, and the worker's lease lifecycle.

A worker *claims* a job by setting ``worker_id``, ``lease_expires_at`` and ``attempt += 1`` in
one write transaction (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), then renews the lease by heartbeat. ``attempt`` is a fencing token: every later
write by that worker or its training process names the attempt it holds, and a write for a
stale attempt changes nothing. A job whose lease expired while ``running`` was abandoned (its
worker died): the next claim counts a failure and resumes it; after ``max_attempts`` failures
the job fails with ``max_attempts_exceeded``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from tunehouse.errors import InvalidRequest, NotFound
from tunehouse.store import ids
from tunehouse.store.db import Database
from tunehouse.store.events import add_event
from tunehouse.store.models import JobRow

TERMINAL = ("succeeded", "failed", "cancelled")
ORGANIZATION_ID = "org-tunehouse"


class LeaseLost(Exception):
    """This worker's attempt no longer holds the job (another attempt took over)."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    worker_id: str
    status: str  # the job's status when it was claimed


def create_job(db: Database, *, owner: str, model: str, base_source: str, training_file: str,
               validation_file: str | None, suffix: str | None, seed: int,
               metadata: dict[str, str] | None, method: dict[str, Any],
               hyperparameters: dict[str, Any], integrations: list[Any] | None,
               max_attempts: int = 3) -> JobRow:
    """Insert a job in ``validating_files``, with its first events."""
    row = JobRow(id=ids.new_id("job"), owner=owner, created_at=ids.now(), model=model,
                 base_source=base_source, organization_id=ORGANIZATION_ID,
                 status="validating_files", hyperparameters=hyperparameters, method=method,
                 training_file=training_file, validation_file=validation_file, result_files=[],
                 seed=seed, integrations=integrations, meta=metadata, suffix=suffix,
                 attempt=0, failures=0, max_attempts=max_attempts, step=0)
    files = training_file + (f" and validation file: {validation_file}" if validation_file else "")
    with db.write() as s:
        s.add(row)
        s.flush()
        add_event(s, row.id, "info", f"Created fine-tuning job: {row.id}")
        add_event(s, row.id, "info", f"Validating training file: {files}")
        if integrations:
            add_event(s, row.id, "warn", "Integrations (e.g. wandb) are not supported by "
                      "tunehouse and are ignored; metrics are stored with the job.")
    return row


def get_job(db: Database, *, owner: str, job_id: str) -> JobRow:
    """The job, or ``NotFound`` (the same answer for another owner's job)."""
    ids.check("job", job_id, param="fine_tuning_job_id")
    with db.read() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id, JobRow.owner == owner))
    if row is None:
        raise NotFound(f"Fine-tuning job '{job_id}' not found.", code="fine_tuning_job_not_found",
                       param="fine_tuning_job_id")
    return row


def list_jobs(db: Database, *, owner: str, after: str | None = None, limit: int = 20,
              metadata: dict[str, str] | None = None) -> tuple[list[JobRow], bool]:
    """Jobs newest first; ``after`` is a job id cursor; ``metadata`` filters on exact pairs."""
    q = select(JobRow).where(JobRow.owner == owner).order_by(JobRow.seq.desc())
    out: list[JobRow] = []
    with db.read() as s:
        if after:
            cursor = s.scalar(select(JobRow.seq).where(JobRow.id == after, JobRow.owner == owner))
            if cursor is not None:
                q = q.where(JobRow.seq < cursor)
        for row in s.scalars(q.execution_options(yield_per=200)):
            meta = row.meta or {}
            if metadata and any(meta.get(k) != v for k, v in metadata.items()):
                continue
            out.append(row)
            if len(out) > limit:
                break
    return out[:limit], len(out) > limit


def control(db: Database, *, owner: str, job_id: str, action: str) -> JobRow:
    """Apply ``cancel``, ``pause`` or ``resume``; repeating a completed action is a no-op.

    Raises:
        NotFound: no such job for this owner.
        InvalidRequest: the job's status does not allow the action (e.g. cancel a finished job).
    """
    get_job(db, owner=owner, job_id=job_id)
    allowed = {"cancel": ("validating_files", "queued", "running", "paused"),
               "pause": ("validating_files", "queued", "running"), "resume": ("paused",)}[action]
    done = {"cancel": "cancelled", "pause": "paused", "resume": None}[action]
    with db.write() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id, JobRow.owner == owner)
                       .with_for_update())
        if row is None:  # checked above; jobs are never deleted, but be exact
            raise NotFound(f"Fine-tuning job '{job_id}' not found.",
                           code="fine_tuning_job_not_found", param="fine_tuning_job_id")
        if row.status == done:
            return row
        if row.status not in allowed:
            raise InvalidRequest(f"Cannot {action} job {job_id}: its status is '{row.status}' "
                                 f"(allowed: {', '.join(allowed)}).", code="invalid_job_state",
                                 param="fine_tuning_job_id")
        if action == "cancel":
            row.status, row.finished_at, row.estimated_finish = "cancelled", ids.now(), None
            add_event(s, row.id, "info", "Fine-tuning job cancelled.")
        elif action == "pause":
            row.status, row.estimated_finish = "paused", None
            add_event(s, row.id, "info", "Fine-tuning job paused; a checkpoint is saved and "
                      "training stops. Resume to continue from it.")
        else:
            row.status = "queued" if row.started_at is not None else "validating_files"
            add_event(s, row.id, "info", "Fine-tuning job resumed; it will continue from its "
                      "last checkpoint.")
    return row


def claim_query(t: float) -> Any:
    """The oldest job a worker may take at time ``t``: waiting, or running with an expired
    lease. ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises via BEGIN IMMEDIATE)."""
    lease_free = or_(JobRow.lease_expires_at.is_(None), JobRow.lease_expires_at < t)
    claimable = and_(JobRow.status.in_(("validating_files", "queued", "running")), lease_free)
    return select(JobRow).where(claimable).order_by(JobRow.seq).limit(1) \
        .with_for_update(skip_locked=True)


def claim_job(db: Database, *, worker_id: str, lease_s: float) -> Claim | None:
    """Take the oldest claimable job (queued, or running with an expired lease), if any."""
    while True:
        with db.write() as s:
            t = time.time()
            row = s.scalar(claim_query(t))
            if row is None:
                return None
            if row.status == "running" and row.worker_id is not None:
                row.failures += 1
                row.last_error = f"worker {row.worker_id} stopped (lease expired)"
                add_event(s, row.id, "warn", f"Attempt {row.attempt} was lost: its worker stopped "
                          "heartbeating. The job will resume from its last checkpoint.")
            if row.failures >= row.max_attempts:
                _exhausted(s, row)
                continue
            row.attempt += 1
            row.worker_id, row.lease_expires_at = worker_id, t + lease_s
            return Claim(job_id=row.id, attempt=row.attempt, worker_id=worker_id,
                         status=row.status)


def _exhausted(s: Session, row: JobRow) -> None:
    fail(s, row, code="max_attempts_exceeded",
         message=f"Fine-tuning failed {row.failures} time(s), the maximum allowed; last error: "
                 f"{row.last_error or 'unknown'}")


def fail(s: Session, row: JobRow, *, code: str, message: str, param: str | None = None) -> None:
    """Mark ``row`` failed with OpenAI's ``error {code, message, param}`` and an error event."""
    row.status, row.finished_at, row.estimated_finish = "failed", ids.now(), None
    row.error = {"code": code, "message": message, "param": param}
    row.worker_id, row.lease_expires_at = None, None
    add_event(s, row.id, "error", message)


def heartbeat(db: Database, claim: Claim, *, lease_s: float) -> str | None:
    """Extend the lease; the job's status, or None when this attempt no longer holds it."""
    with db.write() as s:
        res = s.execute(update(JobRow).where(
            JobRow.id == claim.job_id, JobRow.attempt == claim.attempt,
            JobRow.worker_id == claim.worker_id).values(lease_expires_at=time.time() + lease_s))
        if res.rowcount == 0:
            return None
        return s.scalar(select(JobRow.status).where(JobRow.id == claim.job_id))


def release(db: Database, claim: Claim, *, outcome: str, error_text: str | None = None) -> None:
    """Give the job back after its training process ended.

    ``outcome``: ``done`` (the process recorded the result), ``stopped`` (stopped on request
    or shutdown: re-queued without counting a failure) or ``crashed`` (counts a failure; the
    job is re-queued or, after ``max_attempts``, failed).
    """
    with db.write() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == claim.job_id,
                                            JobRow.attempt == claim.attempt,
                                            JobRow.worker_id == claim.worker_id).with_for_update())
        if row is None:
            return  # fenced out: a newer attempt owns the job
        row.worker_id, row.lease_expires_at = None, None
        if row.status in TERMINAL or row.status == "paused":
            return
        if outcome == "stopped":
            row.status = "queued" if row.started_at is not None else "validating_files"
            add_event(s, row.id, "info", "The worker stopped; the job is queued again and will "
                      "resume from its last checkpoint.")
            return
        if outcome == "done":
            error_text = error_text or "the training process exited without a result"
        row.failures += 1
        row.last_error = (error_text or "unknown error")[-2000:]
        if row.failures >= row.max_attempts:
            _exhausted(s, row)
            return
        row.status = "queued" if row.started_at is not None else "validating_files"
        add_event(s, row.id, "warn", f"Attempt {claim.attempt} failed ({row.last_error}); "
                  f"retrying ({row.failures} of {row.max_attempts} failures allowed).")


@contextmanager
def fenced(db: Database, job_id: str, attempt: int) -> Iterator[tuple[Session, JobRow]]:
    """A write transaction on the job, only while ``attempt`` still holds it and the job is
    not finished (a cancelled job gets no more events, metrics or checkpoints). The row is
    locked for the whole transaction (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
    IMMEDIATE`` already excludes other writers), so a claim cannot move the job to a newer
    attempt between the check and the write.

    Raises:
        LeaseLost: a newer attempt has claimed the job, or it ended; nothing is written.
    """
    with db.write() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id).with_for_update())
        if row is None or row.attempt != attempt or row.status in TERMINAL:
            state = "ended" if row is not None and row.status in TERMINAL else "moved on"
            raise LeaseLost(f"job {job_id}: attempt {attempt} no longer holds it ({state})")
        yield s, row
