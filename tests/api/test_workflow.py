"""OpenAI's documented workflow, unchanged, with the real SDK against ``tunehouse serve``:
upload -> create job -> poll retrieve/events -> checkpoints -> chat with ft:... -> delete."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from api_support import KEY_B, chat_example, jsonl, wait_job


def _chat(client, model: str, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Colour 3: gold?"}], **kw)


@pytest.fixture(scope="module")
def trained(server):
    """Steps 1-2 of the workflow: upload the files, create the job, poll until it is done."""
    client = server.client()
    train = client.files.create(file=("train.jsonl", io.BytesIO(jsonl(
        [chat_example(i) for i in range(16)]))), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", io.BytesIO(jsonl(
        [chat_example(100 + i) for i in range(4)]))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=server.model, training_file=train.id, validation_file=valid.id, suffix="wf",
        seed=42, metadata={"flow": "workflow"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 30}}})
    assert job.status == "validating_files" and job.seed == 42
    assert job.method.supervised.hyperparameters.n_epochs == 2
    job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{server.model}:tunehouse:wf:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.learning_rate_multiplier == 30
    return job


def test_upload_train_poll_checkpoints_chat_delete(server, trained):
    client, job = server.client(), trained
    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data[::-1]
    text = [e.message for e in events]
    for expected in ("Validating training file", "Files validated", "Fine-tuning job started",
                     "Checkpoint created", "New fine-tuned model created",
                     "The job has successfully completed"):
        assert any(expected in m for m in text), expected
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 9))  # 16 / 4 * 2 epochs
    assert metrics[-1].message.startswith("Step 8/8: training loss=")
    assert metrics[-1].data["full_valid_loss"] is not None  # epoch end: full validation
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert page.has_more and len(page.data) == 2
    older = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert [e.id for e in older.data] == [e.id for e in events[::-1][2:5]]  # the next page
    with server.http() as http:  # our metrics extension pages by step: ?after=<step>
        url = f"/v1/fine_tuning/jobs/{job.id}/metrics"
        later = http.get(url, params={"after": 5}).json()
        assert [m["step"] for m in later["data"]] == [6, 7, 8] and not later["has_more"]
        first = http.get(url, params={"after": 0, "limit": 3}).json()
        assert [m["step"] for m in first["data"]] == [1, 2, 3] and first["has_more"]
        bad = http.get(url, params={"after": "ftevent-abc"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"

    assert any(m.startswith("Evaluation: ") for m in text)  # fine-tuned vs base on validation
    report = [client.files.retrieve(f) for f in job.result_files[1:]]
    assert [f.filename for f in report] == ["eval_report.html", "eval_report.json"]
    assert "<html" in client.files.content(report[0].id).text[:500].lower()
    result = client.files.retrieve(job.result_files[0])
    assert result.purpose == "fine-tune-results"
    csv = client.files.content(result.id).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) == 9

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [8, 4]  # one per epoch, newest first
    assert ckpts[1].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-4"
    assert ckpts[0].metrics.train_loss is not None and ckpts[0].fine_tuning_job_id == job.id
    listed = {m.id for m in client.models.list().data}
    assert {server.model, job.fine_tuned_model, ckpts[1].fine_tuned_model_checkpoint} <= listed

    reply = _chat(client, job.fine_tuned_model, max_tokens=8, temperature=0)
    assert reply.object == "chat.completion" and reply.model == job.fine_tuned_model
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = _chat(client, job.fine_tuned_model, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy: deterministic

    chunks = list(_chat(client, job.fine_tuned_model, max_tokens=8, temperature=0, stream=True,
                        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    ckpt_reply = _chat(client, ckpts[1].fine_tuned_model_checkpoint, max_tokens=4)
    assert ckpt_reply.choices[0].message.content is not None

    with pytest.raises(openai.NotFoundError):  # another key cannot see or use it
        _chat(server.client(KEY_B), job.fine_tuned_model, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.models.delete(server.model)
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError) as exc:
        _chat(client, job.fine_tuned_model, max_tokens=4)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)
    assert client.models.retrieve(ckpts[0].fine_tuned_model_checkpoint).id  # checkpoints stay


def test_20_concurrent_clients_on_two_fine_tuned_models(server, trained):
    """20 concurrent requests spread over the job's two checkpoints (two fine-tuned models) and
    the base model: each gets the answer its own model gives alone (no adapter mix-ups). The
    base is in the mix because two nearby checkpoints of a random-init tiny model may answer
    alike, and a mix-up is only visible between models that answer differently."""
    client = server.client().with_options(timeout=90)
    ckpts = client.fine_tuning.jobs.checkpoints.list(trained.id).data
    names = [c.fine_tuned_model_checkpoint for c in ckpts] + [server.model]
    assert len(names) == 3
    prompts = [f"Colour {i}: red?" for i in range(4)]
    sample = {"max_tokens": 8, "temperature": 0}
    expected = {(m, p): client.chat.completions.create(
        model=m, messages=[{"role": "user", "content": p}], **sample).choices[0].message.content
        for m in names for p in prompts}
    assert len(set(expected.values())) > 1  # the models really differ somewhere

    def ask(i: int) -> tuple[tuple[str, str], str]:
        key = (names[i % 3], prompts[i % 4])
        r = client.chat.completions.create(model=key[0], messages=[{"role": "user", "content": key[1]}],
                                           **sample)
        return key, r.choices[0].message.content

    with ThreadPoolExecutor(20) as pool:
        for key, text in pool.map(ask, range(20)):
            assert text == expected[key], key


def test_pause_then_resume_a_running_job(server):
    client = server.client()
    train = client.files.create(file=("p.jsonl", io.BytesIO(jsonl(
        [chat_example(i) for i in range(12)]))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=server.model, training_file=train.id,
                                         method={"type": "supervised", "supervised": {
                                             "hyperparameters": {"n_epochs": 3,
                                                                 "batch_size": 2}}})
    deadline = 300
    import time

    t0 = time.monotonic()
    while not client.fine_tuning.jobs.retrieve(job.id).trained_tokens:
        assert time.monotonic() - t0 < deadline, "job never started"
        time.sleep(0.3)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    time.sleep(3)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    text = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500).data]
    assert any("paused" in m for m in text) and any(m.startswith("Resuming") for m in text)
