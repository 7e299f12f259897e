"""HTML for the evaluation report: plain tables and inline PNGs, every string escaped."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from tunehouse.eval.metrics import OTHER_LABEL, normalize
from tunehouse.eval.results import PREFERENCE, CandidateResult, EvalReport

MAX_DISAGREEMENTS = 50
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary{font-size:1.1rem;background:#eef8f6;padding:.7rem 1rem;border-left:4px solid #2a9d8f}
.better{color:#1b7f3b;font-weight:600}.worse{color:#b00020;font-weight:600}
.right{background:#eaf7ec}.wrong{background:#fbeaea}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
pre{white-space:pre-wrap;margin:0;font-size:.85rem;max-width:28rem}
"""


def esc(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value), quote=True)


def fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    """A number for a table cell ('-' when missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def embed_png(path: Path, alt: str) -> str:
    """An ``<img>`` tag carrying the PNG inline (data URI): no file or network fetch."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img id="{esc(path.stem)}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def num(text: str) -> str:
    """A right-aligned numeric cell (``text`` is already safe)."""
    return f'<td class="num">{text}</td>'


def table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>"
                                    for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cand_title(c: CandidateResult) -> str:
    name = c.name + (f" ({c.shots} shots)" if c.shots else "")
    return f"{esc(name)}<br><small>{esc(c.model)}</small>"


def _differences(report: EvalReport) -> str:
    rows = []
    for c in report.comparisons:
        verdict = {"better": "better", "worse": "worse"}.get(c.verdict, "")
        rows.append([esc(f"{c.a} − {c.b}"), esc(c.metric),
                     num(fmt(c.a_value)), num(fmt(c.b_value)), num(fmt(c.diff, sign=True)),
                     num(f"{fmt(c.ci_low, sign=True)} .. {fmt(c.ci_high, sign=True)}"),
                     num(f"{c.wins} / {c.ties} / {c.losses}"),
                     f'<td class="{verdict}">{esc(c.verdict)}</td>'])
    return table(["comparison", "metric", "A", "B", "A − B", "95% CI", "win / tie / loss",
                  "verdict"], rows, "differences")


def _per_candidate(report: EvalReport) -> str:
    rows = []
    extra_rows = ["chosen_logp", "rejected_logp"] if report.kind == PREFERENCE else \
        ["loss", "perplexity"]
    for name in [*report.metrics, *extra_rows]:
        cells = [esc(name.replace("_", " "))]
        for c in report.candidates:
            ci = c.ci.get(name)
            extra = f" <small>[{fmt(ci[0], 2)}..{fmt(ci[1], 2)}]</small>" if ci else ""
            cells.append(f'<td class="num">{fmt(c.summary.get(name))}{extra}</td>')
        rows.append(cells)
    for label, attr, digits in (("prompt tokens / request", "prompt_tokens", 1),
                                ("completion tokens / request", "completion_tokens", 1),
                                ("latency / request (s)", "latency_s", 2),
                                ("generation, all requests (s)", "generation_s", 1)):
        rows.append([esc(label), *[f'<td class="num">{fmt(getattr(c, attr), digits)}</td>'
                                   for c in report.candidates]])
    return table(["metric", *[_cand_title(c) for c in report.candidates]], rows, "candidates")


def _forgetting(report: EvalReport) -> str:
    f = report.forgetting
    if not f:
        return "<p>Forgetting check not run.</p>"
    row = [num(fmt(f["base_loss"])), num(fmt(f["fine_tuned_loss"])),
           num(fmt(f["delta"], sign=True)),
           num(f"{fmt(f['ci_low'], sign=True)} .. {fmt(f['ci_high'], sign=True)}"),
           num(f"{fmt(f['base_perplexity'], 2)} → {fmt(f['fine_tuned_perplexity'], 2)}")]
    note = (f"<p>Loss of the reference answers of {f['n_examples']} general-purpose chat examples "
            f"({esc(f['data'])}, shipped with tunehouse) before and after fine-tuning. A clear "
            "rise means the model forgot some general ability.</p>")
    return note + table(["base loss", "fine-tuned loss", "change", "95% CI", "perplexity"],
                        [row], "forgetting")


def _confusions(report: EvalReport) -> str:
    if not report.labels:
        return ""
    labels = report.labels
    parts = ["<h2>Confusion matrices</h2><p>Rows: reference label; columns: the answer.</p>"]
    for c in report.candidates:
        if not c.confusion:
            continue
        rows = [[f"<th>{esc(lab)}</th>", *[f'<td class="num">{n}</td>' for n in counts]]
                for lab, counts in zip(labels, c.confusion, strict=True)]
        parts.append(f"<h3>{_cand_title(c)}</h3>")
        parts.append(table(["", *[esc(x) for x in [*labels, OTHER_LABEL]]], rows,
                           f"confusion-{esc(c.name)}"))
    return "".join(parts)


