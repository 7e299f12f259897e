"""The evaluation report: one self-contained HTML file (plots embedded as base64 PNG), the
same PNGs beside it, and ``report.json`` with everything, so the HTML can be regenerated.

No scripts, fonts or stylesheets are fetched: the file opens offline, in any browser.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

from tunehouse.errors import InvalidFile, NotFound
from tunehouse.eval.report_html import render_html
from tunehouse.eval.results import PREFERENCE, EvalReport

COLORS = {"fine-tuned": "#2a9d8f", "base": "#8d99ae", "few-shot": "#e9c46a"}


# ----------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename (never half-written)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_run_metrics(run_dir: str | Path | None) -> dict[str, list[float]]:
    """``step``/``train_loss``/``valid_loss`` columns from a run's metrics.csv (or .jsonl)."""
    cols: dict[str, list[float]] = {"step": [], "train_loss": [], "valid_loss": []}
    if not run_dir:
        return cols
    rows: list[dict] = []
    csv_path, jsonl_path = Path(run_dir) / "metrics.csv", Path(run_dir) / "metrics.jsonl"
    if csv_path.is_file():
        with csv_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    elif jsonl_path.is_file():
        for line in jsonl_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line being appended while we read
    for row in rows:
        step = _num(row.get("step"))
        if math.isnan(step):
            continue
        cols["step"].append(step)
        cols["train_loss"].append(_num(row.get("train_loss")))
        cols["valid_loss"].append(_num(row.get("valid_loss")))
    return cols


