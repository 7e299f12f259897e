"""``tunehouse validate``: check a fine-tuning file before training (exit 0 usable, 1 not)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunehouse.cli import app


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Training JSONL (chat or preference/DPO).")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model whose tokenizer and chat template count tokens"
        " (embedded name, HF directory or run directory); default: the embedded model.")] = None,
    validation: Annotated[Path | None, typer.Option(
        "--validation", help="Validation JSONL, checked too and for overlap.")] = None,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1, help="Tokens per example before truncation; default: the"
        " model's context length.")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, max=50, help="Epochs for the time estimate; default: auto.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a data file: line-exact errors, token counts, duplicates, truncation, time estimate."""
    from tunehouse.data.validate import ensure_file, format_report, validate_file

    ensure_file(file, param="training_file")  # fail fast, before loading a tokenizer
    if validation is not None:
        ensure_file(validation, param="validation_file")
    tokenizer, context, n_params = _model_facts(model)
    report = validate_file(file, tokenizer=tokenizer, max_length=max_length or context,
                           validation_path=validation, n_params=n_params, epochs=epochs)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        from rich.console import Console

        Console(soft_wrap=True, highlight=False).print(format_report(report, markup=True))
    raise typer.Exit(0 if report.ok else 1)


def _model_facts(name: str | None) -> tuple[Any, int | None, int | None]:
    """The model's tokenizer, context length and parameter count, without loading weights."""
    from tunehouse import models

    source = models.resolve(name)
    tokenizer = models.load_tokenizer(source)
    base = models.resolve(source.adapter_of) if source.adapter_of else source
    directory = Path(base.path)
    if not (directory / "config.json").is_file():  # a hub id: nothing local to read
        return tokenizer, None, None
    config = json.loads((directory / "config.json").read_text())
    context = config.get("max_position_embeddings")
    return tokenizer, int(context) if context else None, _count_params(directory) or None


def _count_params(directory: Path) -> int:
    """Parameters in a model directory, from the safetensors headers (no tensor is read)."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(min(size, 100 * 2**20)))
        except (OSError, ValueError, struct.error):
            return 0
        for key, info in header.items():
            if key != "__metadata__" and isinstance(info, dict):
                n = 1
                for dim in info.get("shape", []):
                    n *= int(dim)
                total += n
    return total
