"""Evaluation: was fine-tuning worth it? Fine-tuned vs base vs few-shot prompting, with a report.

Public API (imported lazily, so ``tunehouse.eval.metrics`` does not pull in torch)::

    from tunehouse.eval import evaluate, write_report
    report = evaluate("runs/latest", "heldout.jsonl", few_shot=3, shots_from="train.jsonl")
    print(report.summary_line())
    write_report(report, "runs/latest/eval")  # report.html, report.json, PNGs
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunehouse.eval.compare import evaluate
    from tunehouse.eval.report import load_report, write_report
    from tunehouse.eval.results import EvalReport

__all__ = ["EvalReport", "evaluate", "load_report", "write_report"]
_HOMES = {"evaluate": "compare", "write_report": "report", "load_report": "report",
          "EvalReport": "results"}


def __getattr__(name: str) -> Any:
    """Import the public names on first use."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"tunehouse.eval.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'tunehouse.eval' has no attribute {name!r}")
