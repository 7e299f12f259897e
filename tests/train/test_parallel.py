"""Data-parallel worker threads must give the gradients of one sequential pass, deterministically.

``train.parallel.StepWorkers`` runs a step's packed rows on worker threads (one intra-op thread
each) and sums their gradients in row order; a wrong sum, a lost row, a race on ``.grad`` or
autocast/grad mode not reaching the threads shows up here.
"""

import threading

import pytest
import torch
from safetensors.torch import load_file
from test_packed import examples, lora_model  # noqa: E402  (same directory)

from tunehouse.config import LoraConfig, TrainConfig
from tunehouse.errors import InvalidRequest
from tunehouse.train.loop import train
from tunehouse.train.model import pack, packed_token_loss
from tunehouse.train.parallel import MemoryReleaser, StepWorkers, worker_count


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def step_grads(model, workers, rows, scale=10.0):
    """Gradients of the summed (scaled) packed losses of ``rows`` computed by ``workers``."""
    for p in trainable(model):
        p.grad = None

    def loss_of(packed):
        loss, n, _ = packed_token_loss(model, packed)
        return loss / scale, (float(loss.detach()), n, threading.current_thread().name)

    stats = workers.gradients(rows, loss_of, trainable(model))
    return [p.grad.clone() for p in trainable(model)], stats


def test_worker_count():
    assert worker_count("cuda", False, 8) == 1
    assert worker_count("cpu", True, 8) == 1  # full fine-tuning: one copy of the gradients
    assert worker_count("cpu", False, 1) == 1
    assert worker_count("cpu", False, 64) == torch.get_num_threads()


def test_two_workers_match_one_sequential_pass_and_are_deterministic(tiny_tokenizer):
    from tunehouse.train.attention import use_varlen
    from tunehouse.train.model import causal_lm

    model = lora_model(tiny_tokenizer)
    use_varlen(causal_lm(model))
    exs = examples(tiny_tokenizer)
    rows = [pack(exs[:2]), pack(exs[2:3]), pack(exs[3:]), pack(exs[1:2])]

    one = StepWorkers(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs: intra-op threads may split matmuls differently
    try:
        ref, ref_stats = step_grads(model, one, rows)
    finally:
        torch.set_num_threads(threads)
    two = StepWorkers(2)
    try:
        got, stats = step_grads(model, two, rows)
        again, _ = step_grads(model, two, rows)
    finally:
        two.close()
    assert [s[:2] for s in stats] == [s[:2] for s in ref_stats]  # item order kept
    assert len({s[2] for s in stats}) == 2  # both workers ran rows
    assert all(s[2] == threading.current_thread().name for s in ref_stats)
    for a, b, c in zip(got, ref, again):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)  # the sums of one sequential pass
        assert torch.equal(a, c)  # in the same order every time


def test_workers_run_single_threaded_and_close_restores_threads(tiny_tokenizer):
    before = torch.get_num_threads()
    workers = StepWorkers(2)
    barrier = threading.Barrier(2)  # both items must run at once, on two threads
    seen = workers.map([0, 1], lambda _: (barrier.wait(), torch.get_num_threads(), torch.is_grad_enabled())[1:])
    workers.close()
    assert seen == [(max(1, before // 2), True)] * 2
    assert torch.get_num_threads() == before


def test_an_error_in_a_worker_reaches_the_caller_and_the_pool_still_works():
    workers = StepWorkers(2)

    def fail_on_three(x):
        if x == 3:
            raise InvalidRequest("bad item 3", param="x")
        return x * 2

    try:
        with pytest.raises(InvalidRequest, match="bad item 3"):
            workers.map([1, 3, 2], fail_on_three)
        assert workers.map([1, 2, 4], fail_on_three) == [2, 4, 8]
    finally:
        workers.close()


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
