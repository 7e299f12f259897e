"""validate_file / validate_bytes / validate_records: whole-file rules, tokens, estimate, reports."""

from __future__ import annotations

import doctest
import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from tunehouse.data import report as report_module
from tunehouse.data import stats
from tunehouse.data.tokenize import encode_chat
from tunehouse.data.validate import (
    format_report,
    validate_bytes,
    validate_file,
    validate_records,
)
from tunehouse.errors import InvalidFile


def chat(i: int, answer: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": answer or f"answer {i}"}]}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def codes(report) -> list[str]:
    return [i.code for i in report.issues]


@pytest.fixture
def train(tmp_path) -> Path:
    return write(tmp_path / "train.jsonl", [chat(i) for i in range(60)])


# ---- example count ---------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "n"), [
    ([chat(i) for i in range(9)], 9), ([], 0), (["", "   ", ""], 0)])
def test_fewer_than_ten_examples_is_invalid_n_examples(tmp_path, rows, n):
    report = validate_file(write(tmp_path / "t.jsonl", rows))
    assert not report.ok and report.n_examples == n
    (issue,) = report.errors
    assert (issue.code, issue.line) == ("invalid_n_examples", None)
    assert issue.message == (f"Training file has {n} example(s), but must have at least 10"
                             " examples")
    with pytest.raises(InvalidFile) as err:
        report.raise_if_invalid()
    assert (err.value.code, err.value.param) == ("invalid_n_examples", "training_file")


def test_a_clean_file_is_ok_and_few_examples_only_warn(tmp_path, train):
    assert validate_file(train).ok and validate_file(train).issues == []
    small = validate_file(write(tmp_path / "s.jsonl", [chat(i) for i in range(12)]))
    assert small.ok and codes(small) == ["few_examples"]
    small.raise_if_invalid()  # warnings never raise


# ---- the one-line error and the full list ----------------------------------------------------

def test_raise_names_file_line_index_key_and_the_count_of_others(tmp_path):
    rows = [chat(i) for i in range(40)]
    rows[36] = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                             {"role": "robot", "content": "beep"},
                             {"role": "assistant", "content": "a"}]}
    rows[37] = "{not json"
    rows[38] = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                  "content": ""}]}
    rows[39] = {"messages": [{"role": "user", "content": "no answer"}]}
    report = validate_file(write(tmp_path / "train.jsonl", rows))
    assert report.n_errors == 4 and [i.line for i in report.errors] == [37, 38, 39, 40]
    with pytest.raises(InvalidFile) as err:
        report.raise_if_invalid()
    assert str(err.value) == ("train.jsonl line 37: messages[2].role 'robot' is not one of"
                              " system, user, assistant, tool (and 3 more problems)")
    assert err.value.code == "invalid_role" and err.value.param == "training_file"
    assert [i["line"] for i in err.value.issues if i["severity"] == "error"] == [37, 38, 39, 40]
    first = err.value.issues[0]
    assert (first["message_index"], first["key"]) == (2, "messages[2].role")


def test_every_issue_is_reported_up_to_a_cap_with_a_count(tmp_path):
    rows = [chat(i) for i in range(10)] + [{"messages": "x"}] * 300
    report = validate_file(write(tmp_path / "t.jsonl", rows))
    assert report.n_errors == 300 and len(report.issues) == 200
    assert report.n_omitted == 100 + report.n_warnings
    assert report.to_dict()["n_issues_omitted"] == report.n_omitted


def test_legacy_prompt_completion_is_reported_as_unsupported(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12)]
    report = validate_file(write(tmp_path / "t.jsonl", rows))
    assert report.format == "prompt_completion" and codes(report) == ["unsupported_format"]
    assert '{"messages"' in report.issues[0].message


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(InvalidFile) as err:
        validate_file(tmp_path / "nope.jsonl")
    assert err.value.code == "file_not_found" and "nope.jsonl" in str(err.value)
    with pytest.raises(InvalidFile, match="not a regular file"):
        validate_file(tmp_path)


def test_bytes_records_and_file_agree(train, tiny_tokenizer):
    from_file = validate_file(train, tokenizer=tiny_tokenizer).to_dict()
    from_bytes = validate_bytes(train.read_bytes(), name="train.jsonl",
                                tokenizer=tiny_tokenizer).to_dict()
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    from_records = validate_records(rows, name="train.jsonl", tokenizer=tiny_tokenizer).to_dict()
    assert from_file == from_bytes
    assert from_records["stats"]["tokens"] == from_file["stats"]["tokens"]


