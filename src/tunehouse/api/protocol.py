"""Request and response models of the OpenAI-compatible API, ordered like OpenAI's docs.

Ranges are checked here, once, with messages that name the field and the allowed values;
``app.py`` turns validation failures into OpenAI's error envelope with ``param`` set to the
dotted field path. Our extensions to OpenAI's schema are fenced in comments.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator

MAX_SEED = 2147483647
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _int_range(name: str, lo: int, hi: int, *, auto: bool) -> Any:
    """An int in ``lo..hi`` (``"auto"`` too if ``auto``); bools and floats are refused."""
    def check(value: Any) -> Any:
        if auto and value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            allowed = f"'auto' or an integer in {lo}..{hi}" if auto else f"an integer in {lo}..{hi}"
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
        return value
    return PlainValidator(check, json_schema_input_type=int | Literal["auto"] if auto else int)


def _positive_float(name: str, hi: float | None = None) -> Any:
    """A finite number > 0 (and <= ``hi``), or ``"auto"``."""
    def check(value: Any) -> Any:
        if value == "auto":
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0 and (hi is None or value <= hi)
        if not ok:
            rng = f"in (0, {hi:g}]" if hi is not None else "> 0"
            raise ValueError(f"{name} must be 'auto' or a finite number {rng}, got {value!r}")
        return float(value)
    return PlainValidator(check, json_schema_input_type=float | Literal["auto"])


def _float_range(name: str, lo: float, hi: float, *, lo_open: bool = False) -> Any:
    """An optional finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    def check(value: Any) -> Any:
        if value is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
        return float(value)
    return PlainValidator(check, json_schema_input_type=float | None)


def _zero_only(name: str) -> Any:
    """A sampling option tunehouse does not implement: only its neutral value 0 is accepted."""
    def check(value: Any) -> Any:
        if value is None or (not isinstance(value, bool) and value == 0):
            return None
        raise ValueError(f"{name} is not supported by tunehouse; omit it or pass 0")
    return PlainValidator(check, json_schema_input_type=float | None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- fine-tuning jobs --------------------------------------------------------------------
class Hyperparameters(_Strict):
    batch_size: Annotated[Any, _int_range("batch_size", 1, 256, auto=True)] = "auto"
    learning_rate_multiplier: Annotated[Any, _positive_float("learning_rate_multiplier")] = "auto"
    n_epochs: Annotated[Any, _int_range("n_epochs", 1, 50, auto=True)] = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Annotated[Any, _positive_float("beta", 2.0)] = "auto"


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class CreateJobRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=128)
    hyperparameters: Hyperparameters | None = None  # deprecated: use method
    suffix: str | None = None
    validation_file: str | None = Field(default=None, max_length=128)
    integrations: list[dict[str, Any]] | None = None
    seed: Annotated[Any, _int_range("seed", 0, MAX_SEED, auto=False)] = None
    method: Method | None = None
    metadata: dict[str, str] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not _SUFFIX.match(v):
            raise ValueError("suffix must be 1-64 characters from A-Z a-z 0-9 . _ -, "
                             f"got {v[:80]!r}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError(f"metadata may have at most 16 pairs, got {len(v)}")
        for key, value in v.items():
            if not key or len(key) > 64 or len(value) > 512:
                raise ValueError("metadata keys must be 1-64 characters and values at most 512 "
                                 f"characters (key {key[:70]!r})")
        return v


# ----- chat completions --------------------------------------------------------------------
class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, max_length=128)  # assistant
    tool_call_id: str | None = Field(default=None, max_length=256)  # role "tool"

    def plain(self) -> dict[str, Any]:
        """The message for the chat template: ``{role, content}`` with text parts joined
        (``developer`` = system), plus ``tool_calls`` / ``tool_call_id`` when given."""
        text = self.content if isinstance(self.content, str) else \
            "".join(p.text for p in self.content or [])
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": text}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    model: str = Field(min_length=1, max_length=512)
    frequency_penalty: Annotated[Any, _zero_only("frequency_penalty")] = None
    logprobs: Literal[False] | None = None  # token log-probabilities are not supported yet
    max_completion_tokens: Annotated[Any, _int_range("max_completion_tokens", 1, 1 << 20,
                                                     auto=False)] = None
    max_tokens: Annotated[Any, _int_range("max_tokens", 1, 1 << 20, auto=False)] = None
    metadata: dict[str, str] | None = None
    n: Annotated[Any, _int_range("n", 1, 128, auto=False)] = None
    presence_penalty: Annotated[Any, _zero_only("presence_penalty")] = None
    seed: Annotated[Any, _int_range("seed", -(1 << 63), (1 << 63) - 1, auto=False)] = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[Any, _float_range("temperature", 0, 2)] = None
    top_p: Annotated[Any, _float_range("top_p", 0, 1, lo_open=True)] = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty "
                             "strings")
        return stops
