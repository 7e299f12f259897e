"""Server-generated ids, checked by regex whenever one comes back from a client.

An id never comes from user input unchecked, so it is safe to use as a file name.
"""

from __future__ import annotations

import re
import secrets
import string
import time

from tunehouse.errors import NotFound

_ALPHABET = string.ascii_letters + string.digits
_RANDOM_LEN = 24
PREFIXES = {"file": "file-", "job": "ftjob-", "event": "ftevent-", "checkpoint": "ftckpt_"}
_PATTERNS = {kind: re.compile(rf"^{re.escape(p)}[A-Za-z0-9]{{{_RANDOM_LEN}}}$")
             for kind, p in PREFIXES.items()}


def new_id(kind: str) -> str:
    """A fresh id such as ``file-3kQ...`` (24 random base62 characters)."""
    return PREFIXES[kind] + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))


def is_valid(kind: str, value: str) -> bool:
    return bool(_PATTERNS[kind].match(value or ""))


def check(kind: str, value: str, *, param: str | None = None) -> str:
    """Return ``value`` if it is a well-formed id of ``kind``; otherwise 404 as for a missing one."""
    if not is_valid(kind, value):
        label = {"file": "File", "job": "Fine-tuning job", "checkpoint": "Checkpoint",
                 "event": "Event"}[kind]
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise NotFound(f"{label} '{shown}' not found.", code=f"{kind}_not_found", param=param)
    return value


def short(job_id: str) -> str:
    """The random part of a job id (the last segment of a fine-tuned model name)."""
    return job_id.split("-", 1)[1] if "-" in job_id else job_id


def now() -> int:
    """Integer Unix seconds, OpenAI's timestamp unit."""
    return int(time.time())
