"""The single thread that owns the models: admits queued requests into batches and decodes.

Callers (any thread) put a ``Request`` on the queue and read its events. The scheduler loop:

1. **admit**: waiting requests, oldest first, join the batch ("lane") of their model when
   there is room (``max_batch_size`` rows; a request with ``n`` choices needs ``n``) and their
   adapter can be pinned in the cache. A request that must wait does not block later ones for
   other lanes. Newly admitted prompts of a lane are prefilled together, each prompt once,
   then copied to its ``n`` rows.
2. **decode**: every lane advances one token, in turn (iteration-level batching): base and
   adapter requests share the base lane, full models each have their own, so no model can
   starve another.

Rows finish independently (end-of-turn token, stop string, ``max_tokens``) and leave the
batch at once; their slots are refilled at the next admission.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunehouse.errors import Overloaded
from tunehouse.serve.adapters import BASE_LANE, ModelStore, Target, TextInfo, plain_forward
from tunehouse.serve.batch import Forward, Lane, prefill
from tunehouse.serve.sampling import TextTracker, choose_tokens, make_generator
from tunehouse.serve.types import FinishReason, SamplingParams, StreamDelta

DONE = object()  # end-of-request marker on a request's event queue


@dataclass(eq=False)
class Request:
    """One chat request in flight; its ``events`` carry StreamDelta, then DONE or an error."""

    target: Target
    info: TextInfo
    prompt_ids: list[int]
    params: SamplingParams
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: list[int] = field(default_factory=list)
    live: int = 0  # rows still generating
    pinned: bool = False
    notify: Callable[[], None] | None = None  # called after every event (async readers)

    def emit(self, item: object) -> None:
        """Hand ``item`` (a StreamDelta, DONE or an error) to the reader."""
        self.events.put(item)
        if self.notify is not None:
            self.notify()

    def fail(self, err: BaseException) -> None:
        self.emit(err)


@dataclass(eq=False)
class Row:
    """One choice of a request being generated; ``token`` is sampled but not yet fed."""

    request: Request
    index: int
    adapter: str
    tracker: TextTracker
    generator: torch.Generator | None
    token: int = 0
    generated: int = 0


class Scheduler:
    """Owns the models on one daemon thread; ``submit`` is thread-safe.

    ``load`` (the ``ModelStore``'s constructor, say) runs on that thread too, before anything
    else, and the constructor waits for it and re-raises its error. All of the engine's torch
    work thus happens on one thread: with GNU OpenMP, a second live thread that has run
    parallel regions (one that loaded the model, say) gives each its own pool of worker
    threads, more threads than cores, and then libgomp's workers stop spinning between
    regions; a decode step's many small products each paid a wake-up (measured: a bf16
    8 x 576 x 1536 product took ~150 us instead of ~85 us, ~1.3 cores busy instead of 2).
    """

    def __init__(self, load: Callable[[], ModelStore], *, max_batch_size: int = 16,
                 max_waiting: int = 512, max_prefill_tokens: int = 8192,
                 threads: int | None = None):
        self.max_batch = max_batch_size
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self._waiting: deque[Request] = deque()
        self._lanes: dict[str, Lane] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._threads = threads or torch.get_num_threads()
        self._load_error: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(load, ready),
                                        name="tunehouse-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, request: Request) -> None:
        """Queue ``request``. Raises Overloaded when the queue is full or the engine closed."""
        with self._cond:
            if self._closed:
                raise Overloaded("The inference engine is shut down.")
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded("Too many requests are waiting; retry later.")
            self._waiting.append(request)
            self._cond.notify()

    def close(self) -> None:
        """Stop the loop; requests still queued or running get an Overloaded error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # ----- the loop -----

    def _load(self, load: Callable[[], ModelStore], ready: threading.Event) -> bool:
        """Set this thread's OpenMP/MKL thread count (a per-thread setting) and load."""
        try:
            torch.set_num_threads(self._threads)
            self.store: ModelStore = load()
        except BaseException as err:  # noqa: BLE001 - handed to the constructor's caller
            self._load_error = err
        ready.set()
        return self._load_error is None

    def _run(self, load: Callable[[], ModelStore], ready: threading.Event) -> None:
        if not self._load(load, ready):
            return
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._lanes):
                    self._cond.wait()
                if self._closed:
                    break
            try:
                with torch.inference_mode():
                    self._admit()
                    for key in list(self._lanes):
                        self._decode(key)
            except Exception as err:  # a bug must fail requests, never hang them all
                self._fail_everything(err)
        self._fail_everything(Overloaded("The inference engine was shut down."))

    def _fail_everything(self, err: BaseException) -> None:
        for key in list(self._lanes):
            self._fail_lane(key, err)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            self._release(req)
            req.fail(err)

    def _fail_lane(self, lane_key: str, err: BaseException) -> None:
        """Drop a lane whose state may be broken; its requests get ``err``."""
        lane = self._lanes.pop(lane_key, None)
        if lane is not None:
            self._fail({id(r.request): r.request for r in lane.rows}.values(), err)

    def _fail(self, requests: Any, err: BaseException) -> None:
        for req in requests:
            self._release(req)
            req.fail(err)

    def _admit(self) -> None:
        """Move waiting requests into their lanes (see module docstring) and prefill them."""
        groups: dict[str, list[tuple[Request, str]]] = {}
        budget: dict[str, int] = {}
        blocked: set[str] = set()  # lanes where an older request waits: keep FIFO order
        with self._cond:
            candidates = list(self._waiting)
        for req in candidates:
            if req.cancelled.is_set():
                self._dequeue(req)
                continue
            lane_key = req.target.lane
            if lane_key in blocked:
                continue
            group = groups.setdefault(lane_key, [])
            used = len(self._lanes[lane_key]) if lane_key in self._lanes else 0
            rows = used + sum(r.params.n for r, _ in group)
            tokens = budget.get(lane_key, 0) + len(req.prompt_ids)
            if (rows or group) and (rows + req.params.n > self.max_batch
                                    or (group and tokens > self.max_prefill_tokens)):
                blocked.add(lane_key)
                continue
            try:
                got = self.store.acquire(req.target)
            except Exception as err:  # unloadable weights: this request fails, others go on
                self._dequeue(req)
                req.fail(err)
                continue
            if got is None:  # adapter cache full of pinned adapters: wait for a slot
                blocked.add(lane_key)
                continue
            req.pinned = True
            self._dequeue(req)
            group.append((req, got[1]))
            budget[lane_key] = tokens
        for lane_key, group in groups.items():
            if group:
                self._prefill(lane_key, group)

    def _dequeue(self, req: Request) -> None:
        with self._cond:
            self._waiting.remove(req)

    def _model(self, lane_key: str) -> tuple[Forward, Any]:
        """The forward function and model object of a lane (looked up anew every step:
        the base model becomes a PeftModel when its first adapter loads)."""
        if lane_key == BASE_LANE:
            return self.store.router.forward, self.store.base_model
        return plain_forward, self.store.full_model(lane_key)

    def _prefill(self, lane_key: str, group: list[tuple[Request, str]]) -> None:
        """Prefill each prompt once, fan out to ``n`` rows, sample their first tokens and
        join the lane. On failure the group's requests fail (and the lane, if touched)."""
        forward, model = self._model(lane_key)
        reqs = [r for r, _ in group]
        try:
            logits, cache, mask = prefill(forward, model, [r.prompt_ids for r in reqs],
                                          [a for _, a in group], self._pad_id(reqs[0]),
                                          self.store.device)
            rows, source = self._fan_out(group)
            idx = torch.tensor(source, dtype=torch.long)
            if source != list(range(len(reqs))):
                cache.batch_select_indices(idx.to(self.store.device))
            logits, mask = logits[idx.to(logits.device)], mask[idx]
            positions = [len(r.request.prompt_ids) for r in rows]
            keep = self._advance(rows, logits)
        except Exception as err:
            self._fail(reqs, err)
            return
        if not keep:
            return
        try:
            if len(keep) != len(rows):
                kidx = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(kidx.to(self.store.device))
                mask = mask[kidx]
            lane = self._lanes.setdefault(lane_key, Lane(self.store.device))
            lane.join([rows[i] for i in keep], cache, mask, [positions[i] for i in keep])
        except Exception as err:
            self._fail(reqs, err)
            self._fail_lane(lane_key, err)

    @staticmethod
    def _fan_out(group: list[tuple[Request, str]]) -> tuple[list[Row], list[int]]:
        """``n`` rows per request, and for each row the index of its request's prompt."""
        rows: list[Row] = []
        source: list[int] = []
        for i, (req, adapter) in enumerate(group):
            req.completion_tokens = [0] * req.params.n
            req.live = req.params.n
            for k in range(req.params.n):
                gen = None if req.params.greedy else make_generator(req.params.seed, k)
                rows.append(Row(req, k, adapter, TextTracker(req.info.tokenizer, req.params.stop),
                                gen))
                source.append(i)
        return rows, source

    @staticmethod
    def _pad_id(req: Request) -> int:
        tok = req.info.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    def _decode(self, lane_key: str) -> None:
        """One decode step for every row of a lane (cancelled rows leave first)."""
        lane = self._lanes[lane_key]
        try:
            live = [i for i, row in enumerate(lane.rows) if not row.request.cancelled.is_set()]
            for row in (lane.rows[i] for i in set(range(len(lane))) - set(live)):
                self._drop(row)
            lane.keep(live)
            if lane.rows:
                logits = lane.step(*self._model(lane_key), [r.token for r in lane.rows],
                                   [r.adapter for r in lane.rows])
                lane.keep(self._advance(lane.rows, logits))
        except Exception as err:
            self._fail_lane(lane_key, err)
            return
        if not lane.rows:
            del self._lanes[lane_key]

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> list[int]:
        """Sample one token per row, stream its text, finish rows; indices still running."""
        params = [r.request.params for r in rows]
        tokens = choose_tokens(logits, [p.temperature for p in params],
                               [p.top_p for p in params], [r.generator for r in rows])
        keep = []
        for i, (row, tok) in enumerate(zip(rows, tokens, strict=True)):
            row.generated += 1
            req = row.request
            if tok in req.info.stop_ids:
                self._finish(row, "stop")
                continue
            with req.info.lock:
                delta = row.tracker.push(tok)
            if row.tracker.stopped:
                self._finish(row, "stop", delta)
            elif row.generated >= req.params.max_tokens:
                self._finish(row, "length", delta)
            else:
                if delta:
                    req.emit(StreamDelta(row.index, delta))
                row.token = tok
                keep.append(i)
        return keep

    def _finish(self, row: Row, reason: FinishReason, delta: str = "") -> None:
        req = row.request
        with req.info.lock:
            text = delta + row.tracker.finish()
        req.completion_tokens[row.index] = row.generated
        req.emit(StreamDelta(row.index, text, reason))
        self._drop(row)

    def _drop(self, row: Row) -> None:
        req = row.request
        req.live -= 1
        if req.live == 0:
            self._release(req)
            req.emit(DONE)

    def _release(self, req: Request) -> None:
        if req.pinned:
            req.pinned = False
            self.store.release(req.target)
