"""Reading fine-tuning JSONL files robustly, and telling which record format they hold.

Pure Python (no torch). Every problem becomes an :class:`Issue` that names the line, the
message index and the key, with OpenAI's error code where one exists, so a user can fix the
whole file in one pass instead of one upload per mistake.

Reading rules (what is accepted, what is reported):

- UTF-8 only. A UTF-8 byte-order mark at the start and CRLF line ends are accepted silently;
  a UTF-16 file is rejected once, for the whole file. Invalid UTF-8 is reported per line.
- Blank (whitespace-only) lines are ignored but counted.
- A raw NUL byte, invalid JSON, JSON nested too deeply for the parser and lines longer than
  ``max_line_bytes`` are per-line errors; the rest of the file is still read. An over-long
  line is skipped in chunks, so memory stays bounded whatever its size.
- Every line must be a JSON object ("Line N is not a dictionary", like OpenAI).

Formats (``detect_format``): ``chat`` (``{"messages": [...]}``), ``preference``
(DPO: ``{"input": {...}, "preferred_output": [...], "non_preferred_output": [...]}``) and the
legacy ``prompt_completion`` (``{"prompt", "completion"}``), which is detected so that it can
be reported clearly, but chat models cannot train on it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

Severity = Literal["error", "warning"]

CHAT = "chat"
PREFERENCE = "preference"
COMPLETION = "prompt_completion"
FORMAT_NAMES = {CHAT: "chat", PREFERENCE: "preference (DPO)",
                COMPLETION: "legacy prompt/completion"}

MAX_LINE_BYTES = 16 * 2**20  # 16 MiB: ~4M characters, far beyond any model's context
MAX_ISSUES = 200  # issues kept per report; the rest are only counted
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_READ_CHUNK = 2**20


@dataclass(frozen=True)
class Issue:
    """One problem in a data file. ``line`` is 1-based; ``None`` means the whole file.

    ``message`` is self-contained (it names the key), so ``f"line {line}: {message}"`` reads
    well on its own; ``code`` is a stable machine-readable string (OpenAI's where it has one).
    """

    line: int | None
    message_index: int | None
    key: str | None
    code: str
    message: str
    severity: Severity = "error"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IssueList:
    """Collects issues, keeping at most ``cap`` errors and ``cap`` warnings but counting all."""

    def __init__(self, cap: int = MAX_ISSUES):
        self.cap = cap
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []
        self.n_errors = 0
        self.n_warnings = 0

    def add(self, issue: Issue) -> None:
        if issue.severity == "error":
            self.n_errors += 1
            if len(self.errors) < self.cap:
                self.errors.append(issue)
        else:
            self.n_warnings += 1
            if len(self.warnings) < self.cap:
                self.warnings.append(issue)

    def extend(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.add(issue)

    def kept(self) -> list[Issue]:
        """At most ``cap`` issues, errors first, in line order (file-level issues last)."""
        chosen = self.errors[: self.cap] + self.warnings[: max(0, self.cap - len(self.errors))]
        return sorted(chosen, key=_issue_order)

    @property
    def total(self) -> int:
        return self.n_errors + self.n_warnings


def _issue_order(issue: Issue) -> tuple[bool, int, bool]:
    return (issue.line is None, issue.line or 0, issue.severity != "error")


@dataclass
class Record:
    """One parsed JSONL line: its 1-based line number and the JSON object on it."""

    line: int
    data: dict[str, Any]


@dataclass
class JsonlContent:
    """What :func:`read_jsonl` found: the parsed objects plus per-line problems."""

    records: list[Record] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    n_lines: int = 0  # physical lines, blank ones included
    n_blank: int = 0
    n_unparsed: int = 0  # non-blank lines that are not a JSON object
    bom: bool = False
    crlf: bool = False

    @property
    def n_nonblank(self) -> int:
        """Lines meant as examples: every non-blank line counts, parseable or not."""
        return self.n_lines - self.n_blank


def read_jsonl(source: str | Path | bytes | bytearray | memoryview | BinaryIO, *,
               max_line_bytes: int = MAX_LINE_BYTES) -> JsonlContent:
    """Parse a JSONL file, a byte string or a binary stream, reporting problems per line.

    Raises:
        OSError: the path cannot be opened (callers turn it into ``InvalidFile``).
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as stream:
            return _read_lines(_stream_lines(stream, max_line_bytes), max_line_bytes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_lines(_buffer_lines(bytes(source), max_line_bytes), max_line_bytes)
    return _read_lines(_stream_lines(source, max_line_bytes), max_line_bytes)


def _stream_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Lines of a binary stream; ``None`` for a line over ``limit`` bytes (skipped in chunks)."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # drain the rest of the over-long line without holding it
                rest = stream.readline(_READ_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
        else:
            yield line


def _buffer_lines(data: bytes, limit: int) -> Iterator[bytes | None]:
    """Lines of an in-memory buffer, copying one line at a time."""
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end + 1
        length = end - start - (data[end - 1] == 0x0A)
        yield None if length > limit else data[start:end]
        start = end


def _read_lines(lines: Iterator[bytes | None], limit: int) -> JsonlContent:
    out = JsonlContent()
    for number, raw in enumerate(lines, start=1):
        out.n_lines = number
        if raw is not None and number == 1:
            if raw.startswith(_UTF16_BOMS):
                out.issues.append(Issue(None, None, None, "invalid_utf8",
                                        "the file is UTF-16 encoded; save it as UTF-8"))
                out.n_unparsed += 1
                return out
            if raw.startswith(_BOM):
                out.bom, raw = True, raw[len(_BOM):]
        if raw is not None and raw.endswith(b"\r\n"):
            out.crlf = True
        obj, issue = _parse_line(number, raw, limit)
        if issue is not None:
            out.issues.append(issue)
            out.n_unparsed += 1
        elif obj is None:
            out.n_blank += 1
        else:
            out.records.append(Record(number, obj))
    return out


def _parse_line(number: int, raw: bytes | None, limit: int) -> tuple[dict | None, Issue | None]:
    """``(object, None)``, ``(None, issue)``, or ``(None, None)`` for a blank line."""

    def bad(code: str, message: str) -> tuple[None, Issue]:
        return None, Issue(number, None, None, code, message)

    if raw is None:
        return bad("line_too_long", f"the line is longer than the limit of {limit:,} bytes"
                   " for one example")
    if not raw.strip():
        return None, None
    if b"\x00" in raw:
        return bad("invalid_json", "the line contains a NUL byte (binary data, or UTF-16 text"
                   " saved without a byte-order mark?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return bad("invalid_utf8", f"not valid UTF-8: byte 0x{raw[err.start]:02x} at position"
                   f" {err.start + 1}; save the file as UTF-8")
    try:
        obj = json.loads(text)
    except RecursionError:
        return bad("invalid_json", "the JSON is nested too deeply to read")
    except json.JSONDecodeError as err:
        return bad("invalid_json", f"not valid JSON: {err.msg} at column {err.colno}"
                   + _json_hint(text))
    except ValueError as err:  # e.g. an integer literal with thousands of digits
        return bad("invalid_json", f"not valid JSON: {err}")
    if not isinstance(obj, dict):
        return bad("not_a_dictionary", f"Line {number} is not a dictionary (it is a JSON"
                   f" {_json_type(obj)}); every line must be one JSON object like"
                   ' {"messages": [...]}')
    return obj, None


def _json_hint(text: str) -> str:
    stripped = text.strip()
    if stripped in ("[", "{", "[{", "},", "}", "]"):
        return " (this looks like pretty-printed JSON; JSONL needs one whole object per line)"
    return ""


def _json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def record_format(obj: dict[str, Any]) -> str | None:
    """The format one object is written in, judged by its keys, or None if none fits."""
    if "messages" in obj:
        return CHAT
    if "preferred_output" in obj or "non_preferred_output" in obj or isinstance(
            obj.get("input"), dict):
        return PREFERENCE
    if "prompt" in obj or "completion" in obj:
        return COMPLETION
    return None


def detect_format(records: list[Record]) -> tuple[str | None, list[Issue]]:
    """The file's format (the one most lines use) and an error for each line that differs.

    Ties are broken in favour of chat, then preference. Returns ``(None, issues)`` when no
    line has a recognisable format.
    """
    found = [(rec.line, record_format(rec.data), rec.data) for rec in records]
    counts = Counter(fmt for _, fmt, _ in found if fmt)
    if not counts:
        return None, [Issue(None, None, None, "unknown_format",
                            'no line has a "messages" list (chat), "input" with'
                            ' "preferred_output"/"non_preferred_output" (preference) or'
                            ' "prompt"/"completion" keys')]
    order = [CHAT, PREFERENCE, COMPLETION]
    fmt = max(counts, key=lambda f: (counts[f], -order.index(f)))
    issues = []
    for line, own, data in found:
        if own == fmt:
            continue
        if own is None:
            keys = ", ".join(repr(k)[:40] for k in list(data)[:8]) or "none"
            issues.append(Issue(line, None, None, _missing_code(fmt),
                                f"not a {FORMAT_NAMES[fmt]} example: it has no"
                                f" {_key_phrase(fmt)} (keys found: {keys})"))
        else:
            issues.append(Issue(line, None, None, "mixed_formats",
                                f"this line is a {FORMAT_NAMES[own]} example, but the file is"
                                f" {FORMAT_NAMES[fmt]} ({counts[fmt]} of {len(records)} lines);"
                                " one file must use one format"))
    return fmt, issues


def _missing_code(fmt: str) -> str:
    return {CHAT: "missing_messages", PREFERENCE: "missing_key"}.get(fmt, "unknown_format")


def _key_phrase(fmt: str) -> str:
    return {CHAT: "'messages' key",
            PREFERENCE: "'input', 'preferred_output' and 'non_preferred_output' keys"}.get(
        fmt, "'prompt' and 'completion' keys")
