"""Streaming ``multipart/form-data`` for file uploads, with the size limit enforced as we read.

FastAPI's ``UploadFile`` spools the whole body to a temporary file before the route runs, so
an oversized upload would be stored first. Here a declared ``Content-Length`` over the limit
is refused before any byte is read, and an undeclared (chunked) body is cut off at the limit;
the bytes go straight to a staging file next to their final place and are deleted on any
error. The client's filename is kept as metadata only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from tunehouse.errors import InvalidRequest, TunehouseError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields
MAX_FIELD_BYTES = 4096
_FILENAME_CLEAN = re.compile(r"[\x00-\x1f\x7f/\\]")


class PayloadTooLarge(TunehouseError):
    """The upload exceeds the server's size limit (HTTP 413)."""

    http_status = 413

    def __init__(self, limit: int):
        super().__init__(f"File is too large: the maximum upload size is {limit} bytes "
                         "(TUNEHOUSE_MAX_UPLOAD_BYTES).", code="file_too_large", param="file")


class UploadSink:
    """Multipart callbacks: the ``file`` part goes to ``staged``, small fields to ``fields``."""

    def __init__(self, staged: Path, limit: int):
        self.staged, self.limit = staged, limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._header_name, self._header_value = b"", b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buf = bytearray()
        self._out: Any = None

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_part_data": self._data,
                "on_part_end": self._end, "on_header_field": self._hfield,
                "on_header_value": self._hvalue, "on_header_end": self._hend,
                "on_headers_finished": self._headers_done}

    def _begin(self) -> None:
        self._headers, self._name, self._buf = {}, None, bytearray()

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self._out is not None:
                raise InvalidRequest("Send exactly one 'file' part.", param="file")
            raw = params.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
            self.filename = _FILENAME_CLEAN.sub("_", raw.rsplit("/", 1)[-1])[:255] or "upload"
            self._out = open(self.staged, "wb")  # noqa: SIM115 - closed in close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file" and self._out is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.limit:
                raise PayloadTooLarge(self.limit)
            self._out.write(data[start:end])
        else:
            self._buf += data[start:end]
            if len(self._buf) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field '{self._name}' is too long.", param=self._name)

    def _end(self) -> None:
        if self._name and self._name != "file":
            self.fields[self._name] = self._buf.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


async def receive_upload(request: Request, staged: Path, limit: int) -> UploadSink:
    """Stream a multipart upload into ``staged``; the caller deletes it on error.

    Raises:
        PayloadTooLarge: declared or actual file size over ``limit``.
        InvalidRequest: not multipart, or no ``file`` part.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(limit)
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Upload files as multipart/form-data with a 'file' part and a "
                             "'purpose' field.", param="file")
    sink = UploadSink(staged, limit)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (TunehouseError, OSError):  # an OSError is ours (writing), not the client's
        raise
    except Exception as exc:  # the multipart parser's own errors: malformed body
        raise InvalidRequest(f"Malformed multipart body: {exc}", param="file") from None
    finally:
        sink.close()
    if sink.filename is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file",
                             code="missing_required_parameter")
    return sink
