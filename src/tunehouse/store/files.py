"""Uploaded and result files: rows in the database, bytes under ``$TUNEHOUSE_HOME/files/<id>``.

The client's filename is stored as metadata only; the path is always the server id. Bytes are
written to ``files/.tmp-<id>`` first, fsynced, then renamed into place, so a crash never
leaves a half-written file under a real id.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqlalchemy import select

from tunehouse.errors import Conflict, NotFound
from tunehouse.paths import home
from tunehouse.store import ids
from tunehouse.store.db import Database
from tunehouse.store.models import FileRow, JobRow

ACTIVE_STATUSES = ("validating_files", "queued", "running", "paused")


def files_dir() -> Path:
    d = home() / "files"
    d.mkdir(parents=True, exist_ok=True)
    return d


def models_root() -> Path:
    """Where published fine-tuned models and checkpoints live: ``$TUNEHOUSE_HOME/models/ft``."""
    return home() / "models" / "ft"


def remove_model_dir(path: str | Path) -> None:
    """Delete a published model directory, but only one inside ``models_root()``."""
    p = Path(path).resolve()
    root = models_root().resolve()
    if p.is_relative_to(root) and p != root:
        shutil.rmtree(p, ignore_errors=True)


def file_path(file_id: str) -> Path:
    """Where the bytes of ``file_id`` live (the id is checked first)."""
    return files_dir() / ids.check("file", file_id)


def staging_path(file_id: str) -> Path:
    """A temporary path next to the final one (same filesystem, so the rename is atomic)."""
    return files_dir() / f".tmp-{ids.check('file', file_id)}"


def commit_bytes(staged: Path, file_id: str) -> Path:
    """fsync ``staged`` and rename it to the file's final path."""
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
    final = file_path(file_id)
    os.replace(staged, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def store_copy(source: Path, file_id: str) -> Path:
    """Copy an existing file (e.g. a job's metrics CSV) in as ``file_id``."""
    staged = staging_path(file_id)
    shutil.copyfile(source, staged)
    return commit_bytes(staged, file_id)


def create_file(db: Database, *, owner: str, file_id: str, filename: str, purpose: str,
                nbytes: int, expires_at: int | None = None, n_lines: int | None = None) -> FileRow:
    """Record a file whose bytes are already at ``file_path(file_id)``."""
    row = FileRow(id=file_id, owner=owner, bytes=nbytes, created_at=ids.now(),
                  filename=filename[:512], purpose=purpose, expires_at=expires_at, n_lines=n_lines)
    with db.write() as s:
        s.add(row)
    return row


def get_file(db: Database, *, owner: str, file_id: str, param: str | None = None) -> FileRow:
    """The file row, or ``NotFound`` (also for another owner's file: same answer)."""
    ids.check("file", file_id, param=param)
    with db.read() as s:
        row = s.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.owner == owner))
    if row is None or (row.expires_at is not None and row.expires_at <= ids.now()):
        raise NotFound(f"File '{file_id}' not found.", code="file_not_found", param=param)
    return row


def list_files(db: Database, *, owner: str, purpose: str | None = None, after: str | None = None,
               limit: int = 10000, order: str = "desc") -> tuple[list[FileRow], bool]:
    """Files of ``owner``, newest first by default; ``after`` is a file id cursor."""
    q = select(FileRow).where(FileRow.owner == owner)
    if purpose:
        q = q.where(FileRow.purpose == purpose)
    with db.read() as s:
        if after:
            cursor = s.scalar(select(FileRow.seq).where(FileRow.id == after,
                                                        FileRow.owner == owner))
            if cursor is not None:
                q = q.where(FileRow.seq < cursor if order == "desc" else FileRow.seq > cursor)
        q = q.order_by(FileRow.seq.desc() if order == "desc" else FileRow.seq.asc())
        rows = list(s.scalars(q.limit(limit + 1)))
    now = ids.now()
    rows = [r for r in rows if r.expires_at is None or r.expires_at > now]
    return rows[:limit], len(rows) > limit


def delete_file(db: Database, *, owner: str, file_id: str) -> None:
    """Delete a file's row, then its bytes. Refused while an unfinished job uses it."""
    get_file(db, owner=owner, file_id=file_id)
    with db.write() as s:
        busy = s.scalar(select(JobRow.id).where(
            JobRow.owner == owner, JobRow.status.in_(ACTIVE_STATUSES),
            (JobRow.training_file == file_id) | (JobRow.validation_file == file_id)).limit(1))
        if busy:
            raise Conflict(f"File '{file_id}' is used by fine-tuning job {busy}, which has not "
                           "finished; cancel the job first.", code="file_in_use", param="file_id")
        row = s.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.owner == owner))
        if row is not None:
            s.delete(row)
    file_path(file_id).unlink(missing_ok=True)
