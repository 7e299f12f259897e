"""Validate a fine-tuning file before any training: every problem, line-exact, in one pass.

``validate_file`` (or ``validate_bytes`` for an upload already in memory, ``validate_records``
for parsed objects) reads the file, detects its format, applies OpenAI's rules to every
example (``schema.py``) and, given the model's tokenizer, counts tokens with the model's own
chat template, flags examples that will be truncated, duplicates, conflicting answers,
train/validation overlap, and estimates the training time on this machine.

Training code::

    report = validate_file(cfg.train_file, tokenizer=tok, max_length=ctx,
                           validation_path=cfg.validation_file, n_params=n, epochs=None)
    report.raise_if_invalid()        # InvalidFile naming file, line, message index and key
    examples = report.examples       # the parsed, valid records: no second read needed
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunehouse.data import stats
from tunehouse.data.formats import (
    COMPLETION,
    FORMAT_NAMES,
    PREFERENCE,
    Issue,
    IssueList,
    JsonlContent,
    Record,
    detect_format,
    read_jsonl,
    record_format,
)
from tunehouse.data.report import format_report
from tunehouse.data.schema import check_chat_example, check_preference_example, special_tokens_of
from tunehouse.data.summary import file_warnings, overlap_warnings, token_warnings
from tunehouse.errors import InvalidFile

__all__ = ["ValidationReport", "ensure_file", "format_report", "validate_bytes", "validate_file",
           "validate_records"]

MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 50


@dataclass
class ValidationReport:
    """The outcome of validating one file (and its validation file, in ``validation``)."""

    name: str
    param: str = "training_file"
    format: str | None = None
    n_examples: int = 0  # non-blank lines: every one is meant as an example
    stats: dict[str, Any] = field(default_factory=dict)
    validation: ValidationReport | None = None
    examples: list[Record] = field(default_factory=list, repr=False)  # valid records only
    collected: IssueList = field(default_factory=IssueList, repr=False)

    @property
    def issues(self) -> list[Issue]:
        """At most ``MAX_ISSUES`` issues, errors first, in line order; see ``n_omitted``."""
        return self.collected.kept()

    @property
    def n_errors(self) -> int:
        return self.collected.n_errors

    @property
    def n_warnings(self) -> int:
        return self.collected.n_warnings

    @property
    def ok(self) -> bool:
        """True when the file (and the validation file) can be trained on; warnings allowed."""
        return self.n_errors == 0 and (self.validation is None or self.validation.ok)

    @property
    def n_omitted(self) -> int:
        return self.collected.total - len(self.issues)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the parsed examples are left out)."""
        return {
            "ok": self.ok, "file": self.name, "param": self.param, "format": self.format,
            "n_examples": self.n_examples, "n_errors": self.n_errors,
            "n_warnings": self.n_warnings, "n_issues_omitted": self.n_omitted,
            "issues": [i.to_dict() for i in self.issues], "stats": self.stats,
            "validation": self.validation.to_dict() if self.validation else None,
        }

    def raise_if_invalid(self) -> None:
        """Raise ``InvalidFile`` naming the first error and how many more there are.

        Raises:
            InvalidFile: the training or validation file has errors; ``code`` is the first
                error's code, ``param`` the file's parameter, ``issues`` all kept issues.
        """
        bad = self if self.n_errors else self.validation
        if bad is None or bad.n_errors == 0:
            return
        first = bad.errors[0]
        where = f"{bad.name} line {first.line}" if first.line is not None else bad.name
        more = bad.n_errors - 1 + (self.validation.n_errors if bad is self and self.validation
                                   else 0)
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise InvalidFile(f"{where}: {first.message}{tail}", code=first.code, param=bad.param,
                          issues=[i.to_dict() for i in bad.issues])


