"""``tunehouse serve`` (API + workers in one command) and ``tunehouse worker`` (a worker alone)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunehouse.cli import app


def _base_model(model: str | None) -> str:
    """The --model value, resolved once (the embedded model is converted on first use)."""
    from tunehouse import models

    name = model or models.DEFAULT_MODEL
    path = Path(name).expanduser()
    if path.is_dir():
        name = str(path.resolve())
    models.resolve(name)
    return name


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Job worker processes (0: API only).")] = 1,
    database: Annotated[str | None, typer.Option(
        help="Database URL (default sqlite:///$TUNEHOUSE_HOME/tunehouse.db; postgresql://...)."
    )] = None,
    model: Annotated[str | None, typer.Option(
        help="Base model to serve and fine-tune: embedded name or model directory.")] = None,
    lease_seconds: Annotated[float, typer.Option(
        help="Job lease: a job whose worker stops heartbeating is resumed after this.")] = 30.0,
    max_attempts: Annotated[int, typer.Option(
        help="Failed attempts before a job fails.")] = 3,
) -> None:
    """Start the OpenAI-compatible API and the fine-tuning worker(s) in one command."""
    import uvicorn

    from tunehouse.api.app import build_app
    from tunehouse.api.deps import ServerSettings
    from tunehouse.errors import InvalidConfig
    from tunehouse.jobs.pool import WorkerPool
    from tunehouse.store import Database

    if workers < 0 or max_attempts < 1 or lease_seconds < 1:
        raise InvalidConfig("--workers must be >= 0, --max-attempts >= 1, --lease-seconds >= 1.")
    settings = ServerSettings.from_env(_base_model(model), database=database, host=host,
                                       max_attempts=max_attempts)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        print(f"warning: serving on {host} without TUNEHOUSE_API_KEYS: anyone who can reach "
              "this port can use it.", file=sys.stderr)
    db = Database(settings.database)
    db.create_all()
    pool = WorkerPool(workers, database=db.url, lease_seconds=lease_seconds)
    pool.start()
    try:
        uvicorn.run(build_app(settings, db), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        pool.stop()


@app.command()
def worker(
    database: Annotated[str | None, typer.Option(help="Database URL (as for serve).")] = None,
    lease_seconds: Annotated[float, typer.Option(help="Job lease in seconds.")] = 30.0,
) -> None:
    """Run one job worker (claims queued fine-tuning jobs and trains them) until Ctrl-C."""
    from tunehouse.jobs.worker import WorkerSettings, run_worker

    run_worker(WorkerSettings(database=database, lease_seconds=lease_seconds))
