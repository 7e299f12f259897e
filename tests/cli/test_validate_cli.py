"""``tunehouse validate``: exit codes (0 usable, 1 not, 2 bad invocation), JSON, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunehouse.cli import app
from tunehouse.cli.validate import _count_params


def chat(i: int, answer: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": answer or f"answer {i}"}]}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    return write(tmp_path / "train.jsonl", [chat(i) for i in range(60)])


@pytest.fixture
def bad(tmp_path) -> Path:
    rows = [chat(i) for i in range(40)]
    rows[36] = '{"messages": [{"role": "user"'
    return write(tmp_path / "bad.jsonl", rows)


def run_cli(*args: str, home: Path | str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tunehouse", "validate", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_usable_file_exits_0_with_a_plain_report(good, tiny_model_dir, home):
    proc = run_cli(str(good), "--model", str(tiny_model_dir), home=home)
    assert proc.returncode == 0, proc.stderr
    assert "train.jsonl (training file): chat, 60 example(s)" in proc.stdout
    assert "context 512" in proc.stdout and "Training estimate" in proc.stdout
    assert proc.stdout.rstrip().endswith("OK: ready for training")
    assert "\x1b[" not in proc.stdout and "Traceback" not in proc.stderr


def test_unusable_file_exits_1_and_json_parses(bad, tiny_model_dir, home):
    proc = run_cli(str(bad), "--model", str(tiny_model_dir), "--json", home=home)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["n_examples"] == 40
    assert [(i["line"], i["code"]) for i in report["issues"] if i["severity"] == "error"] == [
        (37, "invalid_json")]
    assert report["stats"]["tokens"]["max_length"] == 512
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jsonl"], "missing.jsonl: no such file"),
    (["{good}", "--validation", "nope.jsonl"], "nope.jsonl: no such file"),
    (["{good}", "--model", "no-such-model"], "Unknown model 'no-such-model'"),
])
def test_bad_invocation_is_one_line_and_exit_2(args, message, good, home):
    args = [a.replace("{good}", str(good)) for a in args]
    result = run_cli(*args, home=home)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_validation_file_and_max_length_in_process(good, tmp_path, tiny_model_dir):
    valid = write(tmp_path / "valid.jsonl", [chat(1), chat(900, answer="x " * 200)])
    result = CliRunner().invoke(app, ["validate", str(good), "--model", str(tiny_model_dir),
                                      "--validation", str(valid), "--max-length", "100"])
    assert result.exit_code == 0, result.output
    assert "valid.jsonl (validation file)" in result.output
    assert "[train_validation_overlap]" in result.output
    assert "[example_too_long]" in result.output and "context 100" in result.output


def test_errors_are_listed_in_process(bad, tiny_model_dir):
    result = CliRunner().invoke(app, ["validate", str(bad), "--model", str(tiny_model_dir)])
    assert result.exit_code == 1
    assert "line 37: not valid JSON" in result.output and "NOT USABLE" in result.output


def test_parameter_count_comes_from_safetensors_headers(tiny_model_dir):
    from tunehouse import models

    model = models.load_model(models.resolve(str(tiny_model_dir)))
    assert _count_params(tiny_model_dir) == sum(p.numel() for p in model.parameters())


@pytest.mark.integration
def test_default_embedded_model(good):
    home = os.environ.get("TUNEHOUSE_HOME") or Path.home() / ".tunehouse"
    proc = run_cli(str(good), "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["stats"]["tokens"]["max_length"] == 8192
    assert report["stats"]["estimate"]["n_params"] > 100_000_000
