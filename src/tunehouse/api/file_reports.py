"""Validation reports of data files, for the dashboard (read-only extensions to ``/v1/files``).

``GET /v1/files/{id}/validation`` runs ``tunehouse validate`` on a stored file with the served
base model's tokenizer and context (as a fine-tuning job's ``validating_files`` step does), so
the page can show line-exact issues, token statistics and the length histogram.
``POST /v1/files/validation`` does the same for a JSONL body that is not stored: the page
checks a file before uploading it and shows every problem, not only the first one.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from tunehouse.api.deps import AppState, Owner, State
from tunehouse.api.upload import PayloadTooLarge
from tunehouse.store import files as filestore

router = APIRouter(prefix="/v1/files", tags=["files"])
MAX_CONTEXT = 2048  # the training context cap (as in the jobs runner)
CACHE_SIZE = 32  # stored files never change: their reports are kept, most recent first
_lock = threading.Lock()


class _Checker:
    """The base model's tokenizer and context length, loaded once, and cached reports."""

    def __init__(self, base_model: str):
        from tunehouse import models

        source = models.resolve(base_model)
        self.tokenizer = models.load_tokenizer(source)
        config = Path(source.path) / "config.json"
        context = MAX_CONTEXT
        if config.is_file():
            context = int(json.loads(config.read_text()).get("max_position_embeddings") or context)
        self.max_length = min(context, MAX_CONTEXT)
        self.reports: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def describe(self, report: Any, filename: str, base_id: str) -> dict[str, Any]:
        out = report.to_dict()
        out.update(object="file.validation", file=filename, model=base_id,
                   max_length=self.max_length, checked_as="training_file")
        return out


def _checker(state: AppState) -> _Checker:
    with _lock:
        checker = state.extras.get("file_checker")
        if checker is None:
            checker = state.extras["file_checker"] = _Checker(state.settings.base_model)
        return checker


def _stored_report(state: AppState, file_id: str, filename: str) -> dict[str, Any]:
    from tunehouse.data.validate import validate_file

    checker = _checker(state)
    with _lock:
        cached = checker.reports.get(file_id)
    if cached is not None:
        return cached
    report = validate_file(filestore.file_path(file_id), tokenizer=checker.tokenizer,
                           max_length=checker.max_length)
    out = checker.describe(report, filename, state.settings.base_id)
    out["id"] = file_id
    with _lock:
        checker.reports[file_id] = out
        while len(checker.reports) > CACHE_SIZE:
            checker.reports.popitem(last=False)
    return out


def _bytes_report(state: AppState, data: bytes, filename: str) -> dict[str, Any]:
    from tunehouse.data.validate import validate_bytes

    checker = _checker(state)
    report = validate_bytes(data, name=filename, tokenizer=checker.tokenizer,
                            max_length=checker.max_length)
    out = checker.describe(report, filename, state.settings.base_id)
    out["id"] = None
    return out


@router.get("/{file_id}/validation")
def file_validation(file_id: str, state: State, owner: Owner) -> dict[str, Any]:
    """The validation report of a stored file (404 for another key's or a missing file)."""
    row = filestore.get_file(state.db, owner=owner, file_id=file_id)
    return _stored_report(state, row.id, row.filename)


@router.post("/validation")
async def validate_upload(request: Request, state: State, owner: Owner,
                          filename: str = Query("upload.jsonl", min_length=1, max_length=255)
                          ) -> dict[str, Any]:
    """Validate a JSONL request body without storing it (a dry run of an upload)."""
    limit = state.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(limit)
    return await run_in_threadpool(_bytes_report, state, bytes(data), filename)
