"""Shared CLI plumbing: one-line errors with exit code 2, no tracebacks for user mistakes."""

from __future__ import annotations

import os
import sys
from typing import Any

from tunehouse.errors import TunehouseError


def quiet_libraries() -> None:
    """Silence library progress bars and advisory warnings that would drown our output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers reads TRANSFORMERS_VERBOSITY when it is first imported; importing it here
    # would cost every command (even a failing one) seconds.


def run_app(app: Any) -> None:
    """Run the typer app; map domain errors to ``error: ...`` on stderr and exit 2."""
    quiet_libraries()
    try:
        app(standalone_mode=True)
    except TunehouseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