def test_validate_records_reports_non_objects():
    report = validate_records([chat(i) for i in range(10)] + ["text"])
    assert [(i.line, i.code) for i in report.errors] == [(11, "not_a_dictionary")]


# ---- duplicates, conflicts, overlap ----------------------------------------------------------

def test_duplicates_and_conflicting_answers_are_warnings_with_lines(tmp_path):
    rows = [chat(i) for i in range(12)]
    rows[5] = chat(1)  # exact duplicate of line 2
    rows[8] = chat(3, answer="something else")  # same prompt as line 4, other answer
    report = validate_file(write(tmp_path / "t.jsonl", rows))
    assert report.ok
    by_code = {i.code: i for i in report.warnings}
    assert by_code["duplicate_example"].line == 6
    assert "line 6 = line 2" in by_code["duplicate_example"].message
    assert "lines 4, 9" in by_code["conflicting_answers"].message
    assert report.stats["duplicates"] == [[6, 2]] and report.stats["conflicts"] == [[4, 9]]


def test_train_validation_overlap(tmp_path, train):
    valid = write(tmp_path / "valid.jsonl",
                  [chat(3), chat(1000), chat(7, answer="a different answer")])
    report = validate_file(train, validation_path=valid)
    assert report.ok and report.validation is not None
    warned = {i.code: i for i in report.validation.warnings}
    assert "validation line 1 = training line 4" in warned["train_validation_overlap"].message
    assert "validation line 3 ~ training line 8" in warned[
        "train_validation_prompt_overlap"].message
    assert report.validation.stats["overlap"] == {"exact": [[1, 4]], "prompt": [[3, 8]]}


def test_errors_in_the_validation_file_raise_with_its_param(tmp_path, train):
    valid = write(tmp_path / "valid.jsonl", [chat(500), "[1]"])
    report = validate_file(train, validation_path=valid)
    assert not report.ok and report.n_errors == 0
    with pytest.raises(InvalidFile) as err:
        report.raise_if_invalid()
    assert err.value.param == "validation_file"
    assert str(err.value).startswith("valid.jsonl line 2: Line 2 is not a dictionary")


