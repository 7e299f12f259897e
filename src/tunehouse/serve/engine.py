"""The inference engine: one base model, many LoRA adapters, thread-safe chat and streaming.

    engine = Engine("smollm2-135m-instruct")
    engine.register("ft:smollm2-135m-instruct:tunehouse:demo:ftjob-abc", "/path/to/train/out")
    engine.chat("ft:...", [{"role": "user", "content": "Hi"}], temperature=0).choices[0].text
    for delta in engine.stream("smollm2-135m-instruct", messages): print(delta.text, end="")

Requests from any number of threads go to one scheduler thread that owns the model and
batches them continuously (``scheduler.py``); requests for different adapters of the base
share a batch, each row computed with its own adapter (``batch.py``), and adapters live in an
LRU cache (``adapters.py``). Prompts are rendered with the tokenizer saved next to the
adapter, i.e. the chat template used in training.

Speed notes, measured on the 2-core AMD EPYC build machine (AVX-512 BF16, no AMX) with the
embedded SmolLM2-135M, greedy. With torch 2.13 bf16 is faster than float32 there (a bare
decode step of 8 rows: ~47 ms against ~75 ms; ``generate`` on a merged model, batch 8: 126
against 88 tok/s), so ``dtype="auto"`` is bfloat16 on CPUs with native bf16 instructions and
on GPUs, float32 on other CPUs (an earlier measurement here had bf16 4-5x slower). Decode steps
on CPU use the engine's own attention and a KV cache that grows in place
(``serve/attention.py``; the cache is float32 on CPU), and linear layers run on weights packed
for oneDNN (``serve/packed.py``; a second copy of the weights in memory). Everything runs under
``torch.inference_mode()``; engine overhead (scheduling, sampling, detokenising) is a few
percent of a step. Torch uses one thread per core by default; while other processes kept the
cores busy (load 4-9), two threads waited on each other and the engine fell to 1-4 tok/s,
while ``threads=1`` gave ~5-8.5 tok/s at batch 1 and ~21-29 tok/s at batch 8 (8 different
prompts): on a shared machine pass ``threads`` or set ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any

from tunehouse import models
from tunehouse.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from tunehouse.serve.adapters import ModelStore, Target, TextInfo
from tunehouse.serve.scheduler import DONE, Request, Scheduler
from tunehouse.serve.types import ChatResult, Choice, SamplingParams, StreamDelta

MAX_N = 128
MAX_STOP = 4


class Stream(Iterator[StreamDelta]):
    """The deltas of one request as they are produced; usage is known once it is exhausted.

    Iterate it (blocking) or ``async for`` it on an event loop: the scheduler thread then wakes
    the loop for every delta (``call_soon_threadsafe``), so a server streaming many answers
    needs no thread per stream and no thread hop per token. ``close()`` (or leaving a
    ``with`` block early) cancels the request: its rows leave the batch at the next step.
    """

    def __init__(self, request: Request):
        self._req = request
        self._done = False
        self._wake: asyncio.Event | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self._req.prompt_ids)

    @property
    def completion_tokens(self) -> list[int]:
        """Generated tokens per choice (final once the stream is exhausted)."""
        return list(self._req.completion_tokens)

    def __next__(self) -> StreamDelta:
        if self._done:
            raise StopIteration
        item = self._take(self._req.events.get())
        if item is None:
            raise StopIteration
        return item

    def __aiter__(self) -> Stream:
        if self._wake is None:
            loop, wake = asyncio.get_running_loop(), asyncio.Event()
            self._wake = wake

            def notify() -> None:  # on the scheduler thread
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed: nobody is reading any more
                    pass

            self._req.notify = notify
        return self

    async def __anext__(self) -> StreamDelta:
        assert self._wake is not None, "use 'async for'"
        while not self._done:
            try:
                raw = self._req.events.get_nowait()
            except queue.Empty:
                self._wake.clear()
                if self._req.events.empty():  # checked after clearing: no wake-up is lost
                    await self._wake.wait()
                continue
            item = self._take(raw)
            if item is not None:
                return item
        raise StopAsyncIteration

    def _take(self, item: object) -> StreamDelta | None:
        """A delta, or None at the end; an error from the engine is raised."""
        if item is DONE:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        assert isinstance(item, StreamDelta)
        return item

    def close(self) -> None:
        """Stop generating (for a client that went away)."""
        if not self._done:
            self._req.cancelled.set()
            self._done = True

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # dropped unread (a caller that forgot close): stop computing
        if not self._done:
            self._req.cancelled.set()


class Engine:
    """Serves a base model and registered fine-tunes of it; safe to call from many threads.

    Args:
        base_model: embedded model name, model directory or hub id (``None``: the embedded
            default). An adapter/output directory loads its base and is registered under the
            given name.
        device: torch device for the models ("cpu", "cuda", ...).
        dtype: "auto" (bfloat16 on GPUs and on CPUs with native bf16, else float32), a name
            like "bfloat16", or a dtype.
        max_adapters: LoRA adapters kept loaded at once (least recently used is evicted).
        max_batch_size: rows (choices) decoded together per model.
        default_max_tokens: cap applied when a request gives no ``max_tokens`` (None: the
            rest of the context, like OpenAI).
        threads: torch CPU threads for the whole process (None: torch's default, one per
            core, or ``OMP_NUM_THREADS``). Use fewer on a machine shared with other work.

    Raises:
        ModelNotFound: ``base_model`` cannot be resolved.
    """

    def __init__(self, base_model: str | None = None, *, device: str = "cpu", dtype: Any = "auto",
                 max_adapters: int = 8, max_batch_size: int = 16, max_full_models: int = 2,
                 max_waiting: int = 512, default_max_tokens: int | None = None,
                 threads: int | None = None):
        if threads is not None:
            import torch

            torch.set_num_threads(_integer("threads", threads, 1))
        self.default_max_tokens = default_max_tokens
        self._targets: dict[str, Target] = {}
        self._lock = threading.Lock()
        adapters: list[models.ModelSource] = []

        def load() -> ModelStore:  # on the scheduler's thread, like all torch work (Scheduler)
            source = models.resolve(base_model)  # may convert the embedded GGUF (torch)
            if source.adapter_of:
                adapters.append(source)
                source = models.resolve(source.adapter_of)
            return ModelStore(source, device=device, dtype=dtype, max_adapters=max_adapters,
                              max_full_models=max_full_models)

        self._scheduler = Scheduler(load, max_batch_size=max_batch_size,
                                    max_waiting=max_waiting, threads=threads)
        self._store = self._scheduler.store
        source = self._store.base_source
        self.base_model_id = source.name
        self._targets[source.name] = self._store.target(source.name, source)
        for adapter in adapters:
            self.register(adapter.name, adapter.path)

    # ----- model ids -----

    def register(self, model_id: str, path: str) -> None:
        """Serve the model/adapter directory ``path`` (training output or checkpoint) as
        ``model_id``; re-registering an id points it at the new directory.

        Raises:
            ModelNotFound: ``path`` is not a model or adapter directory.
            InvalidRequest: ``model_id`` is empty.
        """
        if not isinstance(model_id, str) or not model_id:
            raise InvalidRequest("model id must be a non-empty string", param="model")
        if model_id == self.base_model_id:
            raise InvalidRequest(f"'{model_id}' is the base model's id.", param="model")
        source = models.resolve(str(path))
        target = self._store.target(model_id, models.ModelSource(model_id, source.path,
                                                                 source.adapter_of))
        with self._lock:
            self._targets[model_id] = target

    def unregister(self, model_id: str) -> bool:
        """Stop serving ``model_id`` (requests in flight finish); False if it was unknown.
        The base model cannot be unregistered."""
        with self._lock:
            if model_id == self.base_model_id:
                raise InvalidRequest(f"The base model '{model_id}' cannot be unregistered.",
                                     param="model")
            return self._targets.pop(model_id, None) is not None

    def model_ids(self) -> list[str]:
        """Every servable id: the base first, then registered ones in registration order."""
        with self._lock:
            return list(self._targets)

    def loaded_adapters(self) -> list[str]:
        """Adapter cache keys, least recently used first (diagnostics)."""
        return self._store.loaded_adapters()

    def _target(self, model_id: str) -> Target:
        with self._lock:
            target = self._targets.get(model_id)
        if target is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have "
                                "access to it.")
        return target

    def _info(self, model_id: str) -> tuple[Target, TextInfo]:
        target = self._target(model_id)
        return target, self._store.text_info(target)

    # ----- prompt facts -----

    def context_length(self, model_id: str) -> int:
        """Maximum prompt + completion tokens of ``model_id``."""
        return self._info(model_id)[1].context_length

    def supports_tools(self, model_id: str) -> bool:
        """Whether ``model_id``'s chat template renders a ``tools`` list (otherwise tools
        passed to it would be silently dropped from the prompt)."""
        return template_uses(self._info(model_id)[1].tokenizer, "tools")

    def count_prompt_tokens(self, model_id: str, messages: list[dict],
                            tools: list | None = None) -> int:
        """Tokens of ``messages`` rendered with the model's chat template (generation prompt
        included), i.e. the request's ``prompt_tokens``."""
        return len(self._encode(self._info(model_id)[1], messages, tools))

    @staticmethod
    def _encode(info: TextInfo, messages: list[dict], tools: list | None) -> list[int]:
        from tunehouse.data.tokenize import encode_prompt

        _check_messages(messages)
        try:
            with info.lock:
                return encode_prompt(info.tokenizer, messages, tools=tools)
        except Exception as err:  # the template rejected the conversation (jinja error)
            raise InvalidRequest(f"messages: the chat template rejected them: {err}",
                                 param="messages") from err

    # ----- generation -----

    def stream(self, model_id: str, messages: list[dict], *, max_tokens: int | None = None,
               temperature: float = 1.0, top_p: float = 1.0, n: int = 1,
               stop: str | list[str] | None = None, seed: int | None = None,
               tools: list | None = None) -> Stream:
        """Start a request; iterate the result for ``StreamDelta`` pieces as tokens arrive.

        Raises (before anything is generated): ModelNotFound, InvalidRequest (with ``param``),
        ContextLengthExceeded, Overloaded (queue full).
        """
        params = validate_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 n=n, stop=stop, seed=seed)
        target, info = self._info(model_id)
        prompt = self._encode(info, messages, tools)
        budget = _completion_budget(len(prompt), params.max_tokens, info.context_length,
                                    self.default_max_tokens)
        params = SamplingParams(budget, params.temperature, params.top_p, params.n, params.stop,
                                params.seed)
        request = Request(target=target, info=info, prompt_ids=prompt, params=params)
        self._scheduler.submit(request)
        return Stream(request)

    def chat(self, model_id: str, messages: list[dict], *, max_tokens: int | None = None,
             temperature: float = 1.0, top_p: float = 1.0, n: int = 1,
             stop: str | list[str] | None = None, seed: int | None = None,
             tools: list | None = None) -> ChatResult:
        """Generate ``n`` complete answers (blocking); same arguments and errors as ``stream``."""
        stream = self.stream(model_id, messages, max_tokens=max_tokens, temperature=temperature,
                             top_p=top_p, n=n, stop=stop, seed=seed, tools=tools)
        texts = [""] * n
        reasons: list[Any] = [None] * n
        for delta in stream:
            texts[delta.index] += delta.text
            if delta.finish_reason:
                reasons[delta.index] = delta.finish_reason
        counts = stream.completion_tokens
        choices = [Choice(i, texts[i], reasons[i], counts[i]) for i in range(n)]
        return ChatResult(choices=choices, prompt_tokens=stream.prompt_tokens,
                          completion_tokens=sum(counts))

    def close(self) -> None:
        """Stop the scheduler thread; pending requests fail with Overloaded."""
        self._scheduler.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def template_uses(tokenizer: Any, variable: str) -> bool:
    """Whether the tokenizer's chat template(s) read ``variable`` (Jinja's own analysis)."""
    from jinja2 import TemplateSyntaxError, meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    templates = tokenizer.chat_template
    sources = templates.values() if isinstance(templates, dict) else [templates]
    env = ImmutableSandboxedEnvironment()
    for source in sources:
        try:
            if source and variable in meta.find_undeclared_variables(env.parse(source)):
                return True
        except TemplateSyntaxError:
            continue
    return False


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string 'role'",
                                 param=f"messages[{i}]")


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high:
        return float(value)
    bracket = "(" if low_open else "["
    raise InvalidRequest(f"{name} must be a number in {bracket}{low:g}, {high:g}]; got {value!r}",
                         param=name)


