"""``tunehouse train`` as a user runs it: real subprocesses, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from th_support import chat_example, write_jsonl


def run_cli(*args: str, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tunehouse", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_train_end_to_end_on_tiny_model(tiny_model_dir, chat_files, tmp_path, home):
    out = tmp_path / "run"
    r = run_cli("train", "--train", str(chat_files[0]), "--validation", str(chat_files[1]),
                "--model", str(tiny_model_dir), "--epochs", "1", "--batch-size", "4",
                "--out", str(out), home=home)
    assert r.returncode == 0, r.stderr
    assert "Done: 6 steps" in r.stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    assert "Traceback" not in r.stderr


BAD_CASES = {
    "malformed": (["{not json"] + [chat_example(i) for i in range(11)], "line 1"),
    "wrong_role": ([{"messages": [{"role": "robot", "content": "x"},
                                  {"role": "assistant", "content": "y"}]}]
                   + [chat_example(i) for i in range(11)], "robot"),
    "no_assistant": ([{"messages": [{"role": "user", "content": "x"}]}]
                     + [chat_example(i) for i in range(11)], "assistant"),
    "weight_2": ([{"messages": [{"role": "user", "content": "x"},
                                {"role": "assistant", "content": "y", "weight": 2}]}]
                 + [chat_example(i) for i in range(11)], "weight"),
    "nine_examples": ([chat_example(i) for i in range(9)], "at least 10 examples"),
    "empty": ([], "at least 10 examples"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_one_line_error(case, tiny_model_dir, tmp_path, home):
    rows, needle = BAD_CASES[case]
    path = write_jsonl(tmp_path / "bad.jsonl", rows) if rows else tmp_path / "bad.jsonl"
    if not rows:
        path.write_text("")
    out = tmp_path / "out"
    r = run_cli("train", "--train", str(path), "--model", str(tiny_model_dir), "--out", str(out),
                home=home)
    assert r.returncode in (1, 2)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert needle in lines[0]
    assert not (out / "checkpoints").exists() and not (out / "adapter_model.safetensors").exists()


def test_invalid_utf8_missing_file_unknown_model(tiny_model_dir, tmp_path, home):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage\n" + b"".join(
        (json.dumps(chat_example(i)) + "\n").encode() for i in range(12)))
    for args, needle in [
        (["--train", str(bad), "--model", str(tiny_model_dir)], "UTF-8"),
        (["--train", str(tmp_path / "nope.jsonl"), "--model", str(tiny_model_dir)], "does not exist"),
        (["--train", str(bad), "--model", "no-such-model"], "Unknown model 'no-such-model'"),
        (["--train", str(bad), "--epochs", "99"], "epochs"),
    ]:
        r = run_cli("train", *args, "--out", str(tmp_path / "o"), home=home)
        assert r.returncode in (1, 2), args
        assert "Traceback" not in r.stderr and needle in r.stderr, (args, r.stderr)
