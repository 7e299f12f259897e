"""The job worker: claim a job (lease + heartbeat + attempt), train it in a child process.

One worker runs one job at a time. While the child trains, the worker renews the lease every
``heartbeat`` seconds and reads the job's status: ``cancelled`` kills the child at once,
``paused`` (or this worker being asked to stop) sends it SIGTERM so it saves a checkpoint and
exits. If the heartbeat finds that another attempt holds the job (this worker was stalled past
its lease), the child is killed and nothing more is written. When the worker itself dies the
child dies with it; the lease expires and another worker resumes the job from its last
complete checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import OperationalError

from tunehouse.jobs import artifacts
from tunehouse.jobs.runner import EXIT_DONE, EXIT_LEASE_LOST, EXIT_STOPPED
from tunehouse.store import Database
from tunehouse.store import jobs as jobstore

log = logging.getLogger("tunehouse.worker")


@dataclass
class WorkerSettings:
    database: str | None = None  # database URL (default: SQLite under $TUNEHOUSE_HOME)
    lease_seconds: float = 30.0  # a job whose lease is not renewed for this long is re-claimed
    poll_seconds: float = 1.0  # idle wait between claim attempts
    stop_grace_seconds: float = 120.0  # time a paused/stopping child gets to save and exit
    parent_pid: int | None = None  # exit when this process (``tunehouse serve``) is gone

    @property
    def heartbeat_seconds(self) -> float:
        return max(0.2, min(1.0, self.lease_seconds / 4))


def _tail(path: Path, lines: int = 6) -> str:
    """The last lines of a child's log: the error summary for a crashed attempt."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[-1500:]


class Worker:
    """Claims jobs one at a time and supervises their training processes."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.db = Database(settings.database)
        self.db.create_all()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stopping = threading.Event()

    def _parent_gone(self) -> bool:
        pid = self.settings.parent_pid
        return pid is not None and os.getppid() != pid

    def run_forever(self) -> None:
        """Loop until asked to stop (SIGTERM/SIGINT) or the parent process is gone."""
        log.info("worker %s started", self.worker_id)
        while not self.stopping.is_set() and not self._parent_gone():
            try:
                claim = jobstore.claim_job(self.db, worker_id=self.worker_id,
                                           lease_s=self.settings.lease_seconds)
            except OperationalError as exc:  # e.g. the database is briefly unavailable
                log.warning("claim failed: %s", exc)
                claim = None
            if claim is None:
                self.stopping.wait(self.settings.poll_seconds)
                continue
            self.run_claim(claim)
        log.info("worker %s stopped", self.worker_id)

    def run_claim(self, claim: jobstore.Claim) -> None:
        """Train one claimed attempt in a child process and give the job back."""
        log.info("claimed %s (attempt %d)", claim.job_id, claim.attempt)
        logfile = artifacts.job_dir(claim.job_id) / f"attempt-{claim.attempt}.log"
        cmd = [sys.executable, "-m", "tunehouse.jobs.runner", "--database", self.db.url,
               "--job", claim.job_id, "--attempt", str(claim.attempt)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
        rc = self._supervise(claim, proc)
        if rc is None:
            log.warning("lost the lease on %s (attempt %d)", claim.job_id, claim.attempt)
            return
        # EXIT_LEASE_LOST: the job ended (cancelled) or moved on; release() is fenced anyway
        outcome = {EXIT_DONE: "done", EXIT_STOPPED: "stopped",
                   EXIT_LEASE_LOST: "done"}.get(rc, "crashed")
        error = None
        if outcome == "crashed":
            how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
            error = f"training process {how}: {_tail(logfile)}".rstrip(": ")
        self._retry(lambda: jobstore.release(self.db, claim, outcome=outcome, error_text=error))
        log.info("released %s (attempt %d): %s", claim.job_id, claim.attempt, outcome)

    def _retry(self, fn: object, tries: int = 10) -> None:
        for i in range(tries):
            try:
                fn()  # type: ignore[operator]
                return
            except OperationalError as exc:
                log.warning("database busy (%s); retrying", exc)
                time.sleep(min(5.0, 0.2 * 2**i))

    def _supervise(self, claim: jobstore.Claim, proc: subprocess.Popen) -> int | None:
        """Heartbeat until the child exits; its exit code, or None when the lease was lost."""
        stop_sent: float | None = None
        while True:
            rc = proc.poll()
            if rc is not None:
                return rc
            try:
                status = jobstore.heartbeat(self.db, claim, lease_s=self.settings.lease_seconds)
            except OperationalError as exc:
                log.warning("heartbeat failed: %s", exc)
                status = "running"
            if status is None or status == "cancelled":
                proc.kill()
                proc.wait()
                return None if status is None else EXIT_DONE
            if status == "paused" or self.stopping.is_set() or self._parent_gone():
                if stop_sent is None:
                    proc.send_signal(signal.SIGTERM)
                    stop_sent = time.monotonic()
                elif time.monotonic() - stop_sent > self.settings.stop_grace_seconds:
                    proc.kill()
            try:
                proc.wait(timeout=self.settings.heartbeat_seconds)
            except subprocess.TimeoutExpired:
                pass


def main(argv: list[str] | None = None) -> None:
    """``python -m tunehouse.jobs.worker``: how ``tunehouse serve`` starts its workers."""
    ap = argparse.ArgumentParser(prog="python -m tunehouse.jobs.worker")
    ap.add_argument("--database", default=None)
    ap.add_argument("--lease-seconds", type=float, default=30.0)
    ap.add_argument("--poll-seconds", type=float, default=1.0)
    ap.add_argument("--parent-pid", type=int, default=None)
    args = ap.parse_args(argv)
    run_worker(WorkerSettings(database=args.database, lease_seconds=args.lease_seconds,
                              poll_seconds=args.poll_seconds, parent_pid=args.parent_pid))


def run_worker(settings: WorkerSettings) -> None:
    """Run a worker in this process until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    worker = Worker(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stopping.set())
    worker.run_forever()


if __name__ == "__main__":
    main()
