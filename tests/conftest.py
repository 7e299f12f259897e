"""Shared fixtures: a tiny random-init Llama and byte tokenizer built in code, chat data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from th_support import chat_example, write_jsonl  # noqa: F401 (re-exported)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tunehouse.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + tokenizer directory, usable as ``--model DIR``."""
    from tunehouse.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


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