def _integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= low and (
            high is None or value <= high):
        return value
    rng = f"between {low} and {high}" if high is not None else f">= {low}"
    raise InvalidRequest(f"{name} must be an integer {rng}; got {value!r}", param=name)


def validate_params(*, max_tokens: int | None, temperature: float, top_p: float, n: int,
                    stop: str | list[str] | None, seed: int | None) -> SamplingParams:
    """Check ranges like OpenAI does; ``max_tokens`` 0 here means "not given".

    Raises:
        InvalidRequest: naming the bad ``param`` and the allowed range.
    """
    if max_tokens is not None:
        _integer("max_tokens", max_tokens, 1)
    temp = _number("temperature", temperature, 0, 2)
    nucleus = _number("top_p", top_p, 0, 1, low_open=True)
    count = _integer("n", n, 1, MAX_N)
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("stop must be a string or a list of strings", param="stop")
        if len(stop) > MAX_STOP:
            raise InvalidRequest(f"stop may hold at most {MAX_STOP} strings; got {len(stop)}",
                                 param="stop")
        stops = tuple(stop)
    if seed is not None:
        _integer("seed", seed, -(2**63), 2**63 - 1)
    return SamplingParams(max_tokens or 0, temp, nucleus, count, tuple(s for s in stops if s),
                          seed)


def _completion_budget(prompt: int, max_tokens: int, context: int, cap: int | None) -> int:
    """``max_tokens`` checked against the context, or the default (rest of the context).

    Raises:
        ContextLengthExceeded: with OpenAI's wording.
    """
    if max_tokens:
        if prompt + max_tokens > context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} "
                "in the completion). Please reduce the length of the messages or completion.")
        return max_tokens
    if prompt >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your messages "
            f"resulted in {prompt} tokens. Please reduce the length of the messages.")
    rest = context - prompt
    return min(rest, cap) if cap else rest
