"""run_job: validate the files, train, publish checkpoints and the model, in the training process.

A worker starts this module as a child process (``python -m tunehouse.jobs.runner``) for one
claimed attempt, so a crash, an out-of-memory kill or a cancel never takes the worker or the
API down. Every database write names the attempt (a fencing token, see ``store.jobs``): if a
newer attempt has taken over, this process writes nothing and exits.

Published models go to attempt-specific directories (``models/ft/<job>/attempt-N/...``), so a
stalled attempt that wakes up after losing its lease cannot overwrite the model a newer attempt
published: its directory is never referenced, and it is removed when the fenced write fails.

Exit codes: 0 the job's outcome is recorded (succeeded, failed on user error, paused,
cancelled); 3 stopped on request with a checkpoint (shutdown: re-queued); 4 the lease was lost;
anything else (a traceback, a signal) is a crash that the worker counts against ``max_attempts``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunehouse.config import TrainConfig, from_dict
from tunehouse.errors import TunehouseError, is_disk_full
from tunehouse.jobs import artifacts
from tunehouse.jobs.evaluation import JobEvaluation, evaluate_run
from tunehouse.store import Database, ids
from tunehouse.store import events as ev
from tunehouse.store import jobs as jobstore
from tunehouse.store.files import file_path, store_copy
from tunehouse.store.models import FileRow, JobRow, ModelRow

EXIT_DONE, EXIT_STOPPED, EXIT_LEASE_LOST = 0, 3, 4
KEEP_CHECKPOINTS = 3
METRIC_KEYS = ("step", "total_steps", "train_loss", "valid_loss", "full_valid_loss",
               "train_mean_token_accuracy", "valid_mean_token_accuracy",
               "full_valid_mean_token_accuracy")


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (PostgreSQL JSON rejects NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _faults() -> dict[str, float]:
    """Fault injection for fault tests, e.g. ``TUNEHOUSE_FAULTS="step_sleep=0.2,crash_at_step=2"``
    (``crash_on_start``: raise before anything runs, a poison job;
    ``fsize_limit_after_checkpoint=N``: after the first checkpoint, no file of this process may
    grow past N bytes (``RLIMIT_FSIZE``), so the next large write fails like a full disk)."""
    out: dict[str, float] = {}
    for item in filter(None, os.environ.get("TUNEHOUSE_FAULTS", "").split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = float(value or 1)
    return out


def step_message(m: dict[str, Any]) -> str:
    """OpenAI's metrics line: ``Step 3/10: training loss=1.23, validation loss=...``."""
    parts = [f"training loss={m['train_loss']:.4f}"] if m.get("train_loss") is not None else []
    for key, label in (("valid_loss", "validation loss"),
                       ("full_valid_loss", "full validation loss")):
        if m.get(key) is not None:
            parts.append(f"{label}={m[key]:.4f}")
    return f"Step {m.get('step')}/{m.get('total_steps')}: " + ", ".join(parts)


class JobReporter:
    """The training callbacks of one attempt, written to the database (fenced)."""

    def __init__(self, db: Database, job: JobRow, attempt: int, stop: threading.Event):
        self.db, self.job, self.attempt, self.stop = db, job, attempt, stop
        self.model_name = artifacts.fine_tuned_name(job.model, job.suffix, job.id)
        self.t0, self.first_step = time.time(), None
        self.faults = _faults()

    def callbacks(self) -> Any:
        from tunehouse.train.callbacks import TrainCallbacks

        return TrainCallbacks(on_metrics=self.on_metrics, on_checkpoint=self.on_checkpoint,
                              on_message=self.on_message, should_stop=self.stop.is_set)

    def on_message(self, level: str, text: str) -> None:
        with jobstore.fenced(self.db, self.job.id, self.attempt) as (s, _row):
            ev.add_event(s, self.job.id, level if level in ("info", "warn", "error") else "info",
                         text)

    def _eta(self, step: int, total: int) -> int | None:
        if self.first_step is None:
            self.first_step = step - 1
        done = step - self.first_step
        if done <= 0 or not total:
            return None
        return int(time.time() + (time.time() - self.t0) / done * max(0, total - step))

    def on_metrics(self, m: dict[str, Any]) -> None:
        clean = {k: _finite(v) for k, v in m.items()}
        step, total = int(clean.get("step", 0)), int(clean.get("total_steps") or 0)
        data = {k: clean.get(k) for k in METRIC_KEYS}
        with jobstore.fenced(self.db, self.job.id, self.attempt) as (s, row):
            ev.add_metrics(s, self.job.id, self.attempt, clean)
            ev.add_event(s, self.job.id, "info", step_message(clean), type="metrics", data=data)
            row.step, row.total_steps = step, total or None
            row.trained_tokens = clean.get("trained_tokens", row.trained_tokens)
            row.estimated_finish = self._eta(step, total)
        if self.faults.get("step_sleep"):
            time.sleep(self.faults["step_sleep"])
        if self.faults.get("crash_at_step") and step >= self.faults["crash_at_step"]:
            raise RuntimeError(f"injected fault at step {step}")

    def on_checkpoint(self, step: int, path: str, metrics: dict[str, Any], epoch_end: bool
                      ) -> None:
        if epoch_end:  # mid-epoch checkpoints exist for resume only; the API lists one per epoch
            self._publish_checkpoint(step, path, metrics)
        limit = self.faults.get("fsize_limit_after_checkpoint")
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    def _publish_checkpoint(self, step: int, path: str, metrics: dict[str, Any]) -> None:
        name = f"{self.model_name}:ckpt-step-{step}"
        target = artifacts.publish(Path(path), artifacts.model_dir(
            self.job.id, f"attempt-{self.attempt}/ckpt-step-{step}"))
        shown = {k: _finite(metrics.get(k)) for k in METRIC_KEYS if k != "total_steps"}
        shown["step"] = step
        try:
            with jobstore.fenced(self.db, self.job.id, self.attempt) as (s, _row):
                replaced = s.scalar(select(ModelRow.path).where(ModelRow.id == name))
                ev.add_checkpoint(s, job_id=self.job.id, owner=self.job.owner, step=step,
                                  model_id=name, path=str(target), metrics=shown)
                dropped = ev.prune_checkpoints(s, job_id=self.job.id, keep=KEEP_CHECKPOINTS)
                ev.add_event(s, self.job.id, "info", f"Checkpoint created at step {step}: {name}")
        except BaseException:
            artifacts.remove(target)  # never referenced: this attempt no longer holds the job
            raise
        for p in dropped + ([replaced] if replaced and replaced != str(target) else []):
            artifacts.remove(p)


