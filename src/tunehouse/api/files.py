"""``/v1/files``: upload (validated like ``tunehouse validate``), list, retrieve, content, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from tunehouse.api.deps import Owner, State
from tunehouse.api.upload import receive_upload
from tunehouse.errors import DiskFull, InvalidFile, InvalidRequest, is_disk_full
from tunehouse.store import files as filestore
from tunehouse.store import ids
from tunehouse.store.models import FileRow

router = APIRouter(prefix="/v1", tags=["files"])
PURPOSES = ("fine-tune",)
MIN_EXPIRY, MAX_EXPIRY = 3600, 2592000


def file_object(row: FileRow) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "status_details": None, "expires_at": row.expires_at}


def _expiry(fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after.anchor must be 'created_at'.",
                             param="expires_after.anchor")
    if not (seconds or "").isdigit() or not MIN_EXPIRY <= int(seconds) <= MAX_EXPIRY:
        raise InvalidRequest(f"expires_after.seconds must be an integer in {MIN_EXPIRY}.."
                             f"{MAX_EXPIRY}, got {seconds!r}.", param="expires_after.seconds")
    return ids.now() + int(seconds)


def _validate(staged: Path, filename: str) -> int:
    """The upload's format checks (no tokenizer: token limits are checked when a job starts)."""
    from tunehouse.data.validate import validate_file

    report = validate_file(staged, min_examples=1)
    try:
        report.raise_if_invalid()
    except InvalidFile as err:
        err.message = err.message.replace(staged.name, filename, 1)
        err.args = (err.message,)
        err.param = "file"
        raise
    return report.n_examples


@router.post("/files")
async def create_file(request: Request, state: State, owner: Owner) -> dict[str, Any]:
    """Stream the upload to a staging file, validate it, then publish it under a new id."""
    file_id = ids.new_id("file")
    staged = filestore.staging_path(file_id)
    recorded = False
    try:
        sink = await receive_upload(request, staged, state.settings.max_upload_bytes)
        purpose = sink.fields.get("purpose")
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}, got "
                                 f"{purpose!r}.", param="purpose")
        if not (sink.filename or "").lower().endswith(".jsonl"):
            raise InvalidRequest(f"Invalid file format for fine-tuning: '{sink.filename}'. Must "
                                 "be .jsonl.", param="file", code="invalid_file_format")
        expires_at = _expiry(sink.fields)
        n_lines = await run_in_threadpool(_validate, staged, sink.filename or "upload.jsonl")
        await run_in_threadpool(filestore.commit_bytes, staged, file_id)
        row = await run_in_threadpool(
            lambda: filestore.create_file(state.db, owner=owner, file_id=file_id,
                                          filename=sink.filename or "upload.jsonl",
                                          purpose=purpose, nbytes=sink.file_bytes,
                                          expires_at=expires_at, n_lines=n_lines))
        recorded = True
    except OSError as exc:  # ENOSPC, EDQUOT, EFBIG while staging or publishing the bytes
        if not is_disk_full(exc):
            raise
        raise DiskFull("Not enough disk space on the server to store this file; nothing was "
                       "stored. Free some space (or delete files) and upload again.") from None
    finally:
        if not recorded:  # no half-stored upload survives an error
            staged.unlink(missing_ok=True)
            filestore.file_path(file_id).unlink(missing_ok=True)
    return file_object(row)


@router.get("/files")
def list_files(state: State, owner: Owner, purpose: str | None = None,
               after: str | None = None, limit: int = Query(10000, ge=1, le=10000),
               order: str = Query("desc", pattern="^(asc|desc)$")) -> dict[str, Any]:
    rows, more = filestore.list_files(state.db, owner=owner, purpose=purpose, after=after,
                                      limit=limit, order=order)
    data = [file_object(r) for r in rows]
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, state: State, owner: Owner) -> dict[str, Any]:
    return file_object(filestore.get_file(state.db, owner=owner, file_id=file_id))


@router.get("/files/{file_id}/content")
def file_content(file_id: str, state: State, owner: Owner) -> FileResponse:
    row = filestore.get_file(state.db, owner=owner, file_id=file_id)
    media = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    return FileResponse(filestore.file_path(file_id), media_type=media,
                        filename=row.filename, content_disposition_type="attachment")


@router.delete("/files/{file_id}")
def delete_file(file_id: str, state: State, owner: Owner) -> dict[str, Any]:
    filestore.delete_file(state.db, owner=owner, file_id=file_id)
    return {"id": file_id, "object": "file", "deleted": True}
