"""``/v1/chat/completions`` on the base model, a fine-tuned model or a checkpoint.

The API process owns one inference ``Engine`` (created on first use: it loads the base model
once); fine-tuned adapters are registered with it from the database on first request, after
the caller's ownership is checked. Streaming answers are server-sent events of
``chat.completion.chunk`` objects ending with ``data: [DONE]``.

``tools`` are rendered into the prompt by the model's chat template, with ``tool_choice:
"none"``; like vLLM without a tool-call parser, tunehouse does not parse tool calls out of the
answer, so ``auto`` (OpenAI's default when tools are given), ``required`` or a named function
get a 400 that says so, as do tools for a template that would silently drop them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from tunehouse.api.deps import AppState, Owner, State
from tunehouse.api.protocol import ChatCompletionRequest
from tunehouse.errors import InvalidRequest, Overloaded, TunehouseError
from tunehouse.store import events as ev

router = APIRouter(prefix="/v1", tags=["chat"])


class EngineHolder:
    """The process's inference engine and which fine-tuned models it has registered."""

    def __init__(self, base_model: str, max_concurrent: int):
        self.base_model = base_model
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self._engine: Any = None
        self._lock = threading.Lock()
        self._registered: dict[str, str] = {}

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                from tunehouse.serve.engine import Engine

                self._engine = Engine(self.base_model)
            return self._engine

    def resolve(self, state: AppState, owner: str, model: str) -> str:
        """The engine's name for ``model``; registers a fine-tuned one on first use.

        Raises:
            ModelNotFound: not the base model and not a model of this owner (404).
        """
        if state.is_base(model):
            self.engine()
            return self.base_model
        row = ev.get_model(state.db, owner=owner, model_id=model)
        engine = self.engine()
        with self._lock:
            if self._registered.get(model) != row.path:
                engine.register(model, row.path)
                self._registered[model] = row.path
        return model

    def close(self) -> None:
        """Stop the engine's scheduler thread (server shutdown)."""
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def forget(self, model: str) -> None:
        with self._lock:
            if self._registered.pop(model, None) is not None and self._engine is not None:
                self._engine.unregister(model)


def engine_holder(state: AppState) -> EngineHolder:
    holder = state.extras.get("engine")
    if holder is None:
        holder = state.extras.setdefault("engine", EngineHolder(
            state.settings.base_model, state.settings.max_concurrent_chats))
    return holder


def _options(body: ChatCompletionRequest) -> dict[str, Any]:
    opts = {"max_tokens": body.max_completion_tokens or body.max_tokens,
            "temperature": body.temperature, "top_p": body.top_p, "n": body.n or 1,
            "stop": body.stop, "seed": body.seed}
    return {k: v for k, v in opts.items() if v is not None}


def _tools(holder: EngineHolder, name: str, body: ChatCompletionRequest
           ) -> list[dict[str, Any]] | None:
    """The tools to render into the prompt (OpenAI's tool dicts), or None.

    Raises:
        InvalidRequest: tool_choice without tools; tools the model's template cannot render
            (``tools_not_supported``); a tool_choice that needs tool-call parsing.
    """
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise InvalidRequest("tool_choice is only allowed when tools are specified.",
                                 param="tool_choice")
        return None
    if not holder.engine().supports_tools(name):
        raise InvalidRequest(f"The chat template of model '{body.model[:200]}' does not render "
                             "tools, so the model would never see them; remove 'tools' or use a "
                             "model whose template supports tools.", param="tools",
                             code="tools_not_supported")
    if choice != "none":
        shown = "'auto' (the default when tools are given)" if choice in (None, "auto") else \
            repr(choice) if isinstance(choice, str) else f"function '{choice.function.name}'"
        raise InvalidRequest(f"tool_choice {shown} is not supported: tunehouse renders tools "
                             "into the prompt but does not parse tool calls out of the answer. "
                             "Pass tool_choice='none' to show the tools to the model and get its "
                             "answer as text.", param="tool_choice",
                             code="tool_choice_not_supported")
    return [t.model_dump(exclude_none=True) for t in body.tools]


@router.post("/chat/completions", response_model=None)
def chat_completions(body: ChatCompletionRequest, state: State, owner: Owner
                     ) -> dict[str, Any] | StreamingResponse:
    holder = engine_holder(state)
    if not holder.slots.acquire(blocking=False):
        raise Overloaded("Too many chat requests in flight; retry shortly.",
                         code="rate_limit_exceeded")
    streaming = False
    try:
        name = holder.resolve(state, owner, body.model)
        tools = _tools(holder, name, body)
        messages = [m.plain() for m in body.messages]
        if body.stream:
            response = _stream(holder, name, body, messages, tools)
            streaming = True
            return response
        result = holder.engine().chat(name, messages, tools=tools, **_options(body))
    finally:
        if not streaming:
            holder.slots.release()
    return {
        "id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion",
        "created": int(time.time()), "model": body.model, "system_fingerprint": None,
        "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text,
                                                    "refusal": None},
                     "finish_reason": c.finish_reason, "logprobs": None}
                    for c in result.choices],
        "usage": {"prompt_tokens": result.prompt_tokens,
                  "completion_tokens": result.completion_tokens,
                  "total_tokens": result.prompt_tokens + result.completion_tokens},
    }


def _stream(holder: EngineHolder, name: str, body: ChatCompletionRequest,
            messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
            ) -> StreamingResponse:
    """Start generation (request errors are raised here, still as HTTP errors), then stream."""
    deltas = holder.engine().stream(name, messages, tools=tools, **_options(body))
    return StreamingResponse(_sse(holder, body, deltas), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _sse(holder: EngineHolder, body: ChatCompletionRequest, deltas: Any
               ) -> AsyncIterator[str]:
    """SSE chunks: a role delta per choice, content deltas, finish reasons, usage, [DONE].
    An async generator: the engine wakes the event loop per delta (no thread per stream)."""
    cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    usage_wanted = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created,
               "model": body.model, "system_fingerprint": None, "choices": choices}
        if usage_wanted:
            obj["usage"] = usage
        return f"data: {json.dumps(obj)}\n\n"

    try:
        for i in range(body.n or 1):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None, "logprobs": None}])
        async for d in deltas:
            yield chunk([{"index": d.index, "delta": {"content": d.text} if d.text else {},
                          "finish_reason": d.finish_reason, "logprobs": None}])
        if usage_wanted:
            prompt, completion = deltas.prompt_tokens, sum(deltas.completion_tokens)
            yield chunk([], {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion})
        yield "data: [DONE]\n\n"
    except TunehouseError as err:  # after the 200: report in-band, as OpenAI does
        yield "data: " + json.dumps({"error": {"message": err.message, "type": err.error_type,
                                               "param": err.param, "code": err.code}}) + "\n\n"
    finally:
        deltas.close()  # a client that went away stops its generation
        holder.slots.release()
