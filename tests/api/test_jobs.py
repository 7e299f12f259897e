"""``/v1/fine_tuning/jobs`` with the real SDK: ranges, errors, auth, concurrency, cancel."""

from __future__ import annotations

import asyncio
import io
import math
import time

import httpx
import openai
import pytest
from api_support import KEY_B, chat_example, jsonl, start_server, stop_server, wait_job
from openai import AsyncOpenAI


@pytest.fixture(scope="module")
def training_file(server) -> str:
    data = jsonl([chat_example(i) for i in range(12)])
    return server.client().files.create(file=("t.jsonl", io.BytesIO(data)),
                                        purpose="fine-tune").id


def _hp(**kw) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": kw}}


BAD = [
    ({"method": _hp(n_epochs=51)}, "method.supervised.hyperparameters.n_epochs", "1..50"),
    ({"method": _hp(n_epochs=0)}, "method.supervised.hyperparameters.n_epochs", "1..50"),
    ({"method": _hp(batch_size=257)}, "method.supervised.hyperparameters.batch_size", "1..256"),
    ({"method": _hp(batch_size=True)}, "method.supervised.hyperparameters.batch_size", "1..256"),
    ({"method": _hp(learning_rate_multiplier=0)},
     "method.supervised.hyperparameters.learning_rate_multiplier", "> 0"),
    ({"method": _hp(learning_rate_multiplier=math.nan)},
     "method.supervised.hyperparameters.learning_rate_multiplier", "finite"),
    ({"method": _hp(learning_rate_multiplier=math.inf)},
     "method.supervised.hyperparameters.learning_rate_multiplier", "finite"),
    ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs", "1..50"),
    ({"seed": -1}, "seed", "0..2147483647"),
    ({"seed": 2147483648}, "seed", "0..2147483647"),
    ({"suffix": "x" * 65}, "suffix", "1-64"),
    ({"suffix": "a/b"}, "suffix", "1-64"),
    ({"suffix": ""}, "suffix", "1-64"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "16"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "512"),
    ({"method": {"type": "reinforcement"}}, "method.type", "not supported"),
    ({"method": {"type": "ppo"}}, "method.type", "supervised"),
    ({"method": _hp(n_epochs=2), "hyperparameters": {"n_epochs": 2}}, "hyperparameters",
     "not both"),
    ({"model": "../../etc/passwd"}, "model", "not available"),
    ({"model": "gpt-4o-mini"}, "model", "not available"),
]


