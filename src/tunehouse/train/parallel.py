"""Data parallelism across CPU cores inside one training process.

On a CPU, one forward and backward pass spread over intra-op threads scales poorly: the
matmuls do, but attention over short examples, element-wise ops and Python dispatch do not
(measured on 2 cores: 1.3x one core). Instead, each core runs whole micro-batches
single-threaded in a worker thread (torch releases the GIL inside ops; autocast and grad mode
are per thread). Workers take the next micro-batch as soon as they are free, largest first, so
long examples do not leave a core idle; the gradients are nevertheless summed in micro-batch
order, so the result does not depend on which thread ran what or when.

Each micro-batch's gradient comes from ``torch.autograd.grad``, a copy of the trainable
parameters' size until it is added in: cheap for LoRA adapters (a few MB). Full fine-tuning
and CUDA use one worker, which simply calls ``backward()``. Freed memory is handed back to the
operating system when the resident set has grown by a fifth over the working set
(``MemoryReleaser``): without that glibc keeps the peak of every thread's arena, and resident
memory crept from 2.3 to 4.8 GB over a 20-step benchmark; releasing after every step instead
cost about 10% of the speed, because every step then faulted its activations' pages in afresh
(half a million page faults a step). For the same reason blocks up to 64 MB come from glibc's
arenas rather than from fresh ``mmap`` calls, and glibc keeps the freed top of each heap instead
of handing it back after nearly every row (``keep_heap_blocks``).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
S = TypeVar("S")


def worker_count(device: str, full: bool, batch_size: int) -> int:
    """How many workers a run uses: one per intra-op thread on CPU (at most one per example
    of a batch), one on CUDA or for full fine-tuning."""
    if device.startswith("cuda") or full:
        return 1
    return max(1, min(torch.get_num_threads(), batch_size))


class StepWorkers:
    """``n`` worker threads (``threads // n`` intra-op threads each) that share a step's work."""

    def __init__(self, n: int):
        self.n = max(1, n)
        self._main_threads = torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None
        if self.n > 1:
            per_worker = max(1, self._main_threads // self.n)
            self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="tunehouse-step",
                                            initializer=torch.set_num_threads,
                                            initargs=(per_worker,))

    def map(self, items: Sequence[T], fn: Callable[[T], S]) -> list[S]:
        """``[fn(item) for item in items]``, items run on free workers in order of their index."""
        if self._pool is None:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def gradients(self, items: Sequence[T], loss_of: Callable[[T], tuple[torch.Tensor, S]],
                  params: list[torch.Tensor]) -> list[S]:
        """Set every parameter's ``.grad`` to the gradient of ``sum(loss_of(item)[0])``, the
        terms added in item order; return the items' second values in item order.

        Put the largest items first: they are started first.
        """
        if self._pool is None:
            def backward(item: T) -> S:
                loss, stats = loss_of(item)
                loss.backward()
                return stats

            return self.map(items, backward)
        summer = _InOrderSum(params)

        def run(k: int) -> S:
            loss, stats = loss_of(items[k])
            summer.add(k, torch.autograd.grad(loss, params, allow_unused=True))
            return stats

        out = self.map(range(len(items)), run)
        summer.finish()
        return out

    def close(self) -> None:
        """Stop the threads and give the calling thread back its intra-op threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            torch.set_num_threads(self._main_threads)  # MKL's thread count is process-wide


class _InOrderSum:
    """Adds gradient lists into ``params``' ``.grad`` strictly in index order as they arrive."""

    def __init__(self, params: list[torch.Tensor]):
        self.params, self.next, self.waiting = params, 0, {}
        self.lock = threading.Lock()

    def add(self, k: int, grads: Sequence[torch.Tensor | None]) -> None:
        with self.lock:
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


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``; 0 where that does not exist)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except (OSError, IndexError, ValueError):
        return 0


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
