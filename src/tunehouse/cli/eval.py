"""``tunehouse eval`` (fine-tuned vs base vs few-shot on held-out data) and ``tunehouse report``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from tunehouse.cli import app


def _default_out(model: str) -> Path:
    """``<model dir>/eval`` when the model is a directory, else ``./eval-<name>``."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path / "eval"
    return Path(f"eval-{model.replace('/', '_')}")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="Fine-tuned model: a training output dir or model.")],
    data: Annotated[str, typer.Option(help="Held-out chat JSONL (the last assistant message "
                                           "of each line is the reference), or preference "
                                           "pairs (DPO format): preference accuracy.")],
    against: Annotated[str | None, typer.Option(help="Model to compare with (default: the "
                                                     "base the run was trained from).")] = None,
    few_shot: Annotated[int, typer.Option(help="Also prompt the base with K training "
                                               "examples.")] = 0,
    shots_from: Annotated[str | None, typer.Option(help="Training JSONL the few-shot "
                                                        "examples come from.")] = None,
    metric: Annotated[str, typer.Option(help="auto, exact, json, label or text.")] = "auto",
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: 1.5x the longest "
                                                            "reference.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N examples.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 16,
    precision: Annotated[str, typer.Option(help="auto (bf16 where native), bf16 or fp32.")
                         ] = "auto",
    forgetting: Annotated[bool, typer.Option(help="Loss on the shipped general chat set, "
                                                  "before and after.")] = True,
    out: Annotated[str | None, typer.Option(help="Report directory (default: <model dir>/eval)."
                                            )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout.")] = False,
) -> None:
    """Was fine-tuning worth it? Compare the fine-tuned model with its base (and with few-shot
    prompting) on held-out data; write report.html, report.json and plots. On preference pairs:
    how often each model gives the preferred answer the higher likelihood."""
    from tunehouse.eval import evaluate, write_report

    def say(msg: str) -> None:
        typer.echo(msg, err=True)

    report = evaluate(model, data, against=against, few_shot=few_shot, shots_from=shots_from,
                      metric=metric, max_new_tokens=max_new_tokens, limit=limit,
                      forgetting=forgetting, batch_size=batch_size, precision=precision,
                      progress=None if as_json else say)
    html_path = write_report(report, Path(out) if out else _default_out(model))
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    typer.echo(report.format_text())
    typer.echo(f"Report: {html_path}  (plots and report.json beside it)")


@app.command("report")
def report_cmd(
    run_dir: Annotated[str, typer.Argument(help="A run dir (with eval/report.json), an eval "
                                                "dir, or a report.json file.")],
    out: Annotated[str | None, typer.Option(help="Where to write (default: beside "
                                                 "report.json).")] = None,
) -> None:
    """Regenerate report.html and its plots from report.json (and the run's metrics)."""
    from tunehouse.eval import load_report, write_report

    path = Path(run_dir)
    report = load_report(path)
    json_path = next(p for p in (path, path / "report.json", path / "eval" / "report.json")
                     if p.is_file())
    metrics_dir = path if (path / "metrics.csv").is_file() or (path / "metrics.jsonl").is_file() \
        else None
    html_path = write_report(report, Path(out) if out else json_path.parent,
                             run_dir=metrics_dir)
    typer.echo(report.summary_line())
    typer.echo(f"Report: {html_path}")
