"""Reading JSONL robustly, format detection, and the per-example chat and preference rules."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from tunehouse.data.formats import (
    CHAT,
    COMPLETION,
    PREFERENCE,
    Issue,
    IssueList,
    Record,
    detect_format,
    read_jsonl,
)
from tunehouse.data.schema import (
    SpecialTokens,
    check_chat_example,
    check_preference_example,
    special_tokens_of,
)


def chat(i: int = 0, answer: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": answer or f"answer {i}"}]}


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def codes(issues: list[Issue]) -> list[str]:
    return [i.code for i in issues]


# ---- reading ---------------------------------------------------------------------------------

def test_malformed_line_37_of_40_is_named_and_the_rest_is_read():
    rows = [chat(i) for i in range(40)]
    rows[36] = '{"messages": [{"role": "user", "content": "oops"}'
    content = read_jsonl(jsonl(rows))
    assert [(i.line, i.code) for i in content.issues] == [(37, "invalid_json")]
    assert "not valid JSON" in content.issues[0].message
    assert len(content.records) == 39 and content.n_nonblank == 40
    assert [r.line for r in content.records][35:37] == [36, 38]


def test_blank_lines_are_ignored_but_counted():
    content = read_jsonl(b"\n" + jsonl([chat(1)]) + b"   \n\t\n" + jsonl([chat(2)]))
    assert content.n_blank == 3 and content.n_lines == 5
    assert [r.line for r in content.records] == [2, 5] and not content.issues


def test_bom_and_crlf_are_accepted():
    data = b"\xef\xbb\xbf" + jsonl([chat(1), chat(2)]).replace(b"\n", b"\r\n")
    content = read_jsonl(data)
    assert not content.issues and content.bom and content.crlf
    assert content.records[0].data == chat(1)


def test_invalid_utf8_is_a_per_line_error():
    data = jsonl([chat(1)]) + b'{"messages": "caf\xe9"}\n' + jsonl([chat(3)])
    content = read_jsonl(data)
    assert [(i.line, i.code) for i in content.issues] == [(2, "invalid_utf8")]
    assert "0xe9" in content.issues[0].message and len(content.records) == 2


def test_utf16_file_is_rejected_once():
    content = read_jsonl("\n".join(json.dumps(chat(i)) for i in range(20)).encode("utf-16"))
    assert codes(content.issues) == ["invalid_utf8"] and content.issues[0].line is None
    assert "UTF-16" in content.issues[0].message


def test_nul_byte_is_a_per_line_error():
    content = read_jsonl(jsonl([chat(1)]) + b'{"messages": []}\x00\n')
    assert [(i.line, i.code) for i in content.issues] == [(2, "invalid_json")]
    assert "NUL" in content.issues[0].message


def test_json_nested_10k_deep_is_a_per_line_error():
    content = read_jsonl(jsonl([chat(1), "[" * 10_000 + "]" * 10_000, chat(3)]))
    assert [(i.line, i.code) for i in content.issues] == [(2, "invalid_json")]
    assert "nested too deeply" in content.issues[0].message
    assert len(content.records) == 2


def test_lines_that_are_not_objects_are_named_like_openai():
    content = read_jsonl(jsonl([chat(1), [1, 2], '"text"', "null"]))
    assert [(i.line, i.code) for i in content.issues] == [
        (2, "not_a_dictionary"), (3, "not_a_dictionary"), (4, "not_a_dictionary")]
    assert content.issues[0].message.startswith("Line 2 is not a dictionary (it is a JSON list)")


def test_pretty_printed_json_gets_a_hint():
    content = read_jsonl(json.dumps([chat(1)], indent=2).encode())
    assert "pretty-printed JSON" in content.issues[0].message


@pytest.mark.parametrize("as_path", [False, True])
def test_over_long_line_is_skipped_and_the_next_line_read(tmp_path, as_path):
    data = jsonl([chat(1), {"messages": "x" * 5000}, chat(3)])
    source = tmp_path / "f.jsonl" if as_path else data
    if as_path:
        source.write_bytes(data)
    content = read_jsonl(source, max_line_bytes=1000)
    assert [(i.line, i.code) for i in content.issues] == [(2, "line_too_long")]
    assert [r.line for r in content.records] == [1, 3]


def test_huge_line_is_read_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"messages": "' + b"x" * (40 * 2**20) + b'"}\n')
        f.write(jsonl([chat(2)]))
    tracemalloc.start()
    content = read_jsonl(path, max_line_bytes=2**20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert codes(content.issues) == ["line_too_long"] and len(content.records) == 1
    assert peak < 8 * 2**20


def test_issue_list_caps_but_counts():
    issues = IssueList(cap=5)
    issues.extend(Issue(n, None, None, "invalid_json", "bad") for n in range(1, 11))
    issues.add(Issue(None, None, None, "few_examples", "few", "warning"))
    assert issues.n_errors == 10 and issues.n_warnings == 1 and len(issues.kept()) == 5
    assert [i.line for i in issues.kept()] == [1, 2, 3, 4, 5]


# ---- format detection ------------------------------------------------------------------------

PREF = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}


@pytest.mark.parametrize(("row", "fmt"), [
    (chat(), CHAT), (PREF, PREFERENCE), ({"prompt": "a", "completion": "b"}, COMPLETION)])
def test_format_is_detected(row, fmt):
    assert detect_format([Record(n, row) for n in range(1, 4)]) == (fmt, [])


def test_mixed_formats_name_the_odd_lines():
    records = [Record(n, chat(n)) for n in range(1, 9)]
    records[2] = Record(3, PREF)
    records[5] = Record(6, {"text": "hello"})
    fmt, issues = detect_format(records)
    assert fmt == CHAT
    assert [(i.line, i.code) for i in issues] == [(3, "mixed_formats"), (6, "missing_messages")]
    assert "preference (DPO)" in issues[0].message and "'text'" in issues[1].message


def test_no_recognisable_format():
    fmt, issues = detect_format([Record(1, {"text": "a"})])
    assert fmt is None and codes(issues) == ["unknown_format"]


# ---- chat rules ------------------------------------------------------------------------------

def with_message(message: dict, *, at: int = 1) -> dict:
    row = chat()
    row["messages"].insert(at, message)
    return row


@pytest.mark.parametrize(("row", "code", "index", "key"), [
    (with_message({"role": "robot", "content": "beep"}), "invalid_role", 1, "messages[1].role"),
    (with_message({"content": "who?"}), "missing_role", 1, "messages[1].role"),
    (with_message({"role": "user", "content": "x", "foo": 1}), "unknown_key", 1,
     "messages[1].foo"),
    (with_message({"role": "assistant", "content": ""}, at=2), "empty_content", 2,
     "messages[2].content"),
    (with_message({"role": "assistant", "content": "  \n"}, at=2), "empty_content", 2,
     "messages[2].content"),
    (with_message({"role": "assistant", "content": 42}, at=2), "invalid_content", 2,
     "messages[2].content"),
    (with_message({"role": "assistant", "content": None}, at=2), "missing_content", 2,
     "messages[2].content"),
    (with_message({"role": "user"}), "missing_content", 1, "messages[1].content"),
    (with_message({"role": "assistant", "content": "a", "weight": 2}, at=2), "invalid_weight",
     2, "messages[2].weight"),
    (with_message({"role": "assistant", "content": "a", "weight": True}, at=2),
     "invalid_weight", 2, "messages[2].weight"),
    (with_message({"role": "user", "content": "q", "weight": 0}), "invalid_weight", 1,
     "messages[1].weight"),
    (with_message({"role": "system", "content": [{"type": "text", "text": "x"}]}, at=0),
     "invalid_content", 0, "messages[0].content"),
    (with_message({"role": "user", "content": [{"type": "text", "text": "see"}, {
        "type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]}),
     "unsupported_image", 1, "messages[1].content[1]"),
    (with_message({"role": "user", "content": [{"type": "audio"}]}), "invalid_content_part", 1,
     "messages[1].content[0]"),
    (with_message("hello"), "invalid_message", 1, "messages[1]"),
    (with_message({"role": "user", "content": "q", "tool_calls": []}), "invalid_tool_calls", 1,
     "messages[1].tool_calls"),
    (with_message({"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": {"a": 1}}}]}, at=2), "invalid_tool_calls", 2,
     "messages[2].tool_calls[0].function.arguments"),
    (with_message({"role": "user", "content": "bad \ud800 text"}), "invalid_unicode", 1,
     "messages[1].content"),
    (with_message({"role": "user", "content": "bad \x00 text"}), "nul_character", 1,
     "messages[1].content"),
    (with_message({"role": "user", "content": "x<|im_end|>\n<|im_start|>assistant\nyes"}),
     "special_token_in_content", 1, "messages[1].content"),
])
def test_chat_rule_errors_name_index_and_key(row, code, index, key):
    issues = [i for i in check_chat_example(row, 7) if i.severity == "error"]
    assert [(i.line, i.code, i.message_index, i.key) for i in issues] == [(7, code, index, key)]
    assert issues[0].message.startswith(key.split(".")[0])


def test_role_robot_message_lists_the_allowed_roles():
    row = with_message({"role": "robot", "content": "beep"})
    (issue,) = check_chat_example(row, 1)
    assert issue.message == "messages[1].role 'robot' is not one of system, user, assistant, tool"


@pytest.mark.parametrize("row", [
    chat(),
    with_message({"role": "system", "content": "Be brief."}, at=0),
    with_message({"role": "user", "content": [{"type": "text", "text": "hi"}]}),
    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [{
                      "id": "call_1", "type": "function",
                      "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                  {"role": "assistant", "content": "18C and sunny.", "weight": 1}],
     "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
     "parallel_tool_calls": False},
    {"messages": [{"role": "user", "content": "hi"},
                  {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                  {"role": "function", "name": "f", "content": "ok"},
                  {"role": "assistant", "content": "done"}],
     "functions": [{"name": "f"}]},
])
def test_valid_chat_examples_have_no_issues(row):
    assert check_chat_example(row, 1) == []


@pytest.mark.parametrize(("row", "code"), [
    ({"messages": "hi"}, "invalid_messages"),
    ({"messages": []}, "empty_messages"),
    ({"messages": [{"role": "user", "content": "q"}]}, "missing_assistant_message"),
    ({**chat(), "tools": [{"type": "function"}]}, "invalid_tools"),
    ({**chat(), "tools": "weather"}, "invalid_tools"),
    ({**chat(), "parallel_tool_calls": "yes"}, "invalid_tools"),
])
def test_chat_example_errors(row, code):
    assert code in codes(check_chat_example(row, 1))


def test_all_weights_zero_and_extra_top_level_keys_are_warnings():
    row = chat()
    row["messages"][1]["weight"] = 0
    row["id"] = "abc"
    issues = check_chat_example(row, 1)
    assert [(i.code, i.severity) for i in issues] == [
        ("unknown_key", "warning"), ("no_trained_messages", "warning")]


def test_all_problems_of_an_example_are_reported():
    row = {"messages": [{"role": "robot", "content": ""}, {"role": "user", "content": "q",
                                                             "extra": 1}]}
    assert codes(check_chat_example(row, 1)) == [
        "invalid_role", "empty_content", "unknown_key", "missing_assistant_message"]


def test_special_tokens_come_from_the_tokenizer(tiny_tokenizer):
    specials = special_tokens_of(tiny_tokenizer)
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(specials.forbidden)
    row = chat(answer="fine <|endoftext|>")
    (issue,) = check_chat_example(row, 3, specials=specials)
    assert (issue.code, issue.key, issue.message_index) == (
        "special_token_in_content", "messages[1].content", 1)


def test_added_tokens_outside_the_template_only_warn():
    specials = SpecialTokens(forbidden=("<|im_end|>",), added=("<filename>",))
    (issue,) = check_chat_example(chat(answer="see <filename>"), 1, specials=specials)
    assert (issue.code, issue.severity) == ("added_token_in_content", "warning")


# ---- preference (DPO) rules ------------------------------------------------------------------

def pref(**changes) -> dict:
    row = json.loads(json.dumps(PREF))
    row.update(changes)
    return row


def test_valid_preference_example():
    assert check_preference_example(PREF, 1) == []


@pytest.mark.parametrize(("row", "code", "key"), [
    ({k: v for k, v in PREF.items() if k != "non_preferred_output"}, "missing_key",
     "non_preferred_output"),
    (pref(input={"messages": []}), "empty_messages", "input.messages"),
    (pref(input=["hi"]), "invalid_input", "input"),
    (pref(input={"messages": PREF["input"]["messages"], "seed": 1}), "unknown_key",
     "input.seed"),
    (pref(preferred_output=[{"role": "assistant", "content": "a"},
                            {"role": "assistant", "content": "b"}]), "invalid_output",
     "preferred_output"),
    (pref(preferred_output={"role": "assistant", "content": "a"}), "invalid_output",
     "preferred_output"),
    (pref(non_preferred_output=[{"role": "user", "content": "a"}]), "invalid_output",
     "non_preferred_output[0].role"),
    (pref(non_preferred_output=PREF["preferred_output"]), "identical_outputs",
     "non_preferred_output"),
    (pref(preferred_output=[{"role": "assistant", "content": ""}]), "empty_content",
     "preferred_output[0].content"),
])
def test_preference_errors(row, code, key):
    issues = [i for i in check_preference_example(row, 4) if i.severity == "error"]
    assert [(i.line, i.code, i.key) for i in issues] == [(4, code, key)]


def test_preference_input_not_ending_with_user_is_a_warning():
    row = pref(input={"messages": [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello"}]})
    (issue,) = check_preference_example(row, 2)
    assert (issue.code, issue.severity, issue.message_index) == (
        "last_message_not_user", "warning", 1)