def ensure_file(path: str | Path, *, param: str = "training_file") -> Path:
    """``path`` as a Path if it is a readable regular file.

    Raises:
        InvalidFile: with code ``file_not_found`` (or ``invalid_file`` for a directory).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidFile(f"{path}: no such file", code="file_not_found", param=param)
    if not path.is_file():
        raise InvalidFile(f"{path}: not a regular file", code="invalid_file", param=param)
    return path


def validate_file(path: str | Path, *, tokenizer: Any = None, max_length: int | None = None,
                  validation_path: str | Path | None = None, n_params: int | None = None,
                  epochs: int | None = None, min_examples: int = MIN_EXAMPLES
                  ) -> ValidationReport:
    """Validate a training file (and optionally its validation file) on disk.

    Raises:
        InvalidFile: a file does not exist or cannot be read (problems *in* the file are
            reported, not raised; call ``raise_if_invalid``).
    """
    content = _read(path, "training_file")
    valid = None
    if validation_path is not None:
        valid = (Path(validation_path).name, _read(validation_path, "validation_file"))
    return _validate(Path(path).name, content, valid, tokenizer=tokenizer,
                     max_length=max_length, n_params=n_params, epochs=epochs,
                     min_examples=min_examples)


def validate_bytes(data: bytes, *, name: str = "training file", tokenizer: Any = None,
                   max_length: int | None = None, validation: bytes | None = None,
                   validation_name: str = "validation file", n_params: int | None = None,
                   epochs: int | None = None, min_examples: int = MIN_EXAMPLES
                   ) -> ValidationReport:
    """Validate a file held in memory (an HTTP upload): the same checks as ``validate_file``."""
    valid = (validation_name, read_jsonl(validation)) if validation is not None else None
    return _validate(name, read_jsonl(data), valid, tokenizer=tokenizer,
                     max_length=max_length, n_params=n_params, epochs=epochs,
                     min_examples=min_examples)


def validate_records(records: Iterable[dict[str, Any]], *, name: str = "training data",
                     tokenizer: Any = None, max_length: int | None = None,
                     n_params: int | None = None, epochs: int | None = None,
                     min_examples: int = MIN_EXAMPLES) -> ValidationReport:
    """Validate already-parsed examples; "line" numbers are 1-based positions in ``records``."""
    content = JsonlContent()
    for number, obj in enumerate(records, start=1):
        content.n_lines = number
        if isinstance(obj, dict):
            content.records.append(Record(number, obj))
        else:
            content.n_unparsed += 1
            content.issues.append(Issue(number, None, None, "not_a_dictionary",
                                        f"Line {number} is not a dictionary"))
    return _validate(name, content, None, tokenizer=tokenizer, max_length=max_length,
                     n_params=n_params, epochs=epochs, min_examples=min_examples)


def _read(path: str | Path, param: str) -> JsonlContent:
    path = ensure_file(path, param=param)
    try:
        return read_jsonl(path)
    except OSError as err:
        raise InvalidFile(f"{path}: cannot be read ({err.strerror or err})", param=param) from err


def _validate(name: str, content: JsonlContent, valid: tuple[str, JsonlContent] | None, *,
              tokenizer: Any, max_length: int | None, n_params: int | None, epochs: int | None,
              min_examples: int) -> ValidationReport:
    report = _check_file(name, content, "training_file", tokenizer, max_length, min_examples)
    if valid is not None:
        report.validation = _check_file(valid[0], valid[1], "validation_file", tokenizer,
                                        max_length, 1, expected_format=report.format)
        if report.format and report.validation.format == report.format:
            exact, prompts = stats.find_overlap(report.format, report.examples,
                                                report.validation.examples)
            report.validation.collected.extend(overlap_warnings(exact, prompts))
            report.validation.stats["overlap"] = {"exact": [list(p) for p in exact[:1000]],
                                                  "prompt": [list(p) for p in prompts[:1000]]}
    _add_estimate(report, n_params, epochs)
    return report


def _check_file(name: str, content: JsonlContent, param: str, tokenizer: Any,
                max_length: int | None, min_examples: int, expected_format: str | None = None
                ) -> ValidationReport:
    """Every check on one file; ``expected_format`` is the training file's format."""
    issues = IssueList()
    issues.extend(content.issues)
    fmt, format_issues = detect_format(content.records) if content.records else (None, [])
    issues.extend(format_issues)
    if expected_format and fmt and fmt != expected_format:
        issues.add(Issue(None, None, None, "mixed_formats", f"the validation file is"
                         f" {FORMAT_NAMES[fmt]} but the training file is"
                         f" {FORMAT_NAMES[expected_format]}"))
    examples = _check_examples(fmt, content.records, issues, tokenizer) if fmt else []
    n = content.n_nonblank
    which = "Training" if param == "training_file" else "Validation"
    if n < min_examples:
        plural = "s" if min_examples > 1 else ""
        issues.add(Issue(None, None, None, "invalid_n_examples", f"{which} file has {n}"
                         f" example(s), but must have at least {min_examples} example{plural}"))
    report = ValidationReport(name=name, param=param, format=fmt, n_examples=n,
                              examples=examples, collected=issues)
    report.stats = {"n_lines": content.n_lines, "n_blank_lines": content.n_blank,
                    "n_valid_examples": len(examples), "bom": content.bom, "crlf": content.crlf}
    if fmt and fmt != COMPLETION:
        issues.extend(file_warnings(fmt, examples, n, param, RECOMMENDED_EXAMPLES,
                                    report.stats))
    if tokenizer is not None and examples:
        _add_token_stats(report, issues, tokenizer, max_length)
    return report


