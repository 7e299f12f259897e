"""``/v1/chat/completions`` on the base model: parameters, limits and errors, then recovery."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import openai
import pytest

MSG = [{"role": "user", "content": "Hello there"}]


@pytest.mark.parametrize("change, param", [
    ({"temperature": 5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": -1}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"n": 1000}, "n"),
    ({"n": 0}, "n"),
    ({"max_tokens": 10**9}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"frequency_penalty": 1.5}, "frequency_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
])
def test_bad_parameters_get_400_then_the_server_still_answers(server, change, param):
    body = {"model": server.model, "messages": MSG, "max_tokens": 4, **change}
    with server.http() as http:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, r.json()
        ok = http.post("/v1/chat/completions", json={"model": server.model, "messages": MSG,
                                                     "max_tokens": 2})
        assert ok.status_code == 200, ok.text


def test_nan_temperature_is_refused(server):
    with server.http() as http:
        r = http.post("/v1/chat/completions", headers={"Content-Type": "application/json"},
                      content=json.dumps({"model": server.model, "messages": MSG,
                                          "temperature": float("nan")}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_context_length_exceeded(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as exc:  # the tiny model's context is 512
        client.chat.completions.create(model=server.model, max_tokens=4, messages=[
            {"role": "user", "content": "x" * 600}])
    assert exc.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=server.model, messages=MSG, max_tokens=500)
    assert exc.value.body["code"] == "context_length_exceeded"


def test_unknown_model_is_404(server):
    for name in ("nope", "ft:tiny-llama:tunehouse::xyz", "../../etc/passwd"):
        with pytest.raises(openai.NotFoundError) as exc:
            server.client().chat.completions.create(model=name, messages=MSG, max_tokens=2)
        assert exc.value.body["code"] == "model_not_found"


def test_n_stop_seed_and_max_completion_tokens(server):
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=MSG, n=3,
                                       max_completion_tokens=5, temperature=1.0, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 15
    again = client.chat.completions.create(model=server.model, messages=MSG, n=3,
                                           max_completion_tokens=5, temperature=1.0, seed=11)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    full = client.chat.completions.create(model=server.model, messages=MSG, max_tokens=12,
                                          temperature=0)
    text = full.choices[0].message.content
    if len(text) > 3:  # stop on a piece of the greedy answer: it ends where that first occurs
        piece = text[2:4]
        stopped = client.chat.completions.create(model=server.model, messages=MSG,
                                                 max_tokens=12, temperature=0, stop=[piece])
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].message.content == text[:text.index(piece)]


def test_stream_without_usage_ends_with_done(server):
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": server.model, "messages": MSG, "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert '"usage"' not in "".join(lines)


def test_overlong_json_body_is_413_before_it_is_read(server):
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    for k, v in {"Content-Type": "application/json", "Authorization": "Bearer test-key-a",
                 "Content-Length": str(64 * 1024 * 1024)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()  # answered from the headers: the body is never sent
    assert resp.status == 413
    assert json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()
