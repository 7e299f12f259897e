"""A pool of worker processes for ``tunehouse serve``: started, watched, restarted if they die.

Each worker is its own process (``python -m tunehouse.jobs.worker``) so that a crash or a
``kill -9`` of one never touches the API; a dead worker is restarted after a short back-off
and its job is re-claimed once its lease expires.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

log = logging.getLogger("tunehouse.pool")


class WorkerPool:
    """``count`` worker processes sharing one database."""

    def __init__(self, count: int, *, database: str, lease_seconds: float,
                 poll_seconds: float = 1.0, restart_delay: float = 1.0):
        self.count, self.database = count, database
        self.lease_seconds, self.poll_seconds = lease_seconds, poll_seconds
        self.restart_delay = restart_delay
        self.procs: list[subprocess.Popen | None] = [None] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="worker-pool")

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "tunehouse.jobs.worker", "--database", self.database,
               "--lease-seconds", str(self.lease_seconds), "--poll-seconds",
               str(self.poll_seconds), "--parent-pid", str(os.getpid())]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        for i in range(self.count):
            self.procs[i] = self._spawn()
        self._thread.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def _watch(self) -> None:
        while not self._stop.wait(self.restart_delay):
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self._stop.is_set():
                    log.warning("worker %d exited with %s; restarting", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (each checkpoints and re-queues its job), then wait."""
        self._stop.set()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.terminate()
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
