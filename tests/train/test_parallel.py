"""Data-parallel worker processes must give the gradients of one sequential pass, deterministically.

``train.parallel.StepWorkers`` runs a step's packed rows in worker processes forked from the
test (one intra-op thread each) and sums their gradients in row order; a wrong sum, a lost row,
a gradient that does not make it through the pipe, parameters that the workers do not see
updated, or a worker that does not report its error or death shows up here.
"""

import os
import signal
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from test_packed import examples, lora_model  # noqa: E402  (same directory)

from tunehouse.config import LoraConfig, TrainConfig
from tunehouse.errors import InvalidRequest
from tunehouse.train.loop import train
from tunehouse.train.model import pack, packed_token_loss
from tunehouse.train.parallel import MemoryReleaser, StepWorkers, WorkerDied, worker_count


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


class Owner:
    """What a trainer is to its workers: methods that compute an item."""

    def __init__(self, model=None, scale=10.0):
        self.model, self.scale = model, scale

    def row_loss(self, packed):
        loss, n, _ = packed_token_loss(self.model, packed)
        return loss / self.scale, (float(loss.detach()), n, os.getpid())

    def double(self, x, fail_on=None):
        if x == fail_on:
            raise InvalidRequest(f"bad item {x}", param="x")
        return x * 2

    def threads(self, _):
        return torch.get_num_threads(), torch.is_grad_enabled(), os.getpid()

    def slow(self, x):
        time.sleep(60)
        return x

    def die(self, x):
        if x == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return x


def step_grads(model, workers, rows):
    """Gradients of the summed (scaled) packed losses of ``rows`` computed by ``workers``."""
    for p in trainable(model):
        p.grad = None
    stats = workers.gradients("row_loss", rows)
    return [p.grad.clone() for p in trainable(model)], stats


def test_worker_count():
    assert worker_count("cuda", False, 8) == 1
    assert worker_count("cpu", True, 8) == 1  # full fine-tuning: one copy of the gradients
    assert worker_count("cpu", False, 1) == 1
    assert worker_count("cpu", False, 64) == torch.get_num_threads()


def test_two_workers_match_one_sequential_pass_and_see_parameter_updates(tiny_tokenizer):
    from tunehouse.train.attention import use_varlen
    from tunehouse.train.model import causal_lm

    model = lora_model(tiny_tokenizer)
    use_varlen(causal_lm(model))
    exs = examples(tiny_tokenizer)
    rows = [pack(exs[:2]), pack(exs[2:3]), pack(exs[3:]), pack(exs[1:2])]
    owner = Owner(model)

    def sequential():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each worker runs: intra-op threads may split matmuls differently
        try:
            return step_grads(model, StepWorkers(1, owner, lambda: trainable(model)), rows)
        finally:
            torch.set_num_threads(threads)

    ref, ref_stats = sequential()
    two = StepWorkers(2, owner, lambda: trainable(model))
    try:
        got, stats = step_grads(model, two, rows)
        again, _ = step_grads(model, two, rows)
        with torch.no_grad():  # as the optimiser does, in place: the workers must compute with it
            for p in trainable(model):
                p.add_(0.05)
        moved, moved_stats = step_grads(model, two, rows)
    finally:
        two.close()
    ref_moved, ref_moved_stats = sequential()
    assert [s[:2] for s in stats] == [s[:2] for s in ref_stats]  # item order kept
    assert len({s[2] for s in stats}) == 2 and os.getpid() not in {s[2] for s in stats}
    for a, b, c in zip(got, ref, again):
        assert torch.equal(a, b)  # the sums of one sequential pass, in the same order
        assert torch.equal(a, c)
    assert [s[0] for s in moved_stats] == [s[0] for s in ref_moved_stats] != [s[0] for s in stats]
    for a, b in zip(moved, ref_moved):
        assert torch.equal(a, b)


