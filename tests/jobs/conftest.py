"""Fixtures for worker tests: a fresh TUNEHOUSE_HOME and SQLite database per test."""

from __future__ import annotations

import pytest

from tunehouse.store import Database


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path / "home"))
    db = Database(f"sqlite:///{tmp_path}/home/tunehouse.db")
    db.create_all()
    state = {"db": db, "home": tmp_path / "home", "tmp": tmp_path, "procs": []}
    yield state
    for proc in state["procs"]:  # never leave a worker behind, even when a test fails
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db.dispose()
