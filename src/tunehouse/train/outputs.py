"""What a run leaves behind besides weights: metrics CSV/JSONL, the loss curve PNG, run metadata.

``metrics.csv`` uses OpenAI's result-file columns so existing tooling reads it unchanged;
``metrics.jsonl`` keeps every field of every step (learning rate, tokens/s, full validation).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

CSV_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


class MetricsLog:
    """Append-only per-step metrics, truncated back to a checkpoint's step on resume."""

    def __init__(self, out: Path):
        self.path = out / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    break  # a torn last line from a crash

    def truncate_after(self, step: int) -> None:
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def update_last(self, extra: dict[str, Any]) -> None:
        if self.rows:
            self.rows[-1].update(extra)
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        os.replace(tmp, self.path)

    def write_csv(self, out: Path) -> Path:
        path = out / "metrics.csv"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in self.rows:
                w.writerow([r["step"], _fmt(r.get("train_loss")),
                            _fmt(r.get("train_mean_token_accuracy")),
                            _fmt(r.get("valid_loss")), _fmt(r.get("valid_mean_token_accuracy"))])
        os.replace(tmp, path)
        return path


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def plot_loss(rows: list[dict[str, Any]], path: Path, title: str = "Training loss") -> Path | None:
    """Train loss, validation loss and full validation loss per step, as a PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    series = [("train_loss", "train", "-"), ("valid_loss", "validation (batch)", "--"),
              ("full_valid_loss", "validation (full)", "o-")]
    for key, label, style in series:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label=label, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
