"""Helpers for API tests: a real ``tunehouse serve`` process on a random port, the real SDK.

The server fine-tunes and serves the tiny random-init model; ``TUNEHOUSE_FAULTS`` slows each
training step a little so cancel/pause land mid-training. Two API keys let tests check that
one key's objects are invisible (404) to the other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

KEY_A, KEY_B = "test-key-a", "test-key-b"
MAX_UPLOAD = 1_000_000


@dataclass
class Server:
    url: str
    home: Path
    model: str  # the base model's public id
    proc: subprocess.Popen
    log: Path

    def client(self, key: str = KEY_A) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def http(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, model_dir: Path | None, *, workers: int = 1, extra_env: dict | None = None,
                 extra_args: tuple[str, ...] = (), lease_seconds: float = 5,
                 preexec_fn: Callable[[], None] | None = None) -> Server:
    """Start ``tunehouse serve`` and wait until it answers (``preexec_fn`` runs in the child
    before exec, e.g. to set resource limits on the server process)."""
    port, home = _free_port(), tmp / "home"
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "TUNEHOUSE_API_KEYS": f"{KEY_A},{KEY_B}",
           "TUNEHOUSE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), **(extra_env or {})}
    log = tmp / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunehouse", "serve", "--port", str(port),
         *(["--model", str(model_dir)] if model_dir else []), "--workers", str(workers),
         "--lease-seconds", str(lease_seconds), *extra_args],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        preexec_fn=preexec_fn)
    name = model_dir.name if model_dir else "smollm2-135m-instruct"
    server = Server(f"http://127.0.0.1:{port}", home, name, proc, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if server.http().get("/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def wait_job(client: OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 300):
    """Poll ``retrieve`` until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def chat_example(i: int) -> dict:
    """A small learnable chat example (the answer is a fixed function of the question)."""
    word = ["red", "blue", "green", "gold", "gray"][i % 5]
    return {"messages": [{"role": "user", "content": f"Colour {i}: {word}?"},
                         {"role": "assistant", "content": f"code-{word}"}]}


def jsonl(rows: list) -> bytes:
    """JSONL bytes; str rows are written verbatim (for malformed lines)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
