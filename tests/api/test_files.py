"""``/v1/files`` with the real SDK: upload, list, content, delete; bad files; size limit."""

from __future__ import annotations

import http.client
import io
from urllib.parse import urlparse

import openai
import pytest
from api_support import KEY_B, MAX_UPLOAD, chat_example, jsonl

GOOD = [chat_example(i) for i in range(12)]


def _stored(server) -> set[str]:
    d = server.home / "files"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def test_upload_list_retrieve_content_delete(server):
    client = server.client()
    data = jsonl(GOOD)
    f = client.files.create(file=("../../evil name.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(data) and f.purpose == "fine-tune"
    assert f.filename == "evil name.jsonl"  # metadata only, path parts dropped
    assert f.id in _stored(server)  # stored under the server id, nothing else
    assert not any(".." in name or "evil" in name for name in _stored(server))
    assert f.id in [x.id for x in client.files.list().data]
    assert client.files.retrieve(f.id).bytes == len(data)
    assert client.files.content(f.id).read() == data
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    assert f.id not in _stored(server)


@pytest.mark.parametrize("lines, where", [
    (GOOD[:5] + ['{"messages": [}'] + GOOD[5:], "line 6"),
    (GOOD[:2] + [{"messages": [{"role": "robot", "content": "hi"},
                               {"role": "assistant", "content": "x"}]}], "line 3"),
    ([{"messages": [{"role": "user", "content": "hi", "colour": 1},
                    {"role": "assistant", "content": "x"}]}] + GOOD, "line 1"),
    (GOOD + [{"messages": [{"role": "user", "content": "hi"}]}], "line 13"),
    (GOOD + [{"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a", "weight": 2}]}], "line 13"),
    (GOOD + [{"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": ""}]}], "line 13"),
    (GOOD + ["[1, 2]"], "line 13"),
])
def test_bad_files_are_refused_naming_the_line(server, lines, where):
    before = _stored(server)
    with pytest.raises(openai.BadRequestError) as exc:
        server.client().files.create(file=("data.jsonl", io.BytesIO(jsonl(lines))),
                                     purpose="fine-tune")
    err = exc.value.body
    assert where in err["message"] and "data.jsonl" in err["message"], err
    assert err["param"] == "file" and err["code"]
    assert _stored(server) == before  # nothing stored, no temp file left


@pytest.mark.parametrize("name, body, purpose, match", [
    ("empty.jsonl", b"", "fine-tune", "at least 1 example"),
    ("blank.jsonl", b"\n\n  \n", "fine-tune", "at least 1 example"),
    ("data.csv", jsonl(GOOD), "fine-tune", "Must be .jsonl"),
    ("data.jsonl", jsonl(GOOD[:3]) + b"\xc3\x28 not utf-8\n", "fine-tune", "line 4"),
    ("data.jsonl", b"\xff\xfe{}\n", "fine-tune", "UTF-16"),
    ("data.jsonl", jsonl(GOOD), "assistants", "purpose"),
])
def test_other_bad_uploads(server, name, body, purpose, match):
    with pytest.raises(openai.BadRequestError, match=match):
        server.client().files.create(file=(name, io.BytesIO(body)), purpose=purpose)


def _raw_post(server, headers: dict, body_chunks: list[bytes]) -> int:
    """POST /v1/files with exact headers (http.client: no SDK re-framing)."""
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("POST", "/v1/files")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        for chunk in body_chunks:
            conn.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered early and closed: that is the point
    status = conn.getresponse().status
    conn.close()
    return status


def test_oversized_uploads_get_413_before_anything_is_stored(server):
    before = _stored(server)
    boundary = "XyZ"
    ctype = f"multipart/form-data; boundary={boundary}"
    # declared too large: refused from the headers alone, the body is never sent
    assert _raw_post(server, {"Content-Type": ctype, "Authorization": "Bearer test-key-a",
                              "Content-Length": str(10 * 1024**3)}, []) == 413
    # undeclared (chunked) body one byte over the limit: cut off while streaming
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.jsonl\"\r\n\r\n").encode()
    payload = head + b"x" * (MAX_UPLOAD + 1) + f"\r\n--{boundary}--\r\n".encode()
    chunks = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]
    framed = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]
    assert _raw_post(server, {"Content-Type": ctype, "Authorization": "Bearer test-key-a",
                              "Transfer-Encoding": "chunked"}, framed) == 413
    assert _stored(server) == before
    # and the server still answers the next good request
    assert server.client().files.create(file=("ok.jsonl", io.BytesIO(jsonl(GOOD))),
                                        purpose="fine-tune").id


def test_other_keys_files_answer_404(server):
    f = server.client().files.create(file=("a.jsonl", io.BytesIO(jsonl(GOOD))),
                                     purpose="fine-tune")
    other = server.client(KEY_B)
    for call in (lambda: other.files.retrieve(f.id), lambda: other.files.content(f.id),
                 lambda: other.files.delete(f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in other.files.list().data]
    assert server.client().files.retrieve(f.id).id == f.id  # still there for its owner
