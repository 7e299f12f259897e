"""End-of-job evaluation: fine-tuned vs base on the job's validation file (issue: "prove it").

When a job has a validation file, the worker's training process runs the same comparison as
``tunehouse eval`` on it after training and attaches the HTML report and its JSON as result
files, with the one-line summary as an event. For a supervised job that is fine-tuned vs base
on the held-out chats; for a DPO job (a preference validation file) it is held-out preference
accuracy, e.g. "fine-tuned prefers the preferred answer on 92% of 12 held-out pairs (base 8%)".
An evaluation problem never fails a job that trained successfully: it becomes a warning event
instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunehouse.config import TrainConfig
from tunehouse.errors import TunehouseError

MAX_EXAMPLES = 200  # bound the time spent evaluating large validation files


@dataclass
class JobEvaluation:
    summary: str
    html: Path
    json: Path


def evaluate_run(out_dir: Path, cfg: TrainConfig, say: Callable[[str, str], None]
                 ) -> JobEvaluation | None:
    """Evaluate a finished run on its validation file; None when there is nothing to evaluate."""
    if not cfg.validation_file:
        return None
    from tunehouse.eval.compare import evaluate
    from tunehouse.eval.report import write_report

    say("info", "Evaluating the fine-tuned model against its base on the validation file")
    try:
        report = evaluate(str(out_dir), cfg.validation_file, limit=MAX_EXAMPLES)
        html = write_report(report, out_dir / "eval", run_dir=out_dir)
    except TunehouseError as err:
        say("warn", f"Evaluation skipped: {err}")
        return None
    return JobEvaluation(summary=report.summary_line(), html=html,
                         json=html.parent / "report.json")
