"""Bad input to ``evaluate``: one clear error naming the file, line, option or model."""

from __future__ import annotations

import json
import shutil

import pytest

from tunehouse.errors import InvalidFile, InvalidRequest, ModelNotFound
from tunehouse.eval import evaluate
from tunehouse.eval.examples import load_heldout, load_shots, with_shots


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"}]})


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InvalidFile, match=r"nope\.jsonl: no such file$"):
        load_heldout(tmp_path / "nope.jsonl")
    empty = _write(tmp_path / "empty.jsonl", ["", "   "])
    with pytest.raises(InvalidFile, match="the file is empty"):
        load_heldout(empty)


def test_line_exact_errors(tmp_path):
    bad_json = _write(tmp_path / "a.jsonl", [CHAT, "{not json"])
    with pytest.raises(InvalidFile, match=r"a\.jsonl, line 2: not valid JSON"):
        load_heldout(bad_json)
    no_assistant = _write(tmp_path / "b.jsonl", [
        CHAT, json.dumps({"messages": [{"role": "user", "content": "only a question"}]})])
    with pytest.raises(InvalidFile, match=r"b\.jsonl, line 2: no assistant message"):
        load_heldout(no_assistant)
    no_user = _write(tmp_path / "c.jsonl", [json.dumps({"messages": [
        {"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}]})])
    with pytest.raises(InvalidFile, match="line 1: no user message"):
        load_heldout(no_user)
    not_chat = _write(tmp_path / "d.jsonl", ['{"prompt": "x", "completion": "y"}'])
    with pytest.raises(InvalidFile, match="line 1: expected an object with a 'messages' list"):
        load_heldout(not_chat)


def test_reference_is_last_assistant_and_shots_are_turns(tmp_path):
    multi = _write(tmp_path / "m.jsonl", [json.dumps({"messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "weight": 1},
        {"role": "user", "content": "dangling"}]})])
    ex = load_heldout(multi)[0]
    assert ex.reference == "a2" and [m["content"] for m in ex.prompt] == ["sys", "q1", "a1", "q2"]
    assert ex.last_user_text() == "q2"
    shots = load_shots(_write(tmp_path / "t.jsonl", [CHAT]), 1)
    assert [m["content"] for m in with_shots(ex, shots)] == ["sys", "hi", "hello", "q1", "a1",
                                                               "q2"]
    with pytest.raises(InvalidFile, match="--few-shot 3 needs 3 examples, the file has 1"):
        load_shots(tmp_path / "t.jsonl", 3)


def test_bad_options(tmp_path):
    data = _write(tmp_path / "h.jsonl", [CHAT])
    with pytest.raises(InvalidRequest,
                       match="--metric must be one of auto, exact, json, label, text"):
        evaluate("x", str(data), metric="bleu")
    with pytest.raises(InvalidRequest, match="--few-shot K needs"):
        evaluate("x", str(data), few_shot=2)
    with pytest.raises(InvalidRequest, match="--limit must be >= 1"):
        evaluate("x", str(data), limit=0)


def test_unknown_and_mismatched_models(tmp_path, tiny_model_dir, eval_run):
    data = _write(tmp_path / "h.jsonl", [CHAT])
    with pytest.raises(ModelNotFound, match="Unknown model 'no-such-model'"):
        evaluate("no-such-model", str(data))
    with pytest.raises(InvalidRequest, match="pass --against BASE"):
        evaluate(str(tiny_model_dir), str(data))  # a plain model: which base?
    with pytest.raises(InvalidRequest, match="name the same model"):
        evaluate(str(tiny_model_dir), str(data), against=str(tiny_model_dir))
    with pytest.raises(ModelNotFound, match="--against: Unknown model 'missing-base'"):
        evaluate(str(eval_run.run), str(data), against="missing-base")
    orphan = shutil.copytree(eval_run.run, tmp_path / "orphan")
    (orphan / "tunehouse.json").write_text(json.dumps({"base_model": str(tmp_path / "gone")}))
    with pytest.raises(ModelNotFound, match="the base recorded in .*orphan"):
        evaluate(str(orphan), str(data))
    # an adapter trained on a 64-wide model, recorded as if trained on the 32-wide tiny model
    wrong = shutil.copytree(eval_run.run, tmp_path / "wrong")
    (wrong / "tunehouse.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    with pytest.raises(InvalidRequest, match=r"Cannot load .* on its base .*another "
                                             r"model\?\): its weight shapes differ$"):
        evaluate(str(wrong), str(data), forgetting=False)
