"""A base model that ships its own code (``auto_map``, reliability row 13) is refused with a 400
and its module is never imported: not by a job request, not by ``tunehouse serve --model``."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from api_support import chat_example, jsonl

from th_support import remote_code_model
from tunehouse import models
from tunehouse.errors import InvalidRequest


@pytest.fixture(params=["config.json", "tokenizer_config.json"])
def evil(request, tmp_path, tiny_model_dir):
    marker = tmp_path / "imported.marker"
    path = remote_code_model(tiny_model_dir, tmp_path / "evil-llama", marker, in_file=request.param)
    return path, marker


def test_resolving_an_auto_map_model_is_a_400_before_any_import(evil):
    path, marker = evil
    with pytest.raises(InvalidRequest, match="auto_map") as exc:
        models.resolve(str(path))
    assert exc.value.http_status == 400 and exc.value.code == "remote_code_not_allowed"
    assert not marker.exists()


def test_a_job_on_an_auto_map_model_is_refused(server, evil):
    path, marker = evil
    client = server.client()
    train = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(
        [chat_example(i) for i in range(12)]))), purpose="fine-tune")
    with server.http() as http:
        for model in (str(path), path.name):
            r = http.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": train.id})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == "model"
    assert not marker.exists()


def test_serve_refuses_an_auto_map_base_model(evil, tmp_path):
    path, marker = evil
    env = {**os.environ, "TUNEHOUSE_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "tunehouse", "serve", "--model", str(path),
                        "--port", "0", "--workers", "0"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "auto_map" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
