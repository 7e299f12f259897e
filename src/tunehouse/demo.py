"""``make demo``: fine-tune the embedded model on the ticket-triage task and prove it helped.

Runs the whole command-line core on the data set that ships in ``examples/ticket-triage``:
validate -> train (LoRA) -> evaluate fine-tuned vs base (zero-shot and few-shot) on held-out
tickets, then prints the scores, a few answers side by side and where the HTML report is.

    python -m tunehouse.demo [--out runs/demo] [--data examples/ticket-triage]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunehouse.errors import TunehouseError

console = Console()
EPOCHS = 1  # the loss curve flattens within one epoch; more only adds forgetting


def _validate(data: Path) -> None:
    from tunehouse.cli.validate import _model_facts
    from tunehouse.data.validate import format_report, validate_file

    tok, _context, n_params = _model_facts(None)
    report = validate_file(data / "train.jsonl", tokenizer=tok, max_length=2048,
                           validation_path=data / "validation.jsonl", n_params=n_params,
                           epochs=EPOCHS)
    console.print(format_report(report))
    report.raise_if_invalid()


def _train(data: Path, out: Path) -> None:
    from tunehouse.config import TrainConfig
    from tunehouse.train.loop import train
    from tunehouse.train.progress import ProgressReporter

    cfg = TrainConfig(train_file=str(data / "train.jsonl"),
                      validation_file=str(data / "validation.jsonl"), out=str(out), epochs=EPOCHS)
    reporter = ProgressReporter(console=console)
    try:
        result = train(cfg.check(), reporter.callbacks())
    finally:
        reporter.close()
    m = result.metrics
    console.print(f"Trained {result.steps} steps on {result.trained_tokens} tokens: train loss "
                  f"{m.get('train_loss', 0):.3f}, full validation loss "
                  f"{m.get('full_valid_loss', float('nan')):.3f}")


def _side_by_side(report: Any, n: int = 4) -> None:
    """A few held-out tickets with the reference and each candidate's answer."""
    names = [c.name for c in report.candidates]
    table = Table(title="Held-out tickets: answers side by side", show_lines=True)
    for col in ["ticket", "reference", *names]:
        table.add_column(col, overflow="fold", max_width=32)
    for i, ex in enumerate(report.examples[:n]):
        answers = [report.candidate(name).answers[i].strip()[:120] for name in names]
        table.add_row(str(ex.get("prompt", ""))[-140:], str(ex.get("reference", "")), *answers)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "examples"
                                              / "ticket-triage"))
    args = parser.parse_args(argv)
    from tunehouse.cli.common import quiet_libraries

    quiet_libraries()
    data, out = Path(args.data), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    try:
        console.rule("1. validate the training data")
        _validate(data)
        console.rule("2. fine-tune smollm2-135m-instruct (LoRA)")
        _train(data, out)
        console.rule("3. evaluate on held-out tickets: fine-tuned vs base")
        from tunehouse.eval.compare import evaluate
        from tunehouse.eval.report import write_report

        report = evaluate(str(out), str(data / "heldout.jsonl"), few_shot=3,
                          shots_from=str(data / "train.jsonl"))
        console.print(report.format_text())
        _side_by_side(report)
        html = write_report(report, out / "eval")
        console.rule("result")
        console.print(f"[bold]{report.summary_line()}[/bold]")
        console.print(f"Report: {html}\nTry it: .venv/bin/tunehouse chat --model {out}")
    except TunehouseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    console.print(f"Demo finished in {time.time() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
