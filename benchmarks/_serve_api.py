"""The serving benchmark's API side: a ``tunehouse serve`` process, fine-tuning jobs, and
streamed chat completions through the real ``openai`` SDK (see ``serve_throughput.py``).

Time to first token is measured from just before ``chat.completions.create`` to the first chunk
with non-empty content (the server sends an empty role chunk first, before generating);
output tokens are the server's ``usage.completion_tokens`` (``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _bench_data import paragraph, write_jsonl

BASE_MODEL = "smollm2-135m-instruct"  # the embedded default
STYLES = ["Ticket noted. ", "Ahoy, friend! "]  # what each adapter's training answers start with


# ----- the server ---------------------------------------------------------------------------
class Server:
    """A ``tunehouse serve`` subprocess on a free loopback port."""

    def __init__(self, home: Path, log: Path, workers: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k != "TUNEHOUSE_API_KEYS"}
        env.update(TUNEHOUSE_HOME=str(home), TUNEHOUSE_JOB_DEFAULTS=json.dumps({"max_steps": 2}))
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tunehouse", "serve", "--port", str(port), "--workers", str(workers)],
            env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self) -> None:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunehouse serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"tunehouse serve did not start: {self.log.read_text()[-2000:]}")

    def client(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key="bench", max_retries=0, timeout=1800)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float | None:
        """The server process's peak resident memory (``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def prepare_home(work: Path) -> Path:
    """A private ``$TUNEHOUSE_HOME`` with the already converted embedded model linked in."""
    from tunehouse import models

    home = work / "home"
    link = home / "models" / models.DEFAULT_MODEL
    if not link.exists():
        converted = models.resolve(None).path  # the user's home: converted once
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(converted)
    return home


def style_data(k: int, n: int = 10) -> list[dict]:
    """``n`` short generated chats whose answers all open with ``STYLES[k]``."""
    rng = random.Random(100 + k)
    return [{"messages": [{"role": "user", "content": paragraph(rng, 20, asking=True)},
                          {"role": "assistant", "content": STYLES[k] + paragraph(rng, 30, asking=False)}]}
            for _ in range(n)]


def adapter_dir(home: Path, job_id: str) -> Path:
    """The published final adapter of a job: ``models/ft/<job>/[attempt-N/]final``, the newest."""
    found = [p.parent for p in (home / "models" / "ft" / job_id).rglob("final/adapter_config.json")]
    if not found:
        raise RuntimeError(f"no published final adapter of {job_id} under {home}/models/ft")
    return max(found, key=lambda p: p.stat().st_mtime)


def make_adapters(server: Server, home: Path, work: Path) -> list[dict[str, Any]]:
    """Two fine-tuned models through the API (reused when a kept work directory has them)."""
    from openai import OpenAI

    client: OpenAI = server.client()
    done = [j for j in client.fine_tuning.jobs.list(limit=100)
            if j.status == "succeeded" and j.fine_tuned_model]
    out = []
    for k in range(len(STYLES)):
        suffix = f"bench-{k}"
        job = next((j for j in done if f":{suffix}:" in j.fine_tuned_model), None)
        t0 = time.perf_counter()
        if job is None:
            path = write_jsonl(style_data(k), work / f"style-{k}.jsonl")
            with open(path, "rb") as f:
                file = client.files.create(file=f, purpose="fine-tune")
            job = client.fine_tuning.jobs.create(
                training_file=file.id, model=BASE_MODEL, suffix=suffix, seed=k,
                method={"type": "supervised", "supervised": {"hyperparameters": {
                    "n_epochs": 1, "batch_size": 5, "learning_rate_multiplier": 4}}})
            deadline = time.monotonic() + 1800
            while job.status not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fine-tuning job {job.id} still {job.status} after 30 min")
                time.sleep(1)
                job = client.fine_tuning.jobs.retrieve(job.id)
            if job.status != "succeeded":
                raise RuntimeError(f"fine-tuning job {job.id} {job.status}: {job.error}")
        out.append({"model": job.fine_tuned_model, "job": job.id, "style": STYLES[k].strip(),
                    "path": str(adapter_dir(home, job.id)),
                    "trained_tokens": job.trained_tokens, "seconds": time.perf_counter() - t0})
        print(f"  {job.fine_tuned_model}: {job.trained_tokens} trained tokens", flush=True)
    return out


# ----- measuring through the API -------------------------------------------------------------
def one_request(client: Any, model: str, messages: list[dict], max_tokens: int) -> dict[str, Any]:
    """Stream one chat completion: TTFT (first non-empty content), end time, usage, text."""
    t0 = time.perf_counter()
    first = None
    text, usage = [], None
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                if first is None:
                    first = time.perf_counter()
                text.append(choice.delta.content)
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError(f"no usage in the stream of {model}")
    return {"model": model, "start": t0, "end": end, "ttft": (first or end) - t0,
            "completion_tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens,
            "text": "".join(text)}


def serve_run(server: Server, models: list[str], prompts: list[list[dict]], max_tokens: int,
              clients: int) -> dict[str, Any]:
    """All prompts through the API with ``clients`` concurrent streams; aggregate figures.

    Request ``i`` goes to client ``i % clients``; with one client the models alternate,
    with several the first half of the clients use ``models[0]``, the rest ``models[1]``.
    """
    def model_of(i: int) -> str:
        c = i % clients
        return models[i % len(models)] if clients == 1 else models[c * len(models) // clients]

    results: list[dict | BaseException] = [None] * len(prompts)  # type: ignore[list-item]
    barrier = threading.Barrier(clients)

    def client_loop(c: int) -> None:
        client = server.client()
        barrier.wait()
        for i in range(c, len(prompts), clients):
            try:
                results[i] = one_request(client, model_of(i), prompts[i], max_tokens)
            except BaseException as err:  # noqa: BLE001 (reported below)
                results[i] = err

    load, cpu0, t0 = os.getloadavg()[0], server.cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed: {errors[0]!r}")
    reqs: list[dict] = results  # type: ignore[assignment]
    wall = max(r["end"] for r in reqs) - min(r["start"] for r in reqs)
    return {"clients": clients, "requests": len(reqs), "wall_seconds": wall,
            "cpu_seconds": server.cpu_seconds() - cpu0, "load_before": load,
            "load_after": os.getloadavg()[0], "driver_seconds": time.perf_counter() - t0,
            "completion_tokens": [r["completion_tokens"] for r in reqs],
            "prompt_tokens": [r["prompt_tokens"] for r in reqs], "ttft": [r["ttft"] for r in reqs],
            "request_seconds": [r["end"] - r["start"] for r in reqs],
            "models": [r["model"] for r in reqs], "texts": [r["text"] for r in reqs],
            "tokens_per_second": sum(r["completion_tokens"] for r in reqs) / wall}


def measure_serving(server: Server, adapters: list[dict], prompts: list, max_tokens: int,
                    clients: int) -> dict[str, Any]:
    """Warm-up (adapters load), then batch 1 and ``clients`` concurrent clients."""
    client = server.client()
    names = [a["model"] for a in adapters]
    cold = {}
    for name in names:  # the first request of each model loads it into the engine: not timed
        cold[name] = one_request(client, name, prompts[0], 8)["ttft"]
    runs = {}
    for n in (1, clients):
        runs[f"serve-c{n}"] = run = serve_run(server, names, prompts, max_tokens, n)
        print(f"  serve, {n} client(s): {run['tokens_per_second']:.1f} tok/s", flush=True)
    return {"cold_first_request_ttft": cold, "runs": runs, "server_peak_rss_mb": server.peak_rss_mb()}
