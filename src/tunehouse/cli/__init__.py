"""The ``tunehouse`` command: thin wiring of the rooms, no logic. One module per command group."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tunehouse",
    help="Fine-tune open language models on your own machines; serve them OpenAI-compatibly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each command module registers itself on ``app`` when imported.
from tunehouse.cli import chat as _chat  # noqa: E402,F401
from tunehouse.cli import eval as _eval  # noqa: E402,F401
from tunehouse.cli import serve as _serve  # noqa: E402,F401
from tunehouse.cli import train as _train  # noqa: E402,F401
from tunehouse.cli import validate as _validate  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    from tunehouse.cli.common import run_app

    run_app(app)