def test_workers_run_single_threaded_processes():
    workers = StepWorkers(2, Owner(), list)
    try:
        seen = workers.map("threads", list(range(6)))
    finally:
        workers.close()
    per = max(1, torch.get_num_threads() // 2)
    assert {s[:2] for s in seen} == {(per, True)}
    assert os.getpid() not in {s[2] for s in seen}


def test_an_error_in_a_worker_reaches_the_caller_and_the_workers_still_work():
    workers = StepWorkers(2, Owner(), list)
    try:
        with pytest.raises(InvalidRequest, match="bad item 3") as info:
            workers.map("double", [1, 3, 2], 3)
        assert info.value.param == "x"
        assert workers.map("double", [1, 2, 4]) == [2, 4, 8]
    finally:
        workers.close()


def test_a_worker_that_dies_is_an_error_not_a_hang():
    workers = StepWorkers(2, Owner(), list)
    try:
        with pytest.raises(WorkerDied, match="ended unexpectedly"):
            workers.map("die", [0, 1, 2, 3])
        assert workers.map("double", [5]) == [10]  # started afresh
    finally:
        workers.close()


def test_ctrl_c_during_a_step_stops_the_workers_at_once():
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a
    # non-interactive shell (nohup, `cmd &`) inherits SIGINT ignored and would never see it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = StepWorkers(2, Owner(), list)
    workers.map("double", [1])  # started
    pids = [p.pid for p in workers._procs]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            workers.map("slow", [1, 2])
    finally:
        t0 = time.monotonic()
        workers.close()
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 5
    for pid in pids:  # gone (reaped), not still computing
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_training_with_one_or_two_workers_gives_the_same_adapter(tiny_model_dir, chat_files, tmp_path):
    threads = torch.get_num_threads()
    outs = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            cfg = TrainConfig(train_file=str(chat_files[0]), model=str(tiny_model_dir),
                              out=str(tmp_path / f"w{n}"), epochs=1, batch_size=6, max_steps=3,
                              lora=LoraConfig(r=4, alpha=8), learning_rate_multiplier=5.0, seed=5,
                              progress=False)
            res = train(cfg, None)
            assert torch.get_num_threads() == n  # restored after the run
            outs[n] = (res, load_file(str(tmp_path / f"w{n}" / "adapter_model.safetensors")))
    finally:
        torch.set_num_threads(threads)
    (r1, w1), (r2, w2) = outs[1], outs[2]
    assert r1.trained_tokens == r2.trained_tokens
    assert r1.metrics["train_loss"] == pytest.approx(r2.metrics["train_loss"], rel=1e-4)
    for name in w1:  # the same rows on either worker count, gradients summed in row order
        assert torch.equal(w1[name], w2[name]), name


def test_memory_is_released_above_the_working_set_measured_again_after_each_release():
    # resident GB at the end of each step: a small first step, then a working set of ~3.2
    values = [2.0, 2.2, 2.5, 3.2, 3.3, 3.5, 3.9, 3.3, 3.9, 4.0]
    seen: list[float] = []
    released: list[int] = []

    def resident() -> int:
        seen.append(values[len(seen)])
        return int(seen[-1] * 1e9)

    releaser = MemoryReleaser(1.2, resident=resident, release=lambda: released.append(len(seen) - 1))
    for _ in values:
        releaser()
    # 2.5 > 1.2 x 2.0; then the mark is the next step's 3.2 (not the first step's 2.0, which
    # would release after every later step) and 3.9 > 3.84; then max(3.2, 3.3): 4.0 > 3.96
    assert released == [2, 6, 9]


def test_grouped_items_go_to_their_own_worker_first_then_the_smallest_left_elsewhere():
    import multiprocessing

    from tunehouse.train.parallel import _queues, _take

    queues = _queues(7, [0, 1, 0, 1, 0, 0, 0], 2)
    assert queues == [[0, 2, 4, 5, 6], [1, 3]]
    state = multiprocessing.get_context("fork").Array("q", 4)
    state[:] = [0, 5, 0, 2]
    taken = [_take(state, queues, me) for me in (0, 1, 1, 1, 1, 0, 0, 0, 1)]
    # worker 1 runs out after its two items and takes group 0's last ones, from the back
    assert taken == [0, 1, 3, 6, 5, 2, 4, None, None]
    assert _queues(3, None, 2) == [[0, 1, 2]]  # no groups: one queue for every worker
    with pytest.raises(ValueError, match="2 labels for 3 items"):
        _queues(3, [0, 1], 2)
