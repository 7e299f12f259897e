"""``tunehouse train --model DIR`` on a model with ``auto_map`` (reliability row 13): a one-line
error, exit 2, and the model's own module is never imported."""

from __future__ import annotations

import os
import subprocess
import sys

from th_support import chat_example, remote_code_model, write_jsonl


def test_train_refuses_a_model_that_ships_code(tiny_model_dir, tmp_path):
    marker = tmp_path / "imported.marker"
    model = remote_code_model(tiny_model_dir, tmp_path / "evil-llama", marker)
    data = write_jsonl(tmp_path / "t.jsonl", [chat_example(i) for i in range(12)])
    env = {**os.environ, "TUNEHOUSE_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "tunehouse", "train", "--train", str(data),
                        "--model", str(model), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "auto_map" in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "out" / "checkpoints").exists()
