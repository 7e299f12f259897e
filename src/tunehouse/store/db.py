"""The database: one SQLAlchemy engine, SQLite by default, PostgreSQL by URL.

SQLite is opened in WAL mode with ``synchronous=FULL`` (job state must survive an OS crash) and
a ``busy_timeout``; every *write* transaction starts with ``BEGIN IMMEDIATE`` so that a
read-then-write (a job claim, a status change) takes the write lock up front and waits for it,
instead of failing with ``database is locked`` when a deferred transaction tries to upgrade.
On PostgreSQL (psycopg 3) the same code runs with ``SELECT ... FOR UPDATE SKIP LOCKED`` claims,
and every read-then-write of a job row locks it with ``FOR UPDATE`` (``store.jobs``), which is
what ``BEGIN IMMEDIATE`` gives on SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tunehouse.errors import InvalidConfig
from tunehouse.paths import home

BUSY_TIMEOUT_MS = 30_000
_SCHEMA_LOCK = 0x7475_6E65  # pg_advisory_xact_lock key held while creating tables ("tune")
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "fuse.sshfs", "afs", "lustre"}


def default_url() -> str:
    """``sqlite:///$TUNEHOUSE_HOME/tunehouse.db``."""
    return f"sqlite:///{home() / 'tunehouse.db'}"


def _fs_type(path: Path) -> str | None:
    """The filesystem type of the mount holding ``path`` (Linux ``/proc/mounts``), if known."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) >= len(best):
            best, kind = parts[1], parts[2]
    return kind


def _check_sqlite_path(url: str) -> None:
    """Refuse a SQLite file on a network filesystem: WAL does not work there."""
    path = url.split("///", 1)[1] if "///" in url else ""
    if not path or path == ":memory:":
        return
    parent = Path(path).expanduser().parent
    parent.mkdir(parents=True, exist_ok=True)
    kind = _fs_type(parent)
    if kind in _NETWORK_FS:
        raise InvalidConfig(f"The database {path} is on a network filesystem ({kind}); SQLite WAL "
                            "does not work there. Use a local disk or --database postgresql://...")


def _sqlite_hooks(engine: Engine) -> None:
    """PRAGMAs on every connection; BEGIN / BEGIN IMMEDIATE emitted by us, not by pysqlite."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (SQLAlchemy's recipe)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("tunehouse_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean the psycopg 3 driver (``tunehouse[postgres]``);
    SQLAlchemy's own default for them would be psycopg2, which tunehouse does not install."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _postgres_engine(url: str) -> Engine:
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise InvalidConfig(f"The database URL needs the PostgreSQL driver '{exc.name}': "
                            "pip install 'tunehouse[postgres]'.") from None


class Database:
    """An engine plus read and write session factories for one database URL."""

    def __init__(self, url: str | None = None):
        self.url = normalize_url(url or os.environ.get("TUNEHOUSE_DATABASE") or default_url())
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            _check_sqlite_path(self.url)
            self.engine = create_engine(self.url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000,
                                                                "check_same_thread": False})
            _sqlite_hooks(self.engine)
        else:
            self.engine = _postgres_engine(self.url)
        self._writer = self.engine.execution_options(tunehouse_write=True)
        self._read = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._write = sessionmaker(bind=self._writer, expire_on_commit=False)

    def create_all(self) -> None:
        """Create missing tables (idempotent, and safe when several processes start at once:
        one transaction under ``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL)."""
        from tunehouse.store.models import Base

        with self._writer.begin() as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            Base.metadata.create_all(conn)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (plain ``BEGIN``: readers never block the writer in WAL mode)."""
        with self._read() as session:  # close() ends the transaction; rows stay readable
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
        with self._write() as session, session.begin():
            yield session

    def pragma(self, name: str) -> Any:
        """The value of a SQLite PRAGMA on a fresh connection (for checks and tests)."""
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

    def dispose(self) -> None:
        self.engine.dispose()
