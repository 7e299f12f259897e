"""Training data for the loop: validate (line-exact errors), encode with the chat template.

The data room does the checking and tokenisation; this module only assembles what the loop
needs: token ids, labels, lengths, and an optional deterministic validation split.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunehouse.data.tokenize import IGNORE_INDEX, encode_chat
from tunehouse.errors import InvalidFile


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    n_targets: int  # positions whose next token is trained

    @property
    def length(self) -> int:
        return len(self.input_ids)


def read_records(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file that already passed validation (blank lines skipped)."""
    with open(path, encoding="utf-8-sig") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_files(train_path: str, valid_path: str | None, tokenizer: Any, max_length: int,
                method: str = "supervised") -> None:
    """Run the same validation as ``tunehouse validate``; raise its one-line error if unusable.

    The file's format must suit ``method`` (chat for supervised, preference pairs for dpo).
    """
    from tunehouse.data.validate import validate_file

    for path, param in ((train_path, "training_file"), (valid_path, "validation_file")):
        if path and not Path(path).is_file():
            raise InvalidFile(f"{param.replace('_', ' ').capitalize()} {path} does not exist.",
                              code="file_not_found", param=param)
    report = validate_file(train_path, tokenizer=tokenizer, max_length=max_length,
                           validation_path=valid_path)
    require_format(report, method, train_path)
    report.raise_if_invalid()


def require_format(report: Any, method: str, path: str | Path) -> None:
    """Raise a one-line ``InvalidFile`` when a validated file's format does not suit ``method``."""
    from tunehouse.data.formats import CHAT, FORMAT_NAMES, PREFERENCE

    if report.format is None or report.format == (PREFERENCE if method == "dpo" else CHAT):
        return  # an unrecognisable file gets validation's own error
    if method == "dpo":
        raise InvalidFile(f"{path} is a {FORMAT_NAMES[report.format]} file, but --method dpo trains on preference"
                          ' pairs: {"input": {"messages": [...]}, "preferred_output": [{"role":'
                          ' "assistant", ...}], "non_preferred_output": [...]} per line.',
                          code="wrong_format_for_method", param=report.param)
    if report.format == PREFERENCE:
        raise InvalidFile(f"{path} holds preference pairs (DPO); train it with --method dpo "
                          '(API: method={"type": "dpo"}), or give chat examples for supervised'
                          " training.", code="wrong_format_for_method", param=report.param)


def encode_records(records: list[dict[str, Any]], tokenizer: Any, max_length: int
                   ) -> list[Example]:
    """Chat records -> examples with assistant-only labels; examples with nothing to learn dropped."""
    out = []
    for rec in records:
        enc = encode_chat(tokenizer, rec["messages"], max_length=max_length, tools=rec.get("tools"))
        n = sum(1 for x in enc.labels[1:] if x != IGNORE_INDEX)
        if n:
            out.append(Example(enc.input_ids, enc.labels, n))
    return out


def split(records: list[dict[str, Any]], fraction: float, seed: int
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministically hold out ``fraction`` of the records (at least one) for validation."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    k = max(1, round(len(records) * fraction))
    held = set(order[:k])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])
