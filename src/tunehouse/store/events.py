"""Job events, per-step metrics, checkpoints and servable models (data access only).

Events and checkpoints are listed newest first with ``after=<id>`` paging, like OpenAI's API.
Every metrics dict the trainer reports is kept verbatim per step and attempt, so a dashboard
can draw live loss curves from ``list_metrics``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tunehouse.errors import ModelNotFound
from tunehouse.store import ids
from tunehouse.store.db import Database
from tunehouse.store.models import CheckpointRow, EventRow, MetricRow, ModelRow


def add_event(s: Session, job_id: str, level: str, message: str, *, type: str = "message",
              data: dict[str, Any] | None = None) -> EventRow:
    """Append an event to a job (inside the caller's transaction)."""
    row = EventRow(id=ids.new_id("event"), job_id=job_id, created_at=ids.now(), level=level,
                   message=message, type=type, data=data)
    s.add(row)
    return row


def _page(s: Session, model: Any, job_id: str, after: str | None, limit: int) -> tuple[list, bool]:
    q = select(model).where(model.job_id == job_id)
    if after:
        cursor = s.scalar(select(model.seq).where(model.id == after, model.job_id == job_id))
        if cursor is not None:
            q = q.where(model.seq < cursor)
    rows = list(s.scalars(q.order_by(model.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_events(db: Database, *, job_id: str, after: str | None = None, limit: int = 20
                ) -> tuple[list[EventRow], bool]:
    """A job's events, newest first (ownership is checked by the caller via ``get_job``)."""
    with db.read() as s:
        return _page(s, EventRow, job_id, after, limit)


def list_checkpoints(db: Database, *, job_id: str, after: str | None = None, limit: int = 10
                     ) -> tuple[list[CheckpointRow], bool]:
    """A job's kept checkpoints, newest first."""
    with db.read() as s:
        return _page(s, CheckpointRow, job_id, after, limit)


def add_metrics(s: Session, job_id: str, attempt: int, data: dict[str, Any]) -> None:
    s.add(MetricRow(job_id=job_id, attempt=attempt, step=int(data.get("step", 0)),
                    created_at=time.time(), data=data))


def list_metrics(db: Database, *, job_id: str, after: int | None = None
                 ) -> list[dict[str, Any]]:
    """Every stored metrics dict of a job in step order (only steps > ``after`` if given);
    a resumed step keeps its latest row."""
    q = select(MetricRow).where(MetricRow.job_id == job_id)
    if after is not None:
        q = q.where(MetricRow.step > after)
    with db.read() as s:
        rows = s.scalars(q.order_by(MetricRow.seq)).all()
    by_step: dict[int, dict[str, Any]] = {}
    for r in rows:
        by_step[r.step] = r.data
    return [by_step[k] for k in sorted(by_step)]


def add_checkpoint(s: Session, *, job_id: str, owner: str, step: int, model_id: str, path: str,
                   metrics: dict[str, Any]) -> CheckpointRow:
    """Record a servable checkpoint and its model id (a retried attempt that saves the same
    step again updates the existing rows)."""
    row = s.scalar(select(CheckpointRow).where(
        CheckpointRow.fine_tuned_model_checkpoint == model_id))
    if row is not None:
        row.created_at, row.metrics = ids.now(), metrics
        add_model(s, model_id=model_id, owner=owner, job_id=job_id, kind="checkpoint", path=path)
        return row
    row = CheckpointRow(id=ids.new_id("checkpoint"), job_id=job_id, created_at=ids.now(),
                        step_number=step, fine_tuned_model_checkpoint=model_id, metrics=metrics)
    s.add(row)
    add_model(s, model_id=model_id, owner=owner, job_id=job_id, kind="checkpoint", path=path)
    return row


def prune_checkpoints(s: Session, *, job_id: str, keep: int) -> list[str]:
    """Drop all but the newest ``keep`` checkpoints; return the dropped model directories."""
    rows = s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                     .order_by(CheckpointRow.step_number.desc())).all()
    paths = []
    for row in rows[keep:]:
        model = s.scalar(select(ModelRow).where(ModelRow.id == row.fine_tuned_model_checkpoint))
        if model is not None:
            paths.append(model.path)
            s.delete(model)
        s.delete(row)
    return paths


def add_model(s: Session, *, model_id: str, owner: str, job_id: str, kind: str, path: str
              ) -> ModelRow:
    existing = s.scalar(select(ModelRow).where(ModelRow.id == model_id))
    if existing is not None:  # a retried attempt re-registers the same step: update in place
        existing.path, existing.created_at = path, ids.now()
        return existing
    row = ModelRow(id=model_id, owner=owner, job_id=job_id, kind=kind, created_at=ids.now(),
                   path=path)
    s.add(row)
    return row


def get_model(db: Database, *, owner: str, model_id: str) -> ModelRow:
    """A fine-tuned model or checkpoint of ``owner``, else ``ModelNotFound`` (404)."""
    with db.read() as s:
        row = s.scalar(select(ModelRow).where(ModelRow.id == model_id, ModelRow.owner == owner))
    if row is None:
        raise ModelNotFound(f"The model '{model_id[:200]}' does not exist or you do not have "
                            "access to it.")
    return row


def list_models(db: Database, *, owner: str) -> list[ModelRow]:
    with db.read() as s:
        return list(s.scalars(select(ModelRow).where(ModelRow.owner == owner)
                              .order_by(ModelRow.seq)))


def delete_model(db: Database, *, owner: str, model_id: str) -> ModelRow:
    """Remove a fine-tuned model (or checkpoint) row; the caller removes its directory."""
    row = get_model(db, owner=owner, model_id=model_id)
    with db.write() as s:
        s.execute(delete(ModelRow).where(ModelRow.id == model_id))
        s.execute(delete(CheckpointRow).where(CheckpointRow.fine_tuned_model_checkpoint == model_id))
    return row
