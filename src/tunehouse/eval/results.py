"""The evaluation result: candidates' answers and scores, comparisons, forgetting; JSON round-trip.

``EvalReport.to_dict()`` is what ``report.json`` holds; ``EvalReport.from_dict`` reads it back
so ``tunehouse report RUN_DIR`` can regenerate the HTML without re-running any model.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from typing import Any

FINE_TUNED, BASE, FEW_SHOT = "fine-tuned", "base", "few-shot"
PREFERENCE = "preference"  # the kind of a report on preference pairs (``eval.preference``)


@dataclass
class CandidateResult:
    """One way of answering the held-out prompts (a model, maybe with few-shot prompting)."""

    name: str  # "fine-tuned" | "base" | "few-shot"
    model: str
    shots: int = 0
    answers: list[str] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # per-example values
    summary: dict[str, float] = field(default_factory=dict)  # means (+ perplexity, macro_f1)
    ci: dict[str, list[float]] = field(default_factory=dict)  # metric -> [low, high] (95%)
    prompt_tokens: float = 0.0  # mean per request
    completion_tokens: float = 0.0  # mean per request
    latency_s: float = 0.0  # mean wall time a request waited (its batch's generation time)
    generation_s: float = 0.0  # total generation wall time for all requests
    confusion: list[list[int]] | None = None  # label kind: rows = reference, cols = answer


@dataclass
class Comparison:
    """``a`` minus ``b`` on one metric, with a paired-bootstrap 95% interval."""

    a: str
    b: str
    metric: str
    a_value: float
    b_value: float
    diff: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``."""
        if math.isnan(self.ci_low) or self.ci_low <= 0 <= self.ci_high:
            return "no clear difference"
        better = (self.ci_low > 0) == self.higher_is_better
        return "better" if better else "worse"


