"""Chat-template rendering and assistant-only label masks, for any chat template.

The conversation is rendered once with the model's own template. For every assistant message
we also render the conversation up to it with ``add_generation_prompt=True`` (where the
assistant's answer starts) and up to and including it (where it ends); the characters in
between are the assistant's turn, end-of-turn marker included. Tokens whose character span
falls inside such a turn are trained on, unless the message has ``weight: 0``. This works for
templates with no ``{% generation %}`` markers (TRL's assistant-only loss refuses those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised example: ``labels[i]`` is ``input_ids[i]`` where trained, else -100."""

    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def render(tokenizer: Any, messages: list[dict], *, tools: list | None = None,
           add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages`` (the template runs in a sandbox)."""
    clean = [_clean_message(m) for m in messages]
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(clean, **kwargs)


def _clean_message(message: dict) -> dict:
    """Drop tunehouse/OpenAI-only keys the template should not see; flatten text parts."""
    out = {k: v for k, v in message.items() if k != "weight"}
    content = out.get("content")
    if isinstance(content, list):
        out["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if out.get("content") is None:
        out["content"] = ""
    return out


def assistant_spans(tokenizer: Any, messages: list[dict], *, tools: list | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of trained assistant turns."""
    full = render(tokenizer, messages, tools=tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        before = render(tokenizer, messages[:i], tools=tools, add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(upto.rstrip())
        else:  # template not prefix-stable (e.g. drops old turns): locate the content itself
            content = _clean_message(msg)["content"]
            start = full.find(content, cursor) if content else -1
            if start < 0:
                continue
            end = start + len(content)
            eos = getattr(tokenizer, "eos_token", None)
            if eos and full.startswith(eos, end):
                end += len(eos)
        cursor = end
        if msg.get("weight", 1) != 0:
            spans.append((start, end))
    return full, spans


def encode_chat(tokenizer: Any, messages: list[dict], *, max_length: int | None = None,
                tools: list | None = None) -> Encoded:
    """Tokenise a chat example with labels only on assistant tokens, truncated from the end."""
    text, spans = assistant_spans(tokenizer, messages, tools=tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    si = 0
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        while si < len(spans) and spans[si][1] <= a:
            si += 1
        if si < len(spans) and b > spans[si][0] and a < spans[si][1] and b > a:
            labels[t] = ids[t]
    full_length = len(ids)
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(input_ids=ids, labels=labels, full_length=full_length)


def encode_prompt(tokenizer: Any, messages: list[dict], *, tools: list | None = None) -> list[int]:
    """Token ids of ``messages`` followed by the assistant generation prompt (for inference)."""
    text = render(tokenizer, messages, tools=tools, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