def test_validation_file_in_another_format_is_an_error(tmp_path, train):
    pref = {"input": {"messages": [{"role": "user", "content": "hi"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    report = validate_file(train, validation_path=write(tmp_path / "v.jsonl", [pref]))
    assert "mixed_formats" in codes(report.validation)


# ---- tokens ----------------------------------------------------------------------------------

def test_token_counts_use_the_chat_template(train, tiny_tokenizer):
    report = validate_file(train, tokenizer=tiny_tokenizer)
    tokens = report.stats["tokens"]
    encoded = [encode_chat(tiny_tokenizer, chat(i)["messages"]) for i in range(60)]
    assert tokens["total"] == sum(e.full_length for e in encoded)
    assert tokens["trained_total"] == sum(e.n_trained for e in encoded) > 0
    assert tokens["per_example"]["max"] == max(e.full_length for e in encoded)
    hist = tokens["histogram"]
    assert sum(hist["counts"]) == 60 and len(hist["edges"]) == len(hist["counts"]) + 1


def test_truncation_at_a_small_max_length_lists_lines(tmp_path, tiny_tokenizer):
    rows = [chat(i) for i in range(12)]
    rows[2] = chat(2, answer="a long answer " * 20)
    rows[7] = chat(7, answer="another long answer " * 20)
    report = validate_file(write(tmp_path / "t.jsonl", rows), tokenizer=tiny_tokenizer,
                           max_length=120)
    assert report.ok
    (warning,) = [i for i in report.warnings if i.code == "example_too_long"]
    assert warning.line == 3 and "longer than 120 tokens" in warning.message
    assert "lines 3 (" in warning.message and ", 8 (" in warning.message
    assert report.stats["tokens"]["n_truncated"] == 2


def test_nothing_left_to_train_after_truncation_is_an_error(train, tiny_tokenizer):
    report = validate_file(train, tokenizer=tiny_tokenizer, max_length=16)
    assert "no_trained_tokens" in [i.code for i in report.errors]


def test_special_tokens_of_the_tokenizer_are_rejected(tmp_path, tiny_tokenizer):
    rows = [chat(i) for i in range(12)]
    rows[4] = chat(4, answer="sure<|im_end|>")
    report = validate_file(write(tmp_path / "t.jsonl", rows), tokenizer=tiny_tokenizer)
    assert [(i.line, i.code) for i in report.errors] == [(5, "special_token_in_content")]


def test_chat_template_failures_are_per_line_errors(tmp_path, tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m['content'] == 'boom' %}"
                         "{{ raise_exception('roles must alternate') }}{% endif %}"
                         "{{ m['content'] }}{% endfor %}")
    rows = [chat(i) for i in range(12)]
    rows[3] = {"messages": [{"role": "user", "content": "boom"},
                            {"role": "assistant", "content": "x"}]}
    report = validate_file(write(tmp_path / "t.jsonl", rows), tokenizer=tok)
    assert [(i.line, i.code) for i in report.errors] == [(4, "template_error")]
    assert "roles must alternate" in report.errors[0].message
    assert len(report.examples) == 11


def test_preference_file_tokens_and_duplicates(tmp_path, tiny_tokenizer):
    def pref(i: int) -> dict:
        return {"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
                "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}]}

    rows = [pref(i) for i in range(11)] + [pref(0)]
    report = validate_file(write(tmp_path / "p.jsonl", rows), tokenizer=tiny_tokenizer,
                           n_params=1_000_000)
    assert report.ok and report.format == "preference"
    assert report.stats["duplicates"] == [[12, 1]]
    tokens = report.stats["tokens"]
    assert tokens["processed_total"] > tokens["total"] > tokens["trained_total"] > 0
    assert report.stats["estimate"]["flops_per_token"] == 8_000_000


# ---- epochs and the estimate -----------------------------------------------------------------

@pytest.mark.parametrize(("n", "epochs"), [(1, 25), (4, 25), (10, 10), (33, 3), (34, 3),
                                           (8333, 3), (8334, 2), (30000, 1)])
def test_auto_epochs_follows_openai(n, epochs):
    assert stats.auto_epochs(n) == epochs


def test_estimate_uses_six_n_per_token(train, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("TUNEHOUSE_CPU_GFLOPS", "100")
    stats.cpu_flops.cache_clear()
    try:
        report = validate_file(train, tokenizer=tiny_tokenizer, n_params=10_000_000)
    finally:
        stats.cpu_flops.cache_clear()
    est = report.stats["estimate"]
    assert report.stats["epochs"] == 3 and report.stats["epochs_auto"]
    expected = 6 * 10_000_000 * report.stats["tokens"]["processed_total"] * 3 / (
        100e9 * stats.engine_efficiency())
    assert est["seconds"] == pytest.approx(expected, abs=0.1) and est["cpu_gflops"] == 100
    fixed = validate_file(train, tokenizer=tiny_tokenizer, n_params=10_000_000, epochs=1)
    assert fixed.stats["epochs"] == 1 and not fixed.stats["epochs_auto"]


def test_no_estimate_without_tokenizer_or_params(train):
    assert validate_file(train, n_params=10**6).stats["estimate"] is None


def test_cpu_probe_is_quick_and_cached():
    stats.cpu_flops.cache_clear()
    start = time.perf_counter()
    flops = stats.cpu_flops()
    assert time.perf_counter() - start < 0.3 and flops > 1e8
    start = time.perf_counter()
    assert stats.cpu_flops() == flops and time.perf_counter() - start < 0.01


def test_doctests_of_stats_and_report():
    for module in (stats, report_module):
        assert doctest.testmod(module).failed == 0


# ---- reports ---------------------------------------------------------------------------------

def test_report_to_dict_is_json(tmp_path, tiny_tokenizer):
    rows = [chat(i) for i in range(12)] + ["{bad", chat(0)]
    report = validate_file(write(tmp_path / "t.jsonl", rows), tokenizer=tiny_tokenizer,
                           n_params=10**6)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["n_errors"] == 1 and data["format"] == "chat"
    assert {"line", "message_index", "key", "code", "message", "severity"} == set(
        data["issues"][0])
    assert data["stats"]["tokens"]["histogram"]["counts"]


def test_format_report_plain_and_markup(tmp_path, tiny_tokenizer):
    rows = [chat(i) for i in range(11)]
    rows[4] = {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "x"},
                            {"role": "assistant", "content": "a"}]}
    report = validate_file(write(tmp_path / "train.jsonl", rows), tokenizer=tiny_tokenizer,
                           n_params=10**6)
    text = format_report(report)
    assert "line 5: messages[1].role 'robot' is not one of" in text
    assert "[invalid_role]" in text and "NOT USABLE: 1 error(s)" in text
    assert "tokens (model's chat template)" in text and "Training estimate" in text
    assert "\x1b[" not in text
    marked = format_report(report, markup=True)
    assert "[bold red]" in marked
    console = Console(file=io.StringIO(), soft_wrap=True, color_system=None)
    console.print(marked)
    assert console.file.getvalue().rstrip("\n") == text  # markup never eats user text
    ok = format_report(validate_file(write(tmp_path / "ok.jsonl", [chat(i) for i in range(60)])))
    assert ok.splitlines()[-1] == "OK: ready for training"


@pytest.mark.integration
def test_real_tokenizer_counts_and_special_tokens(tmp_path):
    from tunehouse import models

    tok = models.load_tokenizer(models.resolve(None))
    rows = [chat(i) for i in range(12)]
    rows[1] = chat(1, answer="done<|im_end|>")
    rows[2] = chat(2, answer="see <filename>")
    report = validate_file(write(tmp_path / "t.jsonl", rows), tokenizer=tok, max_length=8192)
    assert [(i.line, i.code) for i in report.errors] == [(2, "special_token_in_content")]
    assert (3, "added_token_in_content") in [(i.line, i.code) for i in report.warnings]
    assert report.stats["tokens"]["trained_total"] > 0


# ---- hostile input ---------------------------------------------------------------------------

def test_escaped_lone_surrogate_and_nul_in_json_are_per_line_errors(tmp_path, tiny_tokenizer):
    lines = [json.dumps(chat(i)) for i in range(12)]
    lines[2] = '{"messages": [{"role": "user", "content": "a \\ud800 b"}, {"role": "assistant",' \
               ' "content": "ok"}]}'
    lines[5] = '{"messages": [{"role": "user", "content": "a \\u0000 b"}, {"role": "assistant",' \
               ' "content": "ok"}]}'
    path = write(tmp_path / "t.jsonl", lines)
    report = validate_file(path, tokenizer=tiny_tokenizer)
    assert [(i.line, i.code, i.key) for i in report.errors] == [
        (3, "invalid_unicode", "messages[0].content"), (6, "nul_character", "messages[0].content")]
    assert len(report.examples) == 10
    json.dumps(report.to_dict())
    Console(file=io.StringIO()).print(format_report(report, markup=True))


def test_deep_but_parseable_json_is_rejected_without_crashing(tmp_path, tiny_tokenizer):
    row = chat(0)
    row["messages"][0]["name"] = json.loads("[" * 150 + "]" * 150)
    report = validate_file(write(tmp_path / "t.jsonl", [row] + [chat(i) for i in range(1, 11)]),
                           tokenizer=tiny_tokenizer)
    assert (1, "too_deeply_nested") in [(i.line, i.code) for i in report.errors]


def test_random_corruption_never_raises(tiny_tokenizer):
    import random

    rng = random.Random(1234)
    pref = {"input": {"messages": [{"role": "user", "content": "hi"}]},
            "preferred_output": [{"role": "assistant", "content": "a", "weight": 1}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    base = ("\n".join(json.dumps(r) for r in [chat(1), pref, chat(2)] * 4)).encode()
    alphabet = b'{}[]":,\\ \n\r\t\x00\xff\xef\xbb\xbfu0123456789abcdefnull<|im_end|>'
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 12)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[pos] = rng.choice(alphabet)
            else:
                del data[pos:pos + rng.randint(1, 8)]
        report = validate_bytes(bytes(data), tokenizer=tiny_tokenizer, max_length=64,
                                n_params=10**6)
        json.dumps(report.to_dict())
        format_report(report, markup=True)


def test_the_data_room_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys, tunehouse.data.validate; "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