@dataclass
class EvalReport:
    """Everything one evaluation found; see ``tunehouse.eval.compare.evaluate``."""

    model: str
    base: str
    data: str
    kind: str  # exact | json | label | text | preference
    primary: str  # headline metric
    metrics: list[str]  # answer metrics in display order
    n_examples: int
    candidates: list[CandidateResult]
    comparisons: list[Comparison]
    examples: list[dict]  # line, prompt (last user text), reference
    labels: list[str] | None = None
    forgetting: dict | None = None
    run_dir: str | None = None  # training run the model came from (for training curves)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def candidate(self, name: str) -> CandidateResult | None:
        """The candidate called ``name``, if evaluated."""
        return next((c for c in self.candidates if c.name == name), None)

    def comparison(self, a: str, b: str, metric: str) -> Comparison | None:
        """The ``a`` minus ``b`` comparison on ``metric``, if computed."""
        return next((c for c in self.comparisons
                     if (c.a, c.b, c.metric) == (a, b, metric)), None)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (NaN/inf become ``null``)."""
        return _finite(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        """Inverse of ``to_dict`` (``null`` numbers come back as NaN)."""
        d = dict(data)
        d["candidates"] = [CandidateResult(**_nan(c)) for c in d.get("candidates", [])]
        d["comparisons"] = [Comparison(**_nan(c)) for c in d.get("comparisons", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary_line(self) -> str:
        """One line for logs and job events, e.g. ``fine-tuned beats base: accuracy 0.91 vs
        0.42, +0.49 (95% CI 0.40..0.58)``."""
        preference = self.kind == PREFERENCE  # one line of its own: accuracy, base vs tuned
        parts = [self._preference_line()] if preference else []
        for other in () if preference else (BASE, FEW_SHOT):
            cmp = self.comparison(FINE_TUNED, other, self.primary)
            if cmp is None:
                continue
            label = other if other == BASE else f"{self.settings.get('few_shot', 0)}-shot base"
            verb = {"better": "beats", "worse": "is worse than",
                    "no clear difference": "is level with"}[cmp.verdict]
            parts.append(f"fine-tuned {verb} {label}: {cmp.metric} {cmp.a_value:.2f} vs "
                         f"{cmp.b_value:.2f}, {cmp.diff:+.2f} "
                         f"(95% CI {cmp.ci_low:+.2f}..{cmp.ci_high:+.2f})")
        if self.forgetting:
            f = self.forgetting
            parts.append(f"general loss {f['base_loss']:.3f} -> {f['fine_tuned_loss']:.3f}")
        return "; ".join(parts)

    def _preference_line(self) -> str:
        """``fine-tuned prefers the preferred answer on 92% of 12 held-out pairs (base 8%)``
        and the difference with its interval."""
        tuned, base = self.candidate(FINE_TUNED), self.candidate(BASE)
        if tuned is None or base is None:
            return ""
        cmp = self.comparison(FINE_TUNED, BASE, self.primary)
        line = (f"fine-tuned prefers the preferred answer on "
                f"{_pct(tuned.summary.get(self.primary))} of {self.n_examples} held-out pairs "
                f"(base {_pct(base.summary.get(self.primary))})")
        if cmp is not None and not math.isnan(cmp.diff):
            line += (f", {cmp.diff:+.2f} (95% CI {cmp.ci_low:+.2f}..{cmp.ci_high:+.2f}, "
                     f"{cmp.verdict})")
        return line

    def format_text(self, width: int = 110) -> str:
        """Readable tables for a terminal: metrics per candidate, differences, forgetting."""
        from rich.console import Console

        buf = io.StringIO()
        console = Console(file=buf, width=width, force_terminal=False, color_system=None)
        for table in _tables(self):
            console.print(table)
        console.print(self.summary_line())
        return buf.getvalue()


def _tables(report: EvalReport) -> list[Any]:
    """The rich tables behind ``format_text``."""
    from rich.table import Table

    title = f"{report.n_examples} held-out examples from {report.data} ({report.kind} answers)"
    rows = [*report.metrics, "loss", "perplexity"]
    if report.kind == PREFERENCE:
        title = f"{report.n_examples} held-out preference pairs from {report.data}"
        rows = [*report.metrics, "chosen_logp", "rejected_logp"]
    per = Table(title=title, title_justify="left")
    per.add_column("metric")
    for c in report.candidates:
        per.add_column(f"{c.name}\n{c.model}" + (f" ({c.shots} shots)" if c.shots else ""),
                       justify="right")
    for name in rows:
        per.add_row(name, *[_cell(c, name) for c in report.candidates])
    per.add_row("prompt tokens", *[f"{c.prompt_tokens:.0f}" for c in report.candidates])
    per.add_row("latency (s)", *[f"{c.latency_s:.2f}" for c in report.candidates])
    diffs = Table(title="fine-tuned minus each alternative (paired bootstrap, 95% CI)",
                  title_justify="left")
    for col in ("vs", "metric", "difference", "95% CI", "win/tie/loss", "verdict"):
        diffs.add_column(col)
    for c in report.comparisons:
        diffs.add_row(c.b if c.a == FINE_TUNED else f"{c.a} - {c.b}", c.metric, f"{c.diff:+.3f}",
                      f"{c.ci_low:+.3f}..{c.ci_high:+.3f}", f"{c.wins}/{c.ties}/{c.losses}",
                      c.verdict)
    tables = [per, diffs]
    if report.forgetting:
        f = report.forgetting
        forget = Table(title=f"forgetting: loss on {f['n_examples']} general examples",
                       title_justify="left")
        for col in ("base", "fine-tuned", "change", "95% CI"):
            forget.add_column(col, justify="right")
        forget.add_row(f"{f['base_loss']:.3f}", f"{f['fine_tuned_loss']:.3f}",
                       f"{f['delta']:+.3f}", f"{f['ci_low']:+.3f}..{f['ci_high']:+.3f}")
        tables.append(forget)
    return tables


def _cell(c: CandidateResult, name: str) -> str:
    """``value [low..high]`` for a table cell."""
    value = c.summary.get(name)
    if value is None or math.isnan(value):
        return "-"
    ci = c.ci.get(name)
    return f"{value:.3f} [{ci[0]:.2f}..{ci[1]:.2f}]" if ci and not math.isnan(ci[0]) \
        else f"{value:.3f}"


def _pct(x: float | None) -> str:
    """A fraction as a whole percentage ('-' when missing)."""
    return "-" if x is None or math.isnan(x) else f"{x:.0%}"


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities by None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _nan(obj: Any) -> Any:
    """Replace None inside lists/dicts of numbers by NaN (inverse of ``_finite``)."""
    if isinstance(obj, dict):
        return {k: (math.nan if v is None and k not in ("confusion",) else _nan(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [math.nan if v is None else _nan(v) for v in obj]
    return obj
