"""Human-readable validation reports: a summary, issues grouped, token statistics, estimate.

Plain text by default, so the output reads the same in a terminal, a pipe or a log file;
with ``markup=True`` it carries rich markup (colours) and every piece of user text is escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunehouse.data.formats import FORMAT_NAMES, Issue

if TYPE_CHECKING:
    from tunehouse.data.validate import ValidationReport


def format_report(report: ValidationReport, *, markup: bool = False) -> str:
    """The report as text: each file's issues and tokens, the estimate, then the verdict."""
    style = _Style(markup)
    out: list[str] = []
    _file_section(report, out, style)
    if report.validation is not None:
        out.append("")
        _file_section(report.validation, out, style)
    estimate = _estimate_line(report.stats)
    if estimate:
        out += ["", style.bold("Training estimate"), "  " + style.text(estimate)]
    out += ["", _verdict(report, style)]
    return "\n".join(out)


class _Style:
    """Rich markup when asked for, plain text otherwise."""

    def __init__(self, markup: bool):
        self.markup = markup

    def text(self, value: str) -> str:
        if not self.markup:
            return value
        from rich.markup import escape

        return escape(value)

    def wrap(self, tag: str, value: str) -> str:
        return f"[{tag}]{self.text(value)}[/{tag}]" if self.markup else value

    def bold(self, value: str) -> str:
        return self.wrap("bold", value)


def _file_section(report: ValidationReport, out: list[str], style: _Style) -> None:
    fmt = FORMAT_NAMES.get(report.format or "", "unknown format")
    blank = report.stats.get("n_blank_lines", 0)
    extra = f", {blank} blank line(s) ignored" if blank else ""
    role = "training file" if report.param == "training_file" else "validation file"
    out.append(style.bold(f"{report.name}") + style.text(
        f" ({role}): {fmt}, {report.n_examples} example(s){extra}"))
    errors, warnings = report.errors, report.warnings
    if errors:
        out.append("  " + style.wrap("bold red", f"{report.n_errors} error(s)"))
        out += ["    " + _issue_line(i, style) for i in errors]
    if warnings:
        out.append("  " + style.wrap("bold yellow", f"{report.n_warnings} warning(s)"))
        out += ["    " + _issue_line(i, style) for i in warnings]
    if report.n_omitted:
        out.append("    " + style.text(f"... and {report.n_omitted} more not shown"))
    tokens = report.stats.get("tokens")
    if tokens:
        out += ["  " + style.text(line) for line in _token_lines(tokens)]


def _issue_line(issue: Issue, style: _Style) -> str:
    where = f"line {issue.line}: " if issue.line is not None else ""
    colour = "red" if issue.severity == "error" else "yellow"
    return style.text(f"{where}{issue.message} ") + style.wrap(colour, f"[{issue.code}]")


def _token_lines(tokens: dict[str, Any]) -> list[str]:
    per = tokens["per_example"]
    limit = f"; context {tokens['max_length']:,}" if tokens.get("max_length") else ""
    lines = [
        "tokens (model's chat template):",
        f"  per example: min {per['min']:,}, median {per['median']:,}, mean {per['mean']:,},"
        f" max {per['max']:,}{limit}",
        f"  total {tokens['total']:,} tokens, of which {tokens['trained_total']:,} trained"
        " (assistant) tokens",
    ]
    if tokens.get("n_truncated"):
        lines.append(f"  {tokens['n_truncated']} example(s) truncated")
    hist = tokens["histogram"]
    cells = [f"{lo}-{hi - 1}: {n}" for lo, hi, n in
             zip(hist["edges"], hist["edges"][1:], hist["counts"], strict=False) if n]
    if cells:
        lines.append("  lengths: " + " | ".join(cells))
    return lines


def _estimate_line(stats: dict[str, Any]) -> str | None:
    est = stats.get("estimate")
    epochs = stats.get("epochs")
    if epochs is None:
        return None
    how = " (auto)" if stats.get("epochs_auto") else ""
    if not est:
        return f"{epochs} epoch(s){how}; give the model's tokenizer for a time estimate"
    return (f"{epochs} epoch(s){how} x {est['tokens_per_epoch']:,} tokens on a"
            f" {est['n_params'] / 1e6:,.0f}M-parameter model: about"
            f" {format_duration(est['seconds'])} on this CPU (matmul probe"
            f" {est['cpu_gflops']:,} GFLOP/s; tunehouse's engine measured at"
            f" {est['efficiency']:.2g}x it; a rough order of magnitude)")


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.2 h`` or ``2.5 days``.

    >>> format_duration(42), format_duration(720), format_duration(11520)
    ('42 s', '12 min', '3.2 h')
    """
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _verdict(report: ValidationReport, style: _Style) -> str:
    valid = report.validation
    n_err = report.n_errors + (valid.n_errors if valid else 0)
    n_warn = report.n_warnings + (valid.n_warnings if valid else 0)
    if n_err:
        return style.wrap("bold red", f"NOT USABLE: {n_err} error(s), {n_warn} warning(s);"
                          " fix the errors and validate again")
    tail = f" ({n_warn} warning(s))" if n_warn else ""
    return style.wrap("bold green", f"OK: ready for training{tail}")
