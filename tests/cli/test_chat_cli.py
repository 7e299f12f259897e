"""``tunehouse generate`` and ``tunehouse chat`` as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def run_cli(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tunehouse", *args], capture_output=True,
                          text=True, env=env, timeout=300, input=stdin)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """A random LoRA adapter saved like a training output directory."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunehouse.models.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("cli-adapter") / "run"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    (out / "tunehouse.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    return out


def test_generate_prints_an_answer(tiny_model_dir, home):
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", "hi",
                "--max-tokens", "5", home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and "Traceback" not in r.stderr


def test_generate_json_on_an_adapter_dir_matches_the_engine(adapter_dir, home):
    from tunehouse.serve import Engine

    r = run_cli("generate", "--model", str(adapter_dir), "--prompt", "hi", "--max-tokens", "6",
                "--system", "Be brief.", "--json", home=home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    with Engine(str(adapter_dir), threads=1) as eng:
        want = eng.chat(str(adapter_dir), [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "hi"}],
                        temperature=0, max_tokens=6)
    assert out["text"] == want.choices[0].text
    assert out["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens":
                            want.completion_tokens, "total_tokens": want.total_tokens}
    assert out["finish_reason"] == want.choices[0].finish_reason


def test_generate_errors_are_one_line_with_exit_2(tiny_model_dir, tmp_path, home):
    line = one_error_line(run_cli("generate", "--model", str(tmp_path / "nope"), "--prompt",
                                  "hi", home=home))
    assert "nope" in line
    line = one_error_line(run_cli("generate", "--model", str(tiny_model_dir), "--prompt", "hi",
                                  "--temperature", "9", home=home))
    assert "temperature" in line


def test_chat_repl_streams_resets_and_exits(adapter_dir, home):
    r = run_cli("chat", "--model", str(adapter_dir), "--max-tokens", "4", "--temperature", "0",
                home=home, stdin="hello\n/reset\nhello\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    # two answers, each ended by a newline; after /reset the same question gets the same
    # greedy answer (without /reset the history would differ)
    half = len(r.stdout) // 2
    assert r.stdout.endswith("\n") and len(r.stdout) > 2
    assert r.stdout[:half] == r.stdout[half:]
    assert "(conversation cleared)" in r.stderr
