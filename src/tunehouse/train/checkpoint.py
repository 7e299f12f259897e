"""Atomic checkpoints and validated resume.

A checkpoint is written into ``checkpoints/tmp-*`` (same filesystem), every file is fsynced,
then ``MANIFEST.json`` with the sha256 of every file is written last and the directory is
renamed to ``checkpoints/step-NNNNNN``. A directory without a manifest, or whose files do not
match it, is not a checkpoint: resume skips it (and says so) and uses the previous one. Only
safetensors and JSON are ever read back: no pickle, no ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunehouse.errors import CheckpointError, DiskFull, is_disk_full

MANIFEST = "MANIFEST.json"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]  # trainer_state.json


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            sums[str(p.relative_to(root))] = _sha256(p)
    return sums


def save_atomic(root: Path, step: int, write: Callable[[Path], None], state: dict[str, Any],
                *, min_free_bytes: int = 0) -> Path:
    """Write a complete checkpoint for ``step`` under ``root`` or leave nothing behind.

    ``write(tmp_dir)`` writes the payload; ``state`` becomes ``trainer_state.json``.

    Raises:
        DiskFull: not enough free space (checked first) or ENOSPC while writing; the previous
            checkpoints are untouched and the temporary directory is removed.
    """
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if min_free_bytes and free < min_free_bytes:
        raise DiskFull(f"Not enough disk space for a checkpoint in {root}: "
                       f"{free >> 20} MiB free, about {min_free_bytes >> 20} MiB needed.")
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=root))
    try:
        write(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        sums = _fsync_tree(tmp)
        manifest = {"step": step, "files": sums}
        with open(tmp / MANIFEST, "w") as f:  # written last: its presence means "complete"
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        final = root / step_dir_name(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        return final
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # ENOSPC/EDQUOT/EFBIG, also wrapped (safetensors raises its own error type)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFull) and is_disk_full(exc):
            raise DiskFull(f"Disk full while writing a checkpoint in {root}; "
                           "the previous checkpoint is intact.") from None
        raise


def verify(path: Path) -> Checkpoint:
    """Check a checkpoint directory against its manifest.

    Raises:
        CheckpointError: no manifest, a file missing, or a checksum mismatch.
    """
    man_path = path / MANIFEST
    if not man_path.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST} (incomplete write)")
    try:
        manifest = json.loads(man_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}/{MANIFEST} is unreadable") from None
    for rel, digest in files.items():
        f = path / rel
        if not f.is_file() or _sha256(f) != digest:
            raise CheckpointError(f"{path}: {rel} is missing or does not match its checksum")
    state = json.loads((path / "trainer_state.json").read_text())
    return Checkpoint(step=int(manifest["step"]), path=path, state=state)


def list_steps(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, newest first (not yet verified)."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(dirs, key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)


def latest_valid(root: Path, warn: Callable[[str], None] = lambda _m: None) -> Checkpoint | None:
    """The newest checkpoint that passes verification; bad ones are reported via ``warn``."""
    for p in root.glob("tmp-*") if root.is_dir() else []:
        warn(f"Discarding incomplete checkpoint write {p.name}")
        shutil.rmtree(p, ignore_errors=True)
    for p in list_steps(root):
        try:
            return verify(p)
        except (CheckpointError, ValueError, OSError) as exc:
            warn(f"Skipping checkpoint {p.name}: {exc}")
    return None


def prune(root: Path, keep: int, protect: set[int]) -> None:
    """Delete all but the newest ``keep`` checkpoints, never those whose step is protected."""
    for i, p in enumerate(list_steps(root)):
        step = int(STEP_DIR.match(p.name).group(1))
        if i >= keep and step not in protect:
            shutil.rmtree(p, ignore_errors=True)


def flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON metadata."""
    tensors: dict[str, Any] = {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"state.{idx}.{name}"] = value.contiguous() if hasattr(value, "contiguous") \
                else value
    meta = {"param_groups": opt_state["param_groups"]}
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
