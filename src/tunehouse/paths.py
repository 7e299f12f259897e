"""Where tunehouse keeps its state: ``$TUNEHOUSE_HOME`` (default ``~/.tunehouse``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The tunehouse home directory, created on first use."""
    root = Path(os.environ.get("TUNEHOUSE_HOME") or Path.home() / ".tunehouse").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
