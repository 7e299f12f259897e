"""``tunehouse eval`` on a preference file, as a user runs it (real subprocess): a DPO run on the
tiny model is compared with its base by held-out preference accuracy; bad pairs are one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from th_support import write_jsonl
from tunehouse.config import TrainConfig
from tunehouse.train.loop import train

COLOURS = ["blue", "gold", "gray", "pink", "teal", "lime", "navy", "rose"]
SUMMARY = re.compile(r"fine-tuned prefers the preferred answer on (\d+)% of 12 held-out pairs "
                     r"\(base (\d+)%\)")


def pref(i: int) -> dict:
    """Preferred "Sure, <colour>" (one byte longer, so the untrained model prefers the other
    answer) over "Nope <colour>"."""
    w = COLOURS[i % len(COLOURS)]
    return {"input": {"messages": [{"role": "user", "content": f"Colour {i}: {w}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Sure, {w}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Nope {w}"}]}


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tunehouse", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_eval_on_preference_file_end_to_end(tiny_model_dir, tmp_path, home):
    train_file = write_jsonl(tmp_path / "prefs.jsonl", [pref(i) for i in range(24)])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [pref(100 + i) for i in range(12)])
    run = tmp_path / "run"
    train(TrainConfig(train_file=str(train_file), model=str(tiny_model_dir), out=str(run),
                      method="dpo", beta=0.1, epochs=3, batch_size=4,
                      learning_rate_multiplier=10.0, seed=7, progress=False), None)
    out = tmp_path / "eval"
    r = run_cli("eval", "--model", str(run), "--data", str(heldout), "--no-forgetting",
                "--out", str(out), home=home)
    assert r.returncode == 0, r.stderr
    found = SUMMARY.search(r.stdout)
    assert found, r.stdout
    tuned, base = map(int, found.groups())
    assert tuned > base, found.group(0)
    assert "preference_accuracy" in r.stdout and f"Report: {out / 'report.html'}" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "preference" and report["forgetting"] is None
    acc = {c["name"]: c["summary"]["preference_accuracy"] for c in report["candidates"]}
    assert (round(100 * acc["fine-tuned"]), round(100 * acc["base"])) == (tuned, base)
    assert (out / "preference.png").stat().st_size > 0
    assert (out / "training_curves.png").is_file()  # the DPO run's loss curve
    assert 'id="side-by-side"' in (out / "report.html").read_text()


def test_eval_bad_preference_line_is_one_line_error(tiny_model_dir, tmp_path, home):
    rows = [pref(i) for i in range(5)]
    rows[3]["non_preferred_output"] = rows[3]["preferred_output"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = run_cli("eval", "--model", str(tiny_model_dir), "--against", str(tiny_model_dir),
                "--data", str(bad), home=home)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.jsonl line 4: "), lines
    assert "identical" in lines[0]
