"""A rich progress bar (step, loss, tokens/s, ETA) driven by the training callbacks."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunehouse.train.callbacks import TrainCallbacks


class ProgressReporter:
    """Draws a live bar on a terminal; prints one line per few steps when output is piped."""

    def __init__(self, console: Console | None = None, every: int = 5):
        self.console = console or Console(stderr=True)
        self.every = every
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task: Any = None

    def callbacks(self, should_stop: Any = None) -> TrainCallbacks:
        return TrainCallbacks(on_metrics=self.on_metrics, on_message=self.on_message,
                              on_checkpoint=self.on_checkpoint,
                              should_stop=should_stop or (lambda: False))

    def _ensure(self, total: int) -> None:
        if self.progress is None and self.live:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, loss="-", val="-", tps="-")

    def on_metrics(self, row: dict[str, Any]) -> None:
        self._ensure(row["total_steps"])
        val = row.get("full_valid_loss", row.get("valid_loss"))
        fields = {"loss": f"{row['train_loss']:.4f}", "tps": f"{row.get('tokens_per_second') or 0:.0f}"}
        if val is not None:
            fields["val"] = f"{val:.4f}"
        if self.progress is not None:
            self.progress.update(self.task, completed=row["step"], **fields)
        elif row["step"] % self.every == 0 or row["step"] == row["total_steps"] or \
                "full_valid_loss" in row:
            print(f"step {row['step']}/{row['total_steps']}  loss {fields['loss']}  "
                  f"val {fields.get('val', '-')}  {fields['tps']} tok/s", file=sys.stderr,
                  flush=True)

    def on_message(self, level: str, text: str) -> None:
        style = {"warn": "yellow", "error": "red"}.get(level, "dim")
        self.console.print(f"[{style}]{text}[/{style}]")

    def on_checkpoint(self, step: int, path: str, metrics: dict[str, Any], epoch_end: bool) -> None:
        if not self.live:
            print(f"checkpoint step {step} -> {path}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
