"""Domain errors, in one place.

Every user-facing failure is one of these. The CLI prints ``str(err)`` on one line and exits
with ``err.exit_code``; the HTTP API maps ``err.http_status``/``err.code``/``err.param`` to
OpenAI's error envelope in one handler.
"""

from __future__ import annotations

import errno


class TunehouseError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    http_status = 400
    error_type = "invalid_request_error"
    exit_code = 2

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def __str__(self) -> str:
        return self.message


class InvalidFile(TunehouseError):
    """A data file cannot be used (format, content or size)."""

    def __init__(self, message: str, *, code: str | None = "invalid_file", param: str | None = None,
                 issues: list | None = None):
        super().__init__(message, code=code, param=param)
        self.issues = issues or []


class InvalidRequest(TunehouseError):
    """A request or command-line option is out of range or malformed."""


class InvalidConfig(TunehouseError):
    """A run configuration has one or more invalid fields (all are reported at once)."""


class ModelNotFound(TunehouseError):
    """A model name is not the embedded default, a local directory, nor reachable."""

    http_status = 404

    def __init__(self, message: str, *, code: str | None = "model_not_found", param: str | None = "model"):
        super().__init__(message, code=code, param=param)


class NotFound(TunehouseError):
    """An object does not exist (or belongs to someone else)."""

    http_status = 404
    exit_code = 2


class Conflict(TunehouseError):
    """The object is in a state that does not allow the operation."""

    http_status = 409


class ContextLengthExceeded(TunehouseError):
    """Prompt plus requested completion do not fit the model's context."""

    def __init__(self, message: str, *, param: str | None = "messages"):
        super().__init__(message, code="context_length_exceeded", param=param)


class CheckpointError(TunehouseError):
    """A checkpoint is missing, incomplete or fails its checksum."""

    code_default = "invalid_checkpoint"


class DiskFull(TunehouseError):
    """Not enough space to write a checkpoint or file."""

    http_status = 507
    error_type = "server_error"

    def __init__(self, message: str):
        super().__init__(message, code="disk_full")


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# How libraries that do not raise OSError say it: Rust's io::Error (safetensors), SQLite.
_DISK_FULL_TEXT = ("(os error 28)", "(os error 122)", "(os error 27)", "no space left on device",
                   "database or disk is full")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, means the disk is full: ENOSPC,
    EDQUOT, or EFBIG (a file-size limit), also when a library wraps it in its own error type
    (safetensors: ``SafetensorError(... (os error 28))``; SQLite: ``database or disk is full``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if not isinstance(exc, TunehouseError) and any(t in str(exc).lower()
                                                       for t in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class JobFailed(TunehouseError):
    """A fine-tuning job failed; ``code`` says why (OpenAI's job ``error.code``)."""

    error_type = "server_error"
    http_status = 500


class Unauthorized(TunehouseError):
    http_status = 401

    def __init__(self, message: str = "Incorrect or missing API key."):
        super().__init__(message, code="invalid_api_key")


class Overloaded(TunehouseError):
    http_status = 429
    error_type = "rate_limit_error"