def disagreements(report: EvalReport) -> list[int]:
    """Indices of examples where the candidates' answers differ (normalised), capped."""
    out = []
    for i in range(report.n_examples):
        answers = {normalize(c.answers[i]) for c in report.candidates if i < len(c.answers)}
        if len(answers) > 1:
            out.append(i)
    return out[:MAX_DISAGREEMENTS]


def _disagreements(report: EvalReport) -> str:
    idx = disagreements(report)
    if not idx:
        return "<p>All candidates gave the same answers.</p>"
    rows = []
    for i in idx:
        ex = report.examples[i]
        cells = [f'<td class="num">{ex["line"]}</td>', f"<pre>{esc(ex['prompt'])}</pre>",
                 f"<pre>{esc(ex['reference'])}</pre>"]
        for c in report.candidates:
            right = c.scores.get(report.primary, [])
            cls = "" if i >= len(right) else ("right" if right[i] >= 0.999 else "wrong")
            cells.append(f'<td class="{cls}"><pre>{esc(c.answers[i])}</pre></td>')
        rows.append(cells)
    note = (f"<p>{len(idx)} example(s) where the answers differ"
            + (f" (first {MAX_DISAGREEMENTS})" if len(idx) == MAX_DISAGREEMENTS else "")
            + f"; green = right by {esc(report.primary)}.</p>")
    return note + table(["line", "prompt", "reference", *[_cand_title(c)
                                                          for c in report.candidates]],
                        rows, "disagreements")


def _side_by_side(report: EvalReport) -> str:
    """Preference pairs: both answers, each candidate's generated answer, and whether its
    likelihood preferred the preferred answer (green) or not (red), with the margin."""
    n = min(report.n_examples, MAX_DISAGREEMENTS)
    rows = []
    for i in range(n):
        ex = report.examples[i]
        cells = [f'<td class="num">{ex["line"]}</td>', f"<pre>{esc(ex['prompt'])}</pre>",
                 f"<pre>{esc(ex['reference'])}</pre>",
                 f"<pre>{esc(ex.get('non_preferred', ''))}</pre>"]
        for c in report.candidates:
            prefers = c.scores.get(report.primary, [])
            margin = c.scores.get("margin", [])
            cls = "" if i >= len(prefers) else ("right" if prefers[i] >= 0.999 else "wrong")
            note = f"<br><small>margin {fmt(margin[i], 2, sign=True)}</small>" \
                if i < len(margin) else ""
            answer = c.answers[i] if i < len(c.answers) else ""
            cells.append(f'<td class="{cls}"><pre>{esc(answer)}</pre>{note}</td>')
        rows.append(cells)
    shown = f"the first {n} of {report.n_examples}" if n < report.n_examples else "all"
    note = (f"<p>{esc(shown)} pairs. Each candidate's own (greedy) answer to the prompt; green: "
            "its likelihood prefers the preferred answer, red: it does not; margin = log "
            "p(preferred) − log p(non-preferred) in nats.</p>")
    return note + table(["line", "prompt", "preferred", "non-preferred",
                         *[_cand_title(c) for c in report.candidates]], rows, "side-by-side")


def _intro(report: EvalReport) -> str:
    """What was evaluated, in one paragraph."""
    if report.kind == PREFERENCE:
        return (f"<p>{report.n_examples} held-out preference pairs from "
                f"<code>{esc(report.data)}</code>. A model prefers the preferred answer when it "
                "gives it the higher likelihood: the summed log-probability of the answer's "
                "tokens given the prompt (per token for the length-normalised accuracy).</p>")
    return (f"<p>{report.n_examples} held-out examples from <code>{esc(report.data)}</code>;\n"
            f"answers judged as <b>{esc(report.kind)}</b> (headline metric: "
            f"{esc(report.primary)}).</p>")


def _answers(report: EvalReport) -> str:
    """The per-example section: side by side for preference pairs, else disagreements."""
    if report.kind == PREFERENCE:
        return f"<h2>Answers side by side</h2>{_side_by_side(report)}"
    return f"{_confusions(report)}\n<h2>Where the candidates disagree</h2>{_disagreements(report)}"


def render_html(report: EvalReport, plots: list[Path]) -> str:
    """The whole page."""
    imgs = "".join(embed_png(p, p.stem.replace("_", " ")) for p in plots)
    settings = table(["setting", "value"],
                     [[esc(k), esc(v)] for k, v in sorted(report.settings.items())], "settings")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunehouse evaluation: {esc(report.model)}</title><style>{CSS}</style></head>
<body>
<h1>Was fine-tuning worth it? {esc(report.model)} vs {esc(report.base)}</h1>
{_intro(report)}
<p class="summary" id="summary">{esc(report.summary_line())}</p>
<h2>Differences</h2>
<p>Fine-tuned minus each alternative; 95% interval from a paired bootstrap over examples
({esc(report.settings.get("bootstrap_resamples", ""))} resamples, fixed seed).</p>
{_differences(report)}
<h2>Candidates</h2>{_per_candidate(report)}
<h2>Plots</h2>{imgs}
<h2>Forgetting</h2>{_forgetting(report)}
{_answers(report)}
<h2>Settings</h2>{settings}
</body></html>
"""
