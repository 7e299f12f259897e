"""Plain result and parameter types of the inference engine (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class StreamDelta:
    """A piece of choice ``index``'s text; the last piece of a choice carries its finish reason."""

    index: int
    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Choice:
    """One finished completion: ``completion_tokens`` counts every generated token (eos included)."""

    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class ChatResult:
    """All ``n`` choices of one request, with OpenAI-style token usage."""

    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class SamplingParams:
    """Validated per-request generation settings (see ``engine.validate_params``)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
