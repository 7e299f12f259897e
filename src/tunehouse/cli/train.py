"""``tunehouse train``: validate, fine-tune, write the output directory."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from tunehouse.cli import app
from tunehouse.errors import InvalidConfig


def _auto_or(kind: type, value: str | None, name: str) -> Any:
    if value is None or value == "auto":
        return value
    try:
        return kind(value)
    except ValueError:
        raise InvalidConfig(f"--{name} must be 'auto' or a {kind.__name__}, got {value!r}") from None


@app.command()
def train(
    train_file: Annotated[str, typer.Option("--train", help="Training JSONL: chat, or preference "
                                            "pairs with --method dpo.")],
    validation: Annotated[str | None, typer.Option(help="Validation JSONL, same format as --train.")] = None,
    validation_split: Annotated[float | None, typer.Option(help="Hold out this fraction of --train.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model: embedded name, HF dir or run dir.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    method: Annotated[str | None, typer.Option(help="supervised (chat examples) or dpo "
                                               "(preference pairs).")] = None,
    beta: Annotated[str | None, typer.Option(help="DPO beta in (0, 2] or auto (0.1).")] = None,
    epochs: Annotated[str | None, typer.Option(help="Epochs (1-50) or auto.")] = None,
    batch_size: Annotated[str | None, typer.Option(help="Examples per step (1-256) or auto.")] = None,
    learning_rate_multiplier: Annotated[str | None, typer.Option(help="LR multiplier or auto.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha.")] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per example.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="run.yaml with any option.")] = None,
    out: Annotated[str | None, typer.Option(help="Output directory.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key=value, e.g. lora.r=8.")] = None,
) -> None:
    """Fine-tune a model on chat examples (LoRA by default), with checkpoints and resume."""
    from tunehouse.config import load_config
    from tunehouse.train.loop import train as run_train
    from tunehouse.train.progress import ProgressReporter

    lora = {k: v for k, v in {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout}.items()
            if v is not None}
    dotted = list(set_ or []) + [f"lora.{k}={v}" for k, v in lora.items()]
    cfg = load_config(config, overrides={
        "train_file": train_file, "validation_file": validation, "validation_split": validation_split,
        "model": model, "full": full or None, "epochs": _auto_or(int, epochs, "epochs"),
        "method": method, "beta": _auto_or(float, beta, "beta"),
        "batch_size": _auto_or(int, batch_size, "batch-size"),
        "learning_rate_multiplier": _auto_or(float, learning_rate_multiplier,
                                             "learning-rate-multiplier"),
        "patience": patience, "max_length": max_length, "max_steps": max_steps, "seed": seed,
        "out": out, "resume": resume or None,
    }, dotted=dotted)
    stop = {"flag": False}

    def _on_signal(signum: int, _frame: Any) -> None:
        stop["flag"] = True  # save a checkpoint at the next step boundary, then exit

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    reporter = ProgressReporter()
    try:
        result = run_train(cfg, reporter.callbacks(lambda: stop["flag"]))
    finally:
        reporter.close()
    out_dir = Path(result.out_dir)
    if result.interrupted:
        typer.echo(f"Stopped at step {result.steps}/{result.total_steps}; checkpoint saved. "
                   f"Continue with: tunehouse train ... --out {out_dir} --resume", err=True)
        raise typer.Exit(130)
    m = result.metrics
    parts = [f"train loss {m.get('train_loss', float('nan')):.4f}"]
    if m.get("full_valid_loss") is not None:
        parts.append(f"full validation loss {m['full_valid_loss']:.4f}")
    if m.get("full_valid_reward_accuracy") is not None:  # DPO
        parts.append(f"validation reward accuracy {m['full_valid_reward_accuracy']:.2f}")
    typer.echo(f"Done: {result.steps} steps, {result.trained_tokens} tokens, " + ", ".join(parts)
               + (f", best step {result.best_step}" if result.best_step else ""))
    typer.echo(f"Output: {out_dir}  (metrics.csv, loss.png; try: tunehouse chat --model {out_dir})")
