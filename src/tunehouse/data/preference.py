"""Preference pairs (OpenAI's DPO format) as token ids: shared by DPO training and evaluation.

A preference example is a prompt ``input.messages`` and two single-message answers. The prompt
is rendered with the model's chat template plus the generation prompt (exactly what the model
sees before it answers at inference); each answer's completion is the template's text after that
point, up to and including the end-of-turn marker. Only completion tokens are scored: the
log-probability of an answer is the sum of the log-probabilities of its completion tokens given
the prompt (``models.logprobs``). Training (``train.dpo``) and held-out evaluation
(``eval.preference``) encode pairs here, so both score exactly the same tokens.

Pure Python (no torch): the tokenizer is only called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunehouse.data.tokenize import IGNORE_INDEX, render

ANSWER_KEYS = ("preferred_output", "non_preferred_output")


@dataclass
class PreferencePair:
    """One encoded preference example; ``ref_*`` are the reference model's log-probabilities."""

    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens of the preferred answer, end-of-turn included
    rejected_ids: list[int]
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` of the chosen then the rejected sequence; labels only on
        completion tokens."""
        masked = [IGNORE_INDEX] * len(self.prompt_ids)
        return [(self.prompt_ids + c, masked + c) for c in (self.chosen_ids, self.rejected_ids)]

    @property
    def length(self) -> int:
        """Padded tokens the pair costs in a forward pass (both rows at the longer width)."""
        return 2 * (len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids)))

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens of both sequences."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def content_text(content: object) -> str:
    """Message content as text (OpenAI content parts are joined; anything else is empty)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def answer_text(record: dict[str, Any], key: str) -> str:
    """The text of a preference record's ``preferred_output`` or ``non_preferred_output``."""
    return content_text(record[key][0].get("content"))


def _completion_text(tokenizer: Any, prompt_text: str, messages: list[dict], answer: dict,
                     tools: list | None) -> str:
    """The template's text of ``answer`` after the generation prompt, end-of-turn included."""
    full = render(tokenizer, messages + [answer], tools=tools)
    if full.startswith(prompt_text):
        return full[len(prompt_text):].rstrip()  # drop the newline after the end-of-turn marker
    # a template that rewrites earlier turns: fall back to the content and end-of-turn token
    return content_text(answer.get("content")) + (getattr(tokenizer, "eos_token", None) or "")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, record: dict[str, Any], max_length: int | None = None
                ) -> PreferencePair:
    """Tokenise one (already validated) preference record.

    Too-long pairs keep the end of the prompt (the question being answered) and the start of
    each answer: the prompt is cut from the left to leave room for the longer answer, but keeps
    at least half of ``max_length`` when it has that much; answers are then cut at the end.
    """
    inp = record["input"]
    messages, tools = list(inp.get("messages") or []), inp.get("tools")
    prompt_text = render(tokenizer, messages, tools=tools, add_generation_prompt=True)
    prompt = _ids(tokenizer, prompt_text)
    chosen, rejected = (_ids(tokenizer, _completion_text(tokenizer, prompt_text, messages,
                                                         record[key][0], tools))
                        for key in ANSWER_KEYS)
    longest = max(len(chosen), len(rejected))
    if max_length is not None and len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), max_length // 2))
        prompt = prompt[len(prompt) - keep:] if keep > 0 else []
        room = max(1, max_length - len(prompt))
        chosen, rejected = chosen[:room], rejected[:room]
    return PreferencePair(prompt, chosen, rejected)


def encode_pairs(records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int | None = None
                 ) -> list[PreferencePair]:
    """Encode preference records (validation guarantees each answer has tokens)."""
    return [encode_pair(tokenizer, rec, max_length) for rec in records]