def build_config(job: JobRow) -> TrainConfig:
    """The run configuration of a job; ``TUNEHOUSE_JOB_DEFAULTS`` (JSON) sets server defaults."""
    method = job.method or {"type": "supervised"}
    kind = method.get("type", "supervised")
    hp = (method.get(kind) or {}).get("hyperparameters") or {}
    data: dict[str, Any] = json.loads(os.environ.get("TUNEHOUSE_JOB_DEFAULTS") or "{}")
    data.update({
        "train_file": str(file_path(job.training_file)),
        "validation_file": str(file_path(job.validation_file)) if job.validation_file else None,
        "model": job.base_source, "out": str(artifacts.run_dir(job.id)), "method": kind,
        "epochs": hp.get("n_epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
        "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
        "seed": job.seed, "resume": True, "progress": False, "keep_checkpoints": KEEP_CHECKPOINTS,
    })
    if kind == "dpo":
        data["beta"] = hp.get("beta", "auto")
    return from_dict(data).check()


def _load_job(db: Database, job_id: str) -> JobRow | None:
    with db.read() as s:
        return s.scalar(select(JobRow).where(JobRow.id == job_id))


def validate_files(db: Database, job: JobRow, attempt: int) -> None:
    """The ``validating_files`` stage: the same checks as ``tunehouse validate``, on the base
    model's tokenizer and context.

    Raises:
        InvalidFile: with ``param`` ``training_file`` or ``validation_file``.
    """
    from tunehouse import models
    from tunehouse.data.validate import validate_file

    source = models.resolve(job.base_source)
    tok = models.load_tokenizer(source)
    cfg_path = Path(source.path) / "config.json"
    context = 2048
    if cfg_path.is_file():
        context = int(json.loads(cfg_path.read_text()).get("max_position_embeddings") or 2048)
    valid = file_path(job.validation_file) if job.validation_file else None
    validate_file(file_path(job.training_file), tokenizer=tok, max_length=min(context, 2048),
                  validation_path=valid).raise_if_invalid()
    with jobstore.fenced(db, job.id, attempt) as (s, row):
        if row.status == "validating_files":
            row.status = "queued"
            ev.add_event(s, job.id, "info", "Files validated, moving job to queued state")


def start_running(db: Database, job: JobRow, attempt: int) -> bool:
    """Move the job to ``running`` (False if it was paused or cancelled meanwhile)."""
    resumed = artifacts.run_dir(job.id).joinpath("checkpoints").is_dir()
    with jobstore.fenced(db, job.id, attempt) as (s, row):
        if row.status not in ("validating_files", "queued", "running"):
            return False
        if resumed:
            ev.add_event(s, job.id, "info", f"Resuming fine-tuning from the last complete "
                         f"checkpoint (attempt {attempt}).")
        elif row.status != "running":
            ev.add_event(s, job.id, "info", "Fine-tuning job started")
        row.status = "running"
        row.started_at = row.started_at or time.time()
    return True


def register_result(db: Database, job: JobRow, attempt: int, out_dir: Path,
                    evaluation: JobEvaluation | None = None) -> None:
    """Publish the final model, the metrics CSV (and evaluation report), mark the job succeeded."""
    name = artifacts.fine_tuned_name(job.model, job.suffix, job.id)
    target = artifacts.publish(out_dir, artifacts.model_dir(job.id, f"attempt-{attempt}/final"))
    meta = json.loads((out_dir / "tunehouse.json").read_text())
    sources = [(out_dir / "metrics.csv", "step_metrics.csv")]
    if evaluation is not None:
        sources += [(evaluation.html, "eval_report.html"), (evaluation.json, "eval_report.json")]
    stored = [(ids.new_id("file"), src, filename) for src, filename in sources]
    paths = [store_copy(src, fid) for fid, src, _ in stored]
    try:
        with jobstore.fenced(db, job.id, attempt) as (s, row):
            for (fid, _src, filename), path in zip(stored, paths):
                s.add(FileRow(id=fid, owner=job.owner, bytes=path.stat().st_size,
                              created_at=ids.now(), filename=filename,
                              purpose="fine-tune-results"))
            if evaluation is not None:
                ev.add_event(s, job.id, "info", f"Evaluation: {evaluation.summary}")
            ev.add_model(s, model_id=name, owner=job.owner, job_id=job.id, kind="fine-tuned",
                         path=str(target))
            _resolved_hparams(row, meta.get("hyperparameters") or {})
            row.status, row.fine_tuned_model, row.finished_at = "succeeded", name, ids.now()
            row.trained_tokens = int(meta.get("trained_tokens") or row.trained_tokens or 0)
            row.result_files, row.estimated_finish = [fid for fid, _, _ in stored], None
            ev.add_event(s, job.id, "info", f"New fine-tuned model created: {name}")
            ev.add_event(s, job.id, "info", "The job has successfully completed")
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        artifacts.remove(target)
        raise


def _resolved_hparams(row: JobRow, resolved: dict[str, Any]) -> None:
    keys = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")
    hp = {k: resolved[k] for k in keys if resolved.get(k) is not None}
    method = dict(row.method or {"type": "supervised"})
    kind = method.get("type", "supervised")
    method[kind] = {"hyperparameters": hp}
    row.method = method
    row.hyperparameters = {k: v for k, v in hp.items() if k != "beta"}


def _record_failure(db: Database, job: JobRow, attempt: int, err: TunehouseError | None,
                    *, code: str = "", message: str = "") -> int:
    """Fail the job with a user-facing error; the exit code for the worker."""
    if err is not None:
        code, message = err.code or "training_failed", err.message
    try:
        with jobstore.fenced(db, job.id, attempt) as (s, row):
            jobstore.fail(s, row, code=code, message=message,
                          param=getattr(err, "param", None) if err else None)
    except jobstore.LeaseLost:
        return EXIT_LEASE_LOST
    return EXIT_DONE


def run_job(db: Database, job_id: str, attempt: int, stop: threading.Event) -> int:
    """Run one claimed attempt of a job to an outcome; returns the process exit code."""
    job = _load_job(db, job_id)
    if job is None or job.attempt != attempt:
        return EXIT_LEASE_LOST
    if job.status in jobstore.TERMINAL or job.status == "paused":
        return EXIT_DONE
    if _faults().get("crash_on_start"):
        raise RuntimeError("injected fault on start")
    try:
        if job.status == "validating_files":
            validate_files(db, job, attempt)
        if not start_running(db, job, attempt):
            return EXIT_DONE
        from tunehouse.train.loop import train

        cfg, reporter = build_config(job), JobReporter(db, job, attempt, stop)
        result = train(cfg, reporter.callbacks())
        if result.interrupted:
            return EXIT_STOPPED
        evaluation = evaluate_run(Path(result.out_dir), cfg, reporter.on_message)
        register_result(db, job, attempt, Path(result.out_dir), evaluation)
        return EXIT_DONE
    except jobstore.LeaseLost:
        return EXIT_LEASE_LOST
    except TunehouseError as err:
        return _record_failure(db, job, attempt, err)
    except Exception as exc:  # torch.OutOfMemoryError is a RuntimeError; others are crashes
        if is_disk_full(exc):  # e.g. safetensors' own I/O error while writing the final model
            return _record_failure(db, job, attempt, None, code="disk_full", message=(
                f"The disk is full (or a file-size limit was hit): {str(exc)[:300]}"))
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise
        return _record_failure(db, job, attempt, None, code="out_of_memory", message=(
            "Training ran out of memory; lower batch_size, or use a smaller model or shorter "
            "examples."))


def _watch_parent(parent: int) -> None:
    """Exit at once if the worker that started us dies (no orphan keeps training)."""
    try:  # Linux: the kernel delivers SIGKILL when the parent exits
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass

    def loop() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(EXIT_LEASE_LOST)
            time.sleep(0.5)

    threading.Thread(target=loop, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training child process."""
    ap = argparse.ArgumentParser(prog="python -m tunehouse.jobs.runner")
    ap.add_argument("--database", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--attempt", type=int, required=True)
    args = ap.parse_args(argv)
    _watch_parent(os.getppid())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    db = Database(args.database)
    try:
        return run_job(db, args.job, args.attempt, stop)
    finally:
        db.dispose()


if __name__ == "__main__":
    sys.exit(main())
