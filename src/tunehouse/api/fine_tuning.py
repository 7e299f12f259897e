"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events, checkpoints.

The API only records jobs and user controls; workers claim and train them (``tunehouse.jobs``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from fastapi import APIRouter, Query, Request

from tunehouse.api.deps import AppState, Owner, State
from tunehouse.api.protocol import MAX_SEED, CreateJobRequest, Hyperparameters
from tunehouse.errors import InvalidRequest
from tunehouse.store import events as ev
from tunehouse.store import files as filestore
from tunehouse.store import jobs as jobstore
from tunehouse.store.models import CheckpointRow, EventRow, JobRow

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])
_META_PARAM = re.compile(r"^metadata\[(.{1,64})\]$")


def job_object(row: JobRow) -> dict[str, Any]:
    """OpenAI's ``fine_tuning.job`` object."""
    return {
        "id": row.id, "object": "fine_tuning.job", "created_at": row.created_at,
        "error": row.error, "fine_tuned_model": row.fine_tuned_model,
        "finished_at": row.finished_at, "hyperparameters": row.hyperparameters,
        "model": row.model, "organization_id": row.organization_id,
        "result_files": row.result_files or [], "seed": row.seed, "status": row.status,
        "trained_tokens": row.trained_tokens, "training_file": row.training_file,
        "validation_file": row.validation_file, "estimated_finish": row.estimated_finish,
        "integrations": row.integrations, "metadata": row.meta, "method": row.method,
        "user_provided_suffix": row.suffix,
    }


def event_object(row: EventRow) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.event", "created_at": row.created_at,
            "level": row.level, "message": row.message, "type": row.type,
            "data": row.data if row.data is not None else {}}


def checkpoint_object(row: CheckpointRow) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.checkpoint", "created_at": row.created_at,
            "fine_tuned_model_checkpoint": row.fine_tuned_model_checkpoint,
            "fine_tuning_job_id": row.job_id, "step_number": row.step_number,
            "metrics": row.metrics}


def _method(body: CreateJobRequest) -> tuple[str, dict[str, Any]]:
    """The method type and its hyperparameters (``method`` or the deprecated top level)."""
    kind = body.method.type if body.method else "supervised"
    if kind == "reinforcement":
        raise InvalidRequest("Reinforcement fine-tuning is not supported; use 'supervised' or "
                             "'dpo'.", param="method.type", code="unsupported_method")
    inner = getattr(body.method, kind, None) if body.method else None
    hp_model = inner.hyperparameters if inner is not None else None
    if hp_model is not None and body.hyperparameters is not None:
        raise InvalidRequest(f"Give hyperparameters either in method.{kind}.hyperparameters or "
                             "in the deprecated top-level hyperparameters, not both.",
                             param="hyperparameters")
    hp_model = hp_model or body.hyperparameters or Hyperparameters()
    return kind, hp_model.model_dump()


def _check_file(state: AppState, owner: str, file_id: str, param: str) -> None:
    row = filestore.get_file(state.db, owner=owner, file_id=file_id, param=param)
    if row.purpose != "fine-tune":
        raise InvalidRequest(f"File {file_id} has purpose '{row.purpose}'; {param} needs a file "
                             "uploaded with purpose 'fine-tune'.", param=param,
                             code="invalid_file_purpose")


@router.post("/jobs")
def create_job(body: CreateJobRequest, state: State, owner: Owner) -> dict[str, Any]:
    if not state.is_base(body.model):
        raise InvalidRequest(f"Model '{body.model[:200]}' is not available for fine-tuning on "
                             f"this server; use '{state.settings.base_id}'.", param="model",
                             code="model_not_available")
    kind, hp = _method(body)
    _check_file(state, owner, body.training_file, "training_file")
    if body.validation_file:
        _check_file(state, owner, body.validation_file, "validation_file")
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    row = jobstore.create_job(
        state.db, owner=owner, model=state.settings.base_id,
        base_source=state.settings.base_model, training_file=body.training_file,
        validation_file=body.validation_file, suffix=body.suffix, seed=seed,
        metadata=body.metadata, method={"type": kind, kind: {"hyperparameters": hp}},
        hyperparameters={k: v for k, v in hp.items() if k != "beta"},
        integrations=body.integrations, max_attempts=state.settings.max_attempts)
    return job_object(row)


@router.get("/jobs")
def list_jobs(request: Request, state: State, owner: Owner, after: str | None = None,
              limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    meta = {}
    for key, value in request.query_params.multi_items():
        m = _META_PARAM.match(key)
        if m:
            meta[m.group(1)] = value
    rows, more = jobstore.list_jobs(state.db, owner=owner, after=after, limit=limit,
                                    metadata=meta or None)
    return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}


@router.get("/jobs/{job_id}")
def retrieve_job(job_id: str, state: State, owner: Owner) -> dict[str, Any]:
    return job_object(jobstore.get_job(state.db, owner=owner, job_id=job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, state: State, owner: Owner) -> dict[str, Any]:
    return job_object(jobstore.control(state.db, owner=owner, job_id=job_id, action="cancel"))


@router.post("/jobs/{job_id}/pause")
def pause_job(job_id: str, state: State, owner: Owner) -> dict[str, Any]:
    return job_object(jobstore.control(state.db, owner=owner, job_id=job_id, action="pause"))


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, state: State, owner: Owner) -> dict[str, Any]:
    return job_object(jobstore.control(state.db, owner=owner, job_id=job_id, action="resume"))


@router.get("/jobs/{job_id}/events")
def list_events(job_id: str, state: State, owner: Owner, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    jobstore.get_job(state.db, owner=owner, job_id=job_id)
    rows, more = ev.list_events(state.db, job_id=job_id, after=after, limit=limit)
    return {"object": "list", "data": [event_object(r) for r in rows], "has_more": more}


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(job_id: str, state: State, owner: Owner, after: str | None = None,
                     limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    jobstore.get_job(state.db, owner=owner, job_id=job_id)
    rows, more = ev.list_checkpoints(state.db, job_id=job_id, after=after, limit=limit)
    data = [checkpoint_object(r) for r in rows]
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@router.get("/jobs/{job_id}/metrics")
def list_metrics(job_id: str, state: State, owner: Owner,
                 after: int | None = Query(None, ge=0), limit: int = Query(10000, ge=1, le=10000)
                 ) -> dict[str, Any]:
    """Extension: every stored metric per step in step order, for live loss curves.

    ``after`` is a step number (the cursor: only later steps are returned), so a live view
    polls for what is new; ``has_more`` says whether ``limit`` cut the page.
    """
    jobstore.get_job(state.db, owner=owner, job_id=job_id)
    rows = ev.list_metrics(state.db, job_id=job_id, after=after)
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}