def _check_examples(fmt: str, records: list[Record], issues: IssueList, tokenizer: Any
                    ) -> list[Record]:
    """Apply the per-example rules; returns the records without errors."""
    if fmt == COMPLETION:
        issues.add(Issue(None, None, None, "unsupported_format", "this file uses the legacy"
                         ' prompt/completion format (babbage-002/davinci-002); chat models'
                         ' train on {"messages": [...]}: write each line as {"messages":'
                         ' [{"role": "user", "content": PROMPT}, {"role": "assistant",'
                         ' "content": COMPLETION}]}'))
        return []
    specials = special_tokens_of(tokenizer)
    check = check_preference_example if fmt == PREFERENCE else check_chat_example
    valid = []
    for rec in records:
        if record_format(rec.data) != fmt:
            continue  # already reported by detect_format
        found = check(rec.data, rec.line, specials=specials)
        issues.extend(found)
        if not any(i.severity == "error" for i in found):
            valid.append(rec)
    return valid


def _add_token_stats(report: ValidationReport, issues: IssueList, tokenizer: Any,
                     max_length: int | None) -> None:
    """Count tokens of every valid example; template failures become per-line errors."""
    counts, usable = [], []
    for rec in report.examples:
        try:
            counts.append(stats.count_tokens(tokenizer, report.format, rec, max_length))
            usable.append(rec)
        except Exception as err:  # noqa: BLE001 - any template error is the example's fault
            issues.add(Issue(rec.line, None, None, "template_error", "the model's chat template"
                             f" rejects this example: {_first_line(err)}"))
    report.examples = usable
    report.stats["tokens"] = stats.token_stats(counts, max_length)
    issues.extend(token_warnings(counts, max_length))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _add_estimate(report: ValidationReport, n_params: int | None, epochs: int | None) -> None:
    n_valid = len(report.examples)
    report.stats["epochs"] = epochs or stats.auto_epochs(n_valid)
    report.stats["epochs_auto"] = epochs is None
    tokens = report.stats.get("tokens")
    if not tokens or not n_params or not report.format:
        report.stats["estimate"] = None
        return
    factor = stats.FLOPS_FACTOR.get(report.format, 6)
    speed = stats.cpu_flops()
    seconds = stats.estimate_seconds(tokens["processed_total"], report.stats["epochs"], n_params,
                                     flops_factor=factor, flops_per_second=speed)
    report.stats["estimate"] = {
        "seconds": round(seconds, 1), "n_params": n_params, "epochs": report.stats["epochs"],
        "tokens_per_epoch": tokens["processed_total"], "flops_per_token": factor * n_params,
        "cpu_gflops": round(speed / 1e9, 1), "efficiency": stats.engine_efficiency(),
    }
