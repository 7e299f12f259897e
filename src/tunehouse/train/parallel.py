"""Data parallelism across CPU cores: worker processes forked from the training process.

On a CPU, one forward and backward pass spread over intra-op threads scales poorly: the
matmuls do, but attention over short examples, element-wise ops and Python dispatch do not
(measured on 2 cores: 1.3x one core). Instead, each core runs whole micro-batches
single-threaded in a worker. Workers are processes, not threads: two threads of one process
contend for the interpreter lock between the thousands of small ops of a row, and for the
process's heap and page tables; on 2 cores each ran about 5% slower than alone, while two
processes run as fast as one (``benchmarks/README.md``).

The workers are forked on first use, after the model is ready, so they share its frozen weights
with the training process (copy-on-write, never written) and start in milliseconds. The
trainable parameters are moved to shared memory before the fork: the optimiser, which runs in
the training process, updates them in place and every worker computes with the new values.
Items may come in groups (``groups=``, one label per item; the trainer splits a step's
examples into as many cost-balanced groups as there are workers): worker ``i`` takes the items
of group ``i`` in order, and once those are gone it takes the last item left of the group with
the most left (the smallest there, as groups list their largest first), so the workers finish a
step together even where the cost estimate was off. Without groups every worker takes the next
item of one queue as soon as it is free. Each item's gradient
(``torch.autograd.grad``, a copy of the trainable parameters' size: a few MB for LoRA adapters)
comes back over a pipe and is added strictly in item order, so the result does not depend on
which worker ran what or when. What an item computes is a method of the owner (the trainer),
named in the call, so that the workers run the same code on their copy of it.

Full fine-tuning and CUDA use one worker: the calling process, which simply calls
``backward()``. Freed memory is handed back to the operating system when the resident set has
grown by a fifth over the working set (``MemoryReleaser``, in each worker): without that glibc
keeps the peak of its arenas, and resident memory crept from 2.3 to 4.8 GB over a 20-step
benchmark; releasing after every step instead cost about 10% of the speed, because every step
then faulted its activations' pages in afresh (half a million page faults a step). For the same
reason blocks up to 64 MB come from glibc's arenas rather than from fresh ``mmap`` calls, and
glibc keeps the freed top of each heap instead of handing it back after nearly every row
(``keep_heap_blocks``).
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

Params = Callable[[], list[torch.Tensor]]


def worker_count(device: str, full: bool, batch_size: int) -> int:
    """How many workers a run uses: one per intra-op thread on CPU (at most one per example
    of a batch), one on CUDA or for full fine-tuning."""
    if device.startswith("cuda") or full:
        return 1
    return max(1, min(torch.get_num_threads(), batch_size))


class WorkerDied(RuntimeError):
    """A worker process ended without finishing its items (killed, or out of memory)."""


class StepWorkers:
    """``n`` workers that share a step's items; ``owner``'s methods compute them.

    ``map(method, items, *args)`` is ``[owner.method(item, *args) for item in items]``;
    ``gradients`` also sets the ``.grad`` of ``params()`` from each item's loss. With ``n > 1``
    the items run in worker processes (``threads // n`` intra-op threads each), forked on first
    use: what they see of ``owner`` is its state at that moment, apart from the trainable
    parameters, which are shared; pass anything that changes later as ``args``.
    """

    def __init__(self, n: int, owner: Any, params: Params):
        self.n, self.owner, self.params = max(1, n), owner, params
        if "fork" not in multiprocessing.get_all_start_methods():  # e.g. Windows: one worker
            self.n = 1
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._ends: Any = None
        self._busy = False  # a request is out and not all workers have reported back

    def map(self, method: str, items: Sequence[Any], *args: Any,
            groups: Sequence[int] | None = None) -> list[Any]:
        """``[owner.method(item, *args) for item in items]``, items run on free workers
        (``groups``: see the module's docstring)."""
        if self.n == 1:
            fn = getattr(self.owner, method)
            return [fn(item, *args) for item in items]
        return self._run(False, method, items, args, groups)

    def gradients(self, method: str, items: Sequence[Any], *args: Any,
                  groups: Sequence[int] | None = None) -> list[Any]:
        """Set every parameter's ``.grad`` to the gradient of the summed losses, where
        ``owner.method(item, *args)`` returns ``(loss, stats)``, the terms added in item order;
        return the items' stats in item order. Put the largest items first (of each group): they
        start first.
        """
        if self.n == 1:
            fn = getattr(self.owner, method)
            out = []
            for item in items:
                loss, stats = fn(item, *args)
                loss.backward()
                out.append(stats)
            return out
        return self._run(True, method, items, args, groups)

    def _run(self, grads: bool, method: str, items: Sequence[Any], args: tuple,
             groups: Sequence[int] | None) -> list[Any]:
        if not self._procs:
            self._start()
        queues = _queues(len(items), groups, self.n)
        with self._ends.get_lock():  # every worker is waiting for a request: nobody reads it now
            ends = self._ends.get_obj()
            for g, queue in enumerate(queues):
                ends[2 * g], ends[2 * g + 1] = 0, len(queue)
        for conn in self._conns:
            conn.send((grads, method, list(items), queues, args))
        self._busy = True
        params = self.params()
        summer = _InOrderSum(params) if grads else None
        results: list[Any] = [None] * len(items)
        errors: list[BaseException] = []
        busy = list(self._conns)
        while busy:
            for conn in wait(busy):
                try:
                    msg = conn.recv()
                    if msg[0] == "item":
                        results[msg[1]] = msg[2]
                        if summer is not None:
                            summer.add(msg[1], _receive_grads(conn, params, msg[3]))
                    elif msg[0] == "error":
                        errors.append(msg[2])
                    else:  # "done"
                        busy.remove(conn)
                except (EOFError, OSError):
                    self.close()
                    raise WorkerDied("A training worker process ended unexpectedly (killed, "
                                     "or out of memory?).") from None
        self._busy = False
        if errors:
            raise errors[0]
        if summer is not None:
            summer.finish()
        return results

    def _start(self) -> None:
        """Fork the workers; the trainable parameters first move to shared memory."""
        for p in self.params():
            p.data.share_memory_()
        # Pages a worker writes become its own copies. Freed heap that this process keeps
        # (``keep_heap_blocks``) would be copied by every worker that reuses it, and the
        # collector's bookkeeping writes into every Python object it scans, so: hand the free
        # heap back, and move all objects out of the collector's reach, before forking.
        gc.collect()
        release_memory()
        gc.freeze()
        ctx = multiprocessing.get_context("fork")
        self._ends = ctx.Array("q", 2 * self.n)  # per queue: next from the front, end of what is left
        threads = max(1, torch.get_num_threads() // self.n)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warning from it
        for i in range(self.n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, self.owner, self.params, self._ends,
                                                    threads, i), name=f"tunehouse-step-{i}", daemon=True)
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)

    def close(self) -> None:
        """Stop the worker processes (they are started again if needed). Interrupted in the
        middle of a request (Ctrl-C, an error), the workers are killed at once: nobody wants
        their results, and a worker may be blocked writing one into a full pipe."""
        if self._busy:
            for proc in self._procs:
                proc.kill()
            self._busy = False
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        if self._procs:
            gc.unfreeze()
        self._conns, self._procs = [], []


def _receive_grads(conn: Connection, params: list[torch.Tensor], present: list[bool]
                   ) -> list[torch.Tensor | None]:
    """The gradients a worker sends after an item, one message per present gradient."""
    out: list[torch.Tensor | None] = []
    for p, here in zip(params, present):
        if not here:
            out.append(None)
            continue
        g = torch.empty(p.shape, dtype=p.dtype)
        conn.recv_bytes_into(g.view(-1).view(torch.uint8).numpy())  # 1-D: as sent
        out.append(g)
    return out


def _queues(n_items: int, groups: Sequence[int] | None, n_queues: int) -> list[list[int]]:
    """Item indices per queue, in item order: one queue without groups, else one per worker
    (group labels beyond the workers' count share a queue: label modulo the count)."""
    if groups is None:
        return [list(range(n_items))]
    if len(groups) != n_items:
        raise ValueError(f"groups has {len(groups)} labels for {n_items} items")
    queues: list[list[int]] = [[] for _ in range(n_queues)]
    for k, g in enumerate(groups):
        queues[g % n_queues].append(k)
    return queues


def _take(state: Any, queues: list[list[int]], me: int) -> int | None:
    """The next item for worker ``me``: the front of its own queue, else the back of the queue
    with the most left; None when all are taken. ``state`` holds (front, end) per queue."""
    with state.get_lock():
        ends = state.get_obj()  # the raw array: the lock is held already
        own = me % len(queues)
        front, end = ends[2 * own], ends[2 * own + 1]
        if front < end:
            ends[2 * own] = front + 1
            return queues[own][front]
        left = [ends[2 * g + 1] - ends[2 * g] for g in range(len(queues))]
        g = max(range(len(queues)), key=lambda q: (left[q], -q))
        if left[g] <= 0:
            return None
        ends[2 * g + 1] -= 1
        return queues[g][ends[2 * g + 1]]


def _serve(conn: Connection, owner: Any, params_of: Params, ends: Any, threads: int,
           me: int) -> None:
    """A worker process: runs items of each request until told to stop or its parent ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:  # Linux: the kernel kills this process when its parent ends, however it ends
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    # The items run on a second thread, as the workers did when they were threads: its heap is
    # one of glibc's per-thread arenas (64 MB heaps, handed back when empty) rather than the
    # main arena, whose top glibc keeps up to the trim threshold (``keep_heap_blocks``).
    loop = threading.Thread(target=_serve_items, args=(conn, owner, params_of, ends, threads, me))
    loop.start()
    loop.join()


def _serve_items(conn: Connection, owner: Any, params_of: Params, ends: Any, threads: int,
                 me: int) -> None:
    torch.set_num_threads(threads)  # per thread (OpenMP)
    params, release = params_of(), MemoryReleaser(resident=private_bytes)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        grads, method, items, queues, args = request
        fn = getattr(owner, method)
        while True:
            k = _take(ends, queues, me)
            if k is None:
                break
            try:
                _run_item(conn, fn, items[k], args, k, params if grads else None)
            except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", k, _picklable(e)))
                break
        release()
        conn.send(("done",))


def _run_item(conn: Connection, fn: Callable[..., Any], item: Any, args: tuple, k: int,
              params: list[torch.Tensor] | None) -> None:
    if params is None:
        conn.send(("item", k, fn(item, *args)))
        return
    loss, stats = fn(item, *args)
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    conn.send(("item", k, stats, [g is not None for g in gs]))
    for g in gs:
        if g is not None:
            conn.send_bytes(g.contiguous().view(-1).view(torch.uint8).numpy())  # 1-D: multiprocessing
            # counts a buffer's length along its first dimension


def _picklable(e: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any exception that does not survive the pipe
        return RuntimeError(f"{type(e).__name__}: {e}")


class _InOrderSum:
    """Adds gradient lists into ``params``' ``.grad`` strictly in index order as they arrive."""

    def __init__(self, params: list[torch.Tensor]):
        self.params, self.next, self.waiting = params, 0, {}

    def add(self, k: int, grads: Sequence[torch.Tensor | None]) -> None:
        self.waiting[k] = grads
        while self.next in self.waiting:
            for p, g in zip(self.params, self.waiting.pop(self.next)):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
            self.next += 1

    def finish(self) -> None:
        assert not self.waiting, "a micro-batch's gradient was not added"


class MemoryReleaser:
    """Calls ``release_memory`` after a step when the resident set exceeds ``growth`` times the
    working set: the resident set at the end of the first step and, after each release, at the
    end of the step that follows it (whichever is larger).

    Re-measuring after a release matters: the first step is often smaller than later ones
    (steps with longer examples need more), and measured against it alone the releaser fired
    after every step once the steady working set exceeded it, every step then faulting its
    pages in afresh (11 releases in a 20-step benchmark run, ~0.4 s of system time each).
    """

    def __init__(self, growth: float = 1.2, resident: Callable[[], int] | None = None,
                 release: Callable[[], None] | None = None):
        self.growth, self.mark, self.measure = growth, 0, True
        self.resident = resident or resident_bytes
        self.release = release or release_memory

    def __call__(self) -> None:
        rss = self.resident()
        if self.measure:
            self.mark, self.measure = max(self.mark, rss), False
        elif rss > self.mark * self.growth:
            self.release()
            self.measure = True


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident set size (``/proc/<pid>/statm``; 0 where that does not exist)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """A process's memory by kind in bytes (``/proc/<pid>/smaps_rollup``: ``Rss``,
    ``Private_Dirty``, ``Shared_Clean``...; empty where that does not exist). It walks the
    process's page tables: call it between steps, not while the process computes."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except (OSError, ValueError):
        pass
    return out


def private_bytes() -> int:
    """This process's resident memory that no other process shares (``smaps_rollup``): for a
    forked worker, what it holds beyond the parent's pages; its resident set where that file
    does not exist."""
    kinds = smaps_rollup()
    if not kinds:
        return resident_bytes()
    return sum(n for kind, n in kinds.items() if kind.startswith("Private_"))


def keep_heap_blocks(limit: int = 64 << 20, keep: int = 1 << 30) -> None:
    """Serve allocations up to ``limit`` bytes from glibc's heap instead of ``mmap`` (glibc's
    own threshold adapts only up to 32 MB), and keep up to ``keep`` freed bytes at the top of
    each heap instead of 128 KB (with a fixed mmap threshold glibc would otherwise hand the
    top of a worker's heap back after nearly every row, and the next row fault it in again),
    so that memory goes back to the system only through ``MemoryReleaser``; a no-op without
    glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, limit)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, keep)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def release_memory() -> None:
    """Return freed heap memory to the operating system (glibc ``malloc_trim``; else nothing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