@pytest.mark.parametrize("change, param, text", BAD)
def test_out_of_range_requests_get_400_naming_the_param(server, training_file, change, param,
                                                        text):
    body = {"model": server.model, "training_file": training_file, **change}
    with server.http() as http:
        r = http.post("/v1/fine_tuning/jobs", content=_dumps(body),
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and text in err["message"], err
    assert err["type"] == "invalid_request_error"


def _dumps(body: dict) -> str:
    import json

    return json.dumps(body)  # allow_nan: NaN/Infinity go out as JSON extensions


def test_malformed_and_incomplete_bodies(server, training_file):
    with server.http() as http:
        r = http.post("/v1/fine_tuning/jobs", content=b"{not json",
                      headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = http.post("/v1/fine_tuning/jobs", json={"model": server.model})
        assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
        r = http.post("/v1/fine_tuning/jobs", json={"model": server.model,
                                                    "training_file": training_file, "foo": 1})
        assert r.json()["error"]["code"] == "unknown_parameter"
        r = http.get("/v1/fine_tuning/jobs", params={"limit": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
        r = http.get("/v1/no/such/route")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    # after all that, a good request works
    job = server.client().fine_tuning.jobs.create(model=server.model, training_file=training_file,
                                                  suffix="ok", metadata={"case": "after-bad"})
    assert job.status == "validating_files"
    server.client().fine_tuning.jobs.cancel(job.id)


def test_missing_and_foreign_ids_answer_404(server, training_file):
    a, b = server.client(), server.client(KEY_B)
    with pytest.raises(openai.NotFoundError) as exc:
        b.fine_tuning.jobs.create(model=server.model, training_file=training_file)
    assert exc.value.body["param"] == "training_file"
    job = a.fine_tuning.jobs.create(model=server.model, training_file=training_file)
    a.fine_tuning.jobs.cancel(job.id)
    for call in (lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.fine_tuning.jobs.cancel(job.id),
                 lambda: b.fine_tuning.jobs.list_events(job.id),
                 lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
                 lambda: a.fine_tuning.jobs.retrieve("ftjob-doesnotexist"),
                 lambda: a.fine_tuning.jobs.retrieve("ftjob-%2e%2e")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in b.fine_tuning.jobs.list().data]


def _flatten(routes: list) -> list:
    """Every route with methods, through included routers (whatever FastAPI wraps them in)."""
    out = []
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            out += _flatten(inner.routes)
        elif getattr(r, "methods", None):
            out.append(r)
    return out


def test_every_route_requires_a_key(server):
    from tunehouse.api.app import build_app
    from tunehouse.api.deps import ServerSettings
    from tunehouse.store import Database

    app = build_app(ServerSettings(base_model="x", api_keys=("k",)),
                    Database(f"sqlite:///{server.home}/routes.db"))
    public = {r.path for r in _flatten(app.routes) if getattr(r.endpoint, "tunehouse_public", 0)}
    assert public == {"/", "/static/{name:path}"}  # the dashboard shell: deps.owner_of allowlist
    routes = [(m, r.path) for r in _flatten(app.routes) for m in r.methods
              if m != "HEAD" and r.path not in public]
    assert len(routes) >= 15
    with server.http(key=None) as anon, server.http(key="wrong") as wrong:
        for method, path in routes:
            url = path.replace("{model:path}", "m").replace("{file_id}", "file-x") \
                .replace("{job_id}", "ftjob-x")
            for client in (anon, wrong):
                r = client.request(method, url)
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["error"]["code"] == "invalid_api_key"


def test_host_header_must_be_loopback(server):
    r = httpx.get(f"{server.url}/health", headers={"Host": "evil.example.com",
                                                   "Authorization": "Bearer test-key-a"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"


def test_list_pages_and_filters_by_metadata(server, training_file):
    client = server.client()
    made = [client.fine_tuning.jobs.create(model=server.model, training_file=training_file,
                                           metadata={"batch": "paging", "i": str(i)})
            for i in range(3)]
    for j in made:
        client.fine_tuning.jobs.cancel(j.id)
    page = client.fine_tuning.jobs.list(limit=2, metadata={"batch": "paging"})
    assert [j.id for j in page.data] == [made[2].id, made[1].id] and page.has_more
    rest = client.fine_tuning.jobs.list(after=made[1].id, metadata={"batch": "paging"})
    assert [j.id for j in rest.data] == [made[0].id]
    only = client.fine_tuning.jobs.list(metadata={"batch": "paging", "i": "1"})
    assert [j.id for j in only.data] == [made[1].id]


def test_cancel_rules(server, training_file):
    client = server.client()
    job = client.fine_tuning.jobs.create(model=server.model, training_file=training_file)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        client.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        client.fine_tuning.jobs.pause(job.id)


def test_too_few_examples_fail_the_job_with_invalid_n_examples(server):
    client = server.client()
    f = client.files.create(file=("seven.jsonl", io.BytesIO(jsonl([chat_example(i)
                                                                   for i in range(7)]))),
                            purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=server.model, training_file=f.id)
    job = wait_job(client, job.id, ("failed", "succeeded", "cancelled"))
    assert job.status == "failed"
    assert job.error.code == "invalid_n_examples" and job.error.param == "training_file"
    assert "7 example(s)" in job.error.message and "at least 10" in job.error.message


def test_cancel_while_running_within_seconds(server, training_file):
    client = server.client()
    job = client.fine_tuning.jobs.create(
        model=server.model, training_file=training_file,
        method=_hp(n_epochs=10, batch_size=1))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        current = client.fine_tuning.jobs.retrieve(job.id)
        if current.status == "running" and current.trained_tokens:
            break
        assert current.status in ("validating_files", "queued", "running"), current
        time.sleep(0.3)
    assert current.trained_tokens, (current, server.log.read_text()[-2000:])
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    ckpts = len(client.fine_tuning.jobs.checkpoints.list(job.id).data)
    steps = len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                 if e.type == "metrics"])
    time.sleep(4)  # the worker kills the child within a heartbeat (<= ~1 s)
    assert len(client.fine_tuning.jobs.checkpoints.list(job.id).data) == ckpts
    after = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
             if e.type == "metrics"]
    assert len(after) <= steps + 1  # at most the step in flight
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_50_concurrent_job_creations(tmp_path, tiny_model_dir):
    srv = start_server(tmp_path, tiny_model_dir, workers=0)
    try:
        f = srv.client().files.create(file=("t.jsonl", io.BytesIO(jsonl(
            [chat_example(i) for i in range(12)]))), purpose="fine-tune")

        async def create_all() -> list:
            client = AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="test-key-a", max_retries=0)
            return await asyncio.gather(*[client.fine_tuning.jobs.create(
                model=srv.model, training_file=f.id, metadata={"n": str(i)}) for i in range(50)])

        jobs = asyncio.run(create_all())
        assert len({j.id for j in jobs}) == 50
        listed = srv.client().fine_tuning.jobs.list(limit=100).data
        assert {j.id for j in listed} == {j.id for j in jobs}
        assert "database is locked" not in srv.log.read_text()
    finally:
        stop_server(srv)