def _num(value: object) -> float:
    """A float from a CSV/JSON cell; NaN when empty or not a number."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def load_report(path: str | Path) -> EvalReport:
    """Read ``report.json`` from a file, an eval dir, or a run dir (its ``eval/`` subdir)."""
    p = Path(path)
    for cand in (p, p / "report.json", p / "eval" / "report.json"):
        if cand.is_file():
            try:
                return EvalReport.from_dict(json.loads(cand.read_text()))
            except (ValueError, TypeError, KeyError) as err:
                raise InvalidFile(f"{cand}: not a tunehouse evaluation report ({err})") from None
    raise NotFound(f"{path}: no report.json here or in {p / 'eval'}; run `tunehouse eval` first")


# ----------------------------------------------------------------------------- plots
def _plot_training(curves: dict[str, list[float]], out: Path) -> Path | None:
    """Train and validation loss per step, when the model came from a run."""
    if not curves["step"]:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    for key, label, style in (("train_loss", "train loss", "-"),
                              ("valid_loss", "validation loss", "o-")):
        pts = [(s, v) for s, v in zip(curves["step"], curves[key], strict=True)
               if not math.isnan(v)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out / "training_curves.png")


def _plot_metrics(report: EvalReport, out: Path) -> Path:
    """Grouped bars: each answer metric per candidate, 95% bootstrap CI as error bars."""
    import matplotlib.pyplot as plt

    names = report.metrics
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(names) + 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(report.candidates))
    for k, cand in enumerate(report.candidates):
        xs = [i + (k - (len(report.candidates) - 1) / 2) * width for i in range(len(names))]
        vals = [_nz(cand.summary.get(n)) for n in names]
        errs = _errors(cand.ci, names, vals)
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=_label(cand.name, cand.shots),
               color=COLORS.get(cand.name))
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(f"Answer metrics on {report.n_examples} held-out examples")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "metrics.png")


def _plot_loss(report: EvalReport, out: Path) -> Path:
    """Reference-answer loss per candidate; beside it, the forgetting check."""
    import matplotlib.pyplot as plt

    panels = 2 if report.forgetting else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1, 3.4), dpi=100, squeeze=False)
    ax = axes[0][0]
    cands = report.candidates
    vals = [_nz(c.summary.get("loss")) for c in cands]
    errs = [[max(0.0, v - _nz(c.ci.get("loss", [v, v])[0])) for c, v in zip(cands, vals,
                                                                             strict=True)],
            [max(0.0, _nz(c.ci.get("loss", [v, v])[1]) - v) for c, v in zip(cands, vals,
                                                                            strict=True)]]
    ax.bar([_label(c.name, c.shots) for c in cands], vals, yerr=errs, capsize=3,
           color=[COLORS.get(c.name, "#888") for c in cands])
    ax.set_title("Loss of the reference answers")
    ax.set_ylabel("mean token NLL (lower is better)")
    if report.forgetting:
        f = report.forgetting
        ax2 = axes[0][1]
        ax2.bar(["base", "fine-tuned"], [_nz(f["base_loss"]), _nz(f["fine_tuned_loss"])],
                color=[COLORS["base"], COLORS["fine-tuned"]])
        ax2.set_title(f"Forgetting: general chat loss (n={f['n_examples']})")
    fig.tight_layout()
    return _save(fig, out / "loss.png")


def _plot_preference(report: EvalReport, out: Path) -> Path:
    """Preference accuracy (summed and per-token) per candidate with 95% CIs and the chance
    line; beside it the mean margin, and the forgetting check when it ran."""
    import matplotlib.pyplot as plt

    names = ["preference_accuracy", "normalized_preference_accuracy"]
    panels = 3 if report.forgetting else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1.5, 3.6), dpi=100,
                             squeeze=False, gridspec_kw={"width_ratios": [1.6] + [1] *
                                                         (panels - 1)})
    ax, cands = axes[0][0], report.candidates
    width = 0.8 / max(1, len(cands))
    for k, cand in enumerate(cands):
        xs = [i + (k - (len(cands) - 1) / 2) * width for i in range(len(names))]
        vals = [_nz(cand.summary.get(n)) for n in names]
        ax.bar(xs, vals, width, yerr=_errors(cand.ci, names, vals), capsize=3,
               label=cand.name, color=COLORS.get(cand.name))
    ax.axhline(0.5, color="#999", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(names)), ["preference accuracy", "per-token (length-normalised)"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of pairs")
    ax.set_title(f"Preferred answer more likely ({report.n_examples} held-out pairs)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax2 = axes[0][1]
    vals = [_nz(c.summary.get("margin")) for c in cands]
    ax2.bar([c.name for c in cands], vals, yerr=_errors_of(cands, "margin", vals), capsize=3,
            color=[COLORS.get(c.name, "#888") for c in cands])
    ax2.axhline(0, color="#999", linewidth=1)
    ax2.set_title("Mean margin")
    ax2.set_ylabel("log p(preferred) - log p(other), nats")
    if report.forgetting:
        f = report.forgetting
        axes[0][2].bar(["base", "fine-tuned"], [_nz(f["base_loss"]), _nz(f["fine_tuned_loss"])],
                       color=[COLORS["base"], COLORS["fine-tuned"]])
        axes[0][2].set_title(f"Forgetting: general chat loss (n={f['n_examples']})")
    fig.tight_layout()
    return _save(fig, out / "preference.png")


def _errors_of(cands: list, name: str, vals: list[float]) -> list[list[float]]:
    """Error-bar lengths of one metric across candidates."""
    per = [_errors(c.ci, [name], [v]) for c, v in zip(cands, vals, strict=True)]
    return [[e[0][0] for e in per], [e[1][0] for e in per]]


def _errors(ci: dict[str, list[float]], names: list[str], vals: list[float]) -> list[list[float]]:
    """Asymmetric error-bar lengths from ``[low, high]`` intervals."""
    lows, highs = [], []
    for n, v in zip(names, vals, strict=True):
        lo, hi = (ci.get(n) or [v, v])[:2]
        lows.append(max(0.0, v - _nz(lo, v)))
        highs.append(max(0.0, _nz(hi, v) - v))
    return [lows, highs]


def _nz(x: float | None, default: float = 0.0) -> float:
    """``x`` unless None/NaN/inf (then ``default``), for plotting."""
    return default if x is None or not math.isfinite(x) else float(x)


def _label(name: str, shots: int) -> str:
    return f"{name} ({shots} shots)" if shots else name


def _save(fig: object, path: Path) -> Path:
    """Save a figure atomically as PNG and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    _atomic_write(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------- HTML
def write_report(report: EvalReport, out_dir: str | Path, *,
                 run_dir: str | Path | None = None) -> Path:
    """Write ``report.json``, the PNG plots and ``report.html`` into ``out_dir``; return the
    HTML path. Training curves come from ``run_dir`` (default: the report's run)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "report.json", json.dumps(report.to_dict(), indent=2).encode())
    plots = [_plot_training(read_run_metrics(run_dir or report.run_dir), out)]
    if report.kind == PREFERENCE:
        plots.append(_plot_preference(report, out))
    else:
        plots += [_plot_metrics(report, out), _plot_loss(report, out)]
    page = render_html(report, [p for p in plots if p is not None])
    _atomic_write(out / "report.html", page.encode("utf-8"))
    return out / "report.html"
