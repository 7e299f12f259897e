"""Shared fixtures: a tiny random-init Llama and byte tokenizer built in code, chat data files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tunehouse.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + tokenizer directory, usable as ``--model DIR``."""
    from tunehouse.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def chat_example(i: int) -> dict:
    """A trivially learnable example: the answer is a fixed function of the question."""
    word = ["red", "blue", "green", "gold", "gray"][i % 5]
    return {"messages": [
        {"role": "system", "content": "Answer with the colour code."},
        {"role": "user", "content": f"Colour {i}: {word}?"},
        {"role": "assistant", "content": f"code-{word}"},
    ]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def chat_files(tmp_path) -> tuple[Path, Path]:
    """(train.jsonl with 24 examples, valid.jsonl with 8) of the colour-code task."""
    train = write_jsonl(tmp_path / "train.jsonl", [chat_example(i) for i in range(24)])
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat_example(100 + i) for i in range(8)])
    return train, valid


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """A TUNEHOUSE_HOME for tests that do not need the embedded model."""
    return tmp_path_factory.mktemp("home")


def embedded_home() -> str:
    """The real tunehouse home (where the embedded model was converted once)."""
    return os.environ.get("TUNEHOUSE_HOME") or str(Path.home() / ".tunehouse")
