"""Per-example rules for chat (SFT) and preference (DPO) records, as OpenAI applies them.

The chat rules follow OpenAI's fine-tuning file validation (see docs/openai-api.md): a
non-empty ``messages`` list; roles system|user|assistant|tool (legacy function); only the
keys role, content, name, weight, tool_calls, function_call, tool_call_id; non-empty string
content except on an assistant message that carries a tool or function call; text parts (and
images, which text models cannot train on) only in user messages; at least one assistant
message; ``weight`` 0 or 1 on assistant messages only.

On top of OpenAI's rules, every string is checked for text a tokenizer cannot take (lone
surrogates, NUL characters) and for the model's special tokens: an ``<|im_end|>`` inside a
message would be encoded as a real end-of-turn, silently changing what the model learns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tunehouse.data.formats import Issue, Severity, _json_type

ROLES = ("system", "user", "assistant", "tool", "function")
ROLES_SHOWN = "system, user, assistant, tool"  # "function" is legacy: accepted, not advertised
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id")
CHAT_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
# Checked when no tokenizer is given: the turn markers of the common chat templates.
DEFAULT_SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|system|>",
    "<|user|>", "<|assistant|>", "<|end|>", "<start_of_turn>", "<end_of_turn>",
)
MAX_DEPTH = 100  # JSON nesting accepted in one example (tool schemas need ~10)
_BAD_CHARS = re.compile("[\ud800-\udfff\x00]")


@dataclass(frozen=True)
class SpecialTokens:
    """Token strings that must not appear in message text (errors) or should not (warnings)."""

    forbidden: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS
    added: tuple[str, ...] = ()  # other added tokens: encoded as one token, not as text

    @cached_property
    def pattern(self) -> re.Pattern[str] | None:
        """One regex matching any of the tokens, longest first."""
        tokens = sorted({*self.forbidden, *self.added}, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def special_tokens_of(tokenizer: Any | None) -> SpecialTokens:
    """The special tokens of a Hugging Face tokenizer (the defaults when it is None).

    Forbidden: the tokenizer's named special tokens (bos/eos/pad/unk/additional) and every
    added token that occurs in its chat template (turn markers). Other added special tokens
    (e.g. ``<filename>``) only earn a warning.
    """
    if tokenizer is None:
        return SpecialTokens()
    named = set(getattr(tokenizer, "all_special_tokens", []) or [])
    template = getattr(tokenizer, "chat_template", None)
    template = template if isinstance(template, str) else ""
    added = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
             if getattr(t, "special", False)}
    forbidden = {t for t in named | added if t and (t in named or t in template)}
    return SpecialTokens(forbidden=tuple(sorted(forbidden)),
                         added=tuple(sorted(t for t in added - forbidden if t)))


@dataclass
class _Check:
    """The issues found in one example, with the line they belong to."""

    line: int
    specials: SpecialTokens
    issues: list[Issue] = field(default_factory=list)

    def add(self, code: str, message: str, *, key: str | None = None, index: int | None = None,
            severity: Severity = "error") -> None:
        self.issues.append(Issue(self.line, index, key, code, message, severity))


def check_chat_example(obj: dict[str, Any], line: int, *,
                       specials: SpecialTokens | None = None) -> list[Issue]:
    """All rule violations of one chat example (an empty list when it is valid)."""
    check = _Check(line, specials or SpecialTokens())
    _check_unknown_top_keys(check, obj, CHAT_KEYS)
    _check_tools(check, obj, "")
    messages = _check_messages(check, obj.get("messages"), "messages")
    if messages is not None:
        roles = [m.get("role") for m in messages if isinstance(m, dict)]
        if "assistant" not in roles:
            check.add("missing_assistant_message", "messages has no assistant message: there is"
                      " nothing to train on (each example needs at least one message with role"
                      " 'assistant')", key="messages")
        elif all(m.get("weight", 1) == 0 for m in messages
                 if isinstance(m, dict) and m.get("role") == "assistant"):
            check.add("no_trained_messages", "every assistant message has weight 0: this example"
                      " trains nothing", key="messages", severity="warning")
    _check_strings(check, obj)
    return check.issues


def check_preference_example(obj: dict[str, Any], line: int, *,
                             specials: SpecialTokens | None = None) -> list[Issue]:
    """All rule violations of one preference (DPO) example."""
    check = _Check(line, specials or SpecialTokens())
    _check_unknown_top_keys(check, obj, frozenset(PREFERENCE_KEYS))
    for key in PREFERENCE_KEYS:
        if key not in obj:
            check.add("missing_key", f"missing required key '{key}' (a preference example has"
                      " input, preferred_output and non_preferred_output)", key=key)
    inp = obj.get("input")
    if "input" in obj and not isinstance(inp, dict):
        check.add("invalid_input", f"input must be an object with messages, got a"
                  f" {_json_type(inp)}", key="input")
    elif isinstance(inp, dict):
        _check_input(check, inp)
    outputs = [_check_output(check, obj, key) for key in PREFERENCE_KEYS[1:] if key in obj]
    if len(outputs) == 2 and None not in outputs and _same_answer(*outputs):
        check.add("identical_outputs", "preferred_output and non_preferred_output are identical:"
                  " the pair teaches nothing", key="non_preferred_output")
    _check_strings(check, obj)
    return check.issues


def _check_input(check: _Check, inp: dict[str, Any]) -> None:
    for key in inp:
        if key not in INPUT_KEYS:
            check.add("unknown_key", f"input has unknown key '{key}' (allowed: messages, tools,"
                      " parallel_tool_calls)", key=f"input.{key}")
    _check_tools(check, inp, "input.")
    messages = _check_messages(check, inp.get("messages"), "input.messages")
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") != "user":
        check.add("last_message_not_user", "input.messages should end with a user message (the"
                  " outputs answer it)", key="input.messages", index=len(messages) - 1,
                  severity="warning")


def _check_output(check: _Check, obj: dict[str, Any], key: str) -> dict | None:
    """The single assistant message of a preference output, or None after reporting why not."""
    out = obj[key]
    if not isinstance(out, list) or len(out) != 1:
        got = f"{len(out)} messages" if isinstance(out, list) else f"a {_json_type(out)}"
        check.add("invalid_output", f"{key} must be a list with exactly one assistant message,"
                  f" got {got}", key=key)
        return None
    message = out[0]
    _check_message(check, message, 0, key)
    if isinstance(message, dict) and message.get("role") not in (None, "assistant"):
        check.add("invalid_output", f"{key}[0].role must be 'assistant', got"
                  f" {_show(message.get('role'))}", key=f"{key}[0].role", index=0)
        return None
    return message if isinstance(message, dict) else None


def _same_answer(a: dict, b: dict) -> bool:
    def answer(m: dict) -> str:
        return json.dumps({k: v for k, v in m.items() if k != "weight"}, sort_keys=True)

    return answer(a) == answer(b)


def _check_unknown_top_keys(check: _Check, obj: dict, allowed: frozenset[str]) -> None:
    extra = [k for k in obj if k not in allowed]
    if extra:
        names = ", ".join(_show(k) for k in extra[:5])
        check.add("unknown_key", f"top-level key(s) {names} are not used and will be ignored",
                  key=extra[0], severity="warning")


def _check_tools(check: _Check, obj: dict, prefix: str) -> None:
    for key in ("tools", "functions"):
        value = obj.get(key)
        if key not in obj:
            continue
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            check.add("invalid_tools", f"{prefix}{key} must be a list of objects",
                      key=prefix + key)
            continue
        for i, tool in enumerate(value):
            spec = tool.get("function") if key == "tools" else tool
            if not isinstance(spec, dict) or not _nonempty_str(spec.get("name")):
                where = f"{prefix}{key}[{i}]" + (".function" if key == "tools" else "")
                check.add("invalid_tools", f"{where} needs a non-empty 'name'", key=where)
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        check.add("invalid_tools", f"{prefix}parallel_tool_calls must be true or false",
                  key=f"{prefix}parallel_tool_calls")


def _check_messages(check: _Check, messages: Any, key: str) -> list | None:
    """Check a messages list and each message in it; None when it is not a list."""
    if messages is None and key == "messages":
        check.add("missing_messages", "missing the 'messages' list", key=key)
        return None
    if not isinstance(messages, list):
        check.add("invalid_messages", f"{key} must be a list of messages, got a"
                  f" {_json_type(messages)}", key=key)
        return None
    if not messages:
        check.add("empty_messages", f"{key} is empty", key=key)
    for i, message in enumerate(messages):
        _check_message(check, message, i, key)
    return messages


def _check_message(check: _Check, message: Any, index: int, path: str) -> None:
    where = f"{path}[{index}]"
    if not isinstance(message, dict):
        check.add("invalid_message", f"{where} must be an object with role and content, got a"
                  f" {_json_type(message)}", key=where, index=index)
        return
    for key in message:
        if key not in MESSAGE_KEYS:
            check.add("unknown_key", f"{where} has unknown key {_show(key)} (allowed:"
                      f" {', '.join(MESSAGE_KEYS)})", key=f"{where}.{key}", index=index)
    role = message.get("role")
    if "role" not in message:
        check.add("missing_role", f"{where} has no role (one of {ROLES_SHOWN})",
                  key=f"{where}.role", index=index)
    elif role not in ROLES:
        check.add("invalid_role", f"{where}.role {_show(role)} is not one of {ROLES_SHOWN}",
                  key=f"{where}.role", index=index)
    _check_content(check, message, where, index)
    _check_weight(check, message, where, index)
    _check_calls(check, message, where, index)


def _check_content(check: _Check, message: dict, where: str, index: int) -> None:
    role = message.get("role")
    calls = role == "assistant" and bool(message.get("tool_calls") or message.get("function_call"))
    content, key = message.get("content"), f"{where}.content"
    if content is None:
        if not calls:
            state = "is missing" if "content" not in message else "is null"
            check.add("missing_content", f"{key} {state} (only an assistant message with"
                      " tool_calls or function_call may have no content)", key=key, index=index)
    elif isinstance(content, str):
        if not content.strip() and not (calls and content == ""):
            check.add("empty_content", f"{key} is empty", key=key, index=index)
    elif isinstance(content, list) and role == "user":
        _check_parts(check, content, key, index)
    elif isinstance(content, list):
        check.add("invalid_content", f"{key} is a list of parts, which only user messages may"
                  " have; use a string", key=key, index=index)
    else:
        check.add("invalid_content", f"{key} must be a string, got a {_json_type(content)}",
                  key=key, index=index)


def _check_parts(check: _Check, parts: list, key: str, index: int) -> None:
    if not parts:
        check.add("empty_content", f"{key} is an empty list", key=key, index=index)
    for j, part in enumerate(parts):
        where = f"{key}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not _nonempty_str(part.get("text")):
                check.add("empty_content", f"{where}.text must be a non-empty string",
                          key=f"{where}.text", index=index)
        elif kind == "image_url":
            check.add("unsupported_image", f"{where} is an image; tunehouse trains text-only"
                      " models, so images are not supported", key=where, index=index)
        else:
            check.add("invalid_content_part", f"{where} must be an object with type 'text' or"
                      " 'image_url'", key=where, index=index)


def _check_weight(check: _Check, message: dict, where: str, index: int) -> None:
    if "weight" not in message:
        return
    weight, key = message["weight"], f"{where}.weight"
    if message.get("role") != "assistant":
        check.add("invalid_weight", f"{key} is only allowed on assistant messages", key=key,
                  index=index)
    elif isinstance(weight, bool) or weight not in (0, 1):
        check.add("invalid_weight", f"{key} must be 0 or 1, got {_show(weight)}", key=key,
                  index=index)


def _check_calls(check: _Check, message: dict, where: str, index: int) -> None:
    calls = message.get("tool_calls")
    if "tool_calls" in message:
        if message.get("role") != "assistant":
            check.add("invalid_tool_calls", f"{where}.tool_calls is only allowed on assistant"
                      " messages", key=f"{where}.tool_calls", index=index)
        elif not isinstance(calls, list) or not calls:
            check.add("invalid_tool_calls", f"{where}.tool_calls must be a non-empty list",
                      key=f"{where}.tool_calls", index=index)
        else:
            for j, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                _check_function(check, fn, f"{where}.tool_calls[{j}].function", index)
    if "function_call" in message:
        _check_function(check, message["function_call"], f"{where}.function_call", index)
    for key in ("name", "tool_call_id"):
        if key in message and not _nonempty_str(message[key]):
            check.add(f"invalid_{key}", f"{where}.{key} must be a non-empty string",
                      key=f"{where}.{key}", index=index)


def _check_function(check: _Check, fn: Any, where: str, index: int) -> None:
    if not isinstance(fn, dict) or not _nonempty_str(fn.get("name")):
        check.add("invalid_tool_calls", f"{where} must be an object with a non-empty name and"
                  " arguments", key=where, index=index)
    elif not isinstance(fn.get("arguments"), str):
        check.add("invalid_tool_calls", f"{where}.arguments must be a JSON string",
                  key=f"{where}.arguments", index=index)
    else:
        try:
            json.loads(fn["arguments"])
        except (ValueError, RecursionError):
            check.add("invalid_tool_arguments", f"{where}.arguments is not valid JSON",
                      key=f"{where}.arguments", index=index, severity="warning")


def _check_strings(check: _Check, obj: dict) -> None:
    """Lone surrogates, NUL characters and special tokens anywhere in the example's text."""
    pattern = check.specials.pattern
    strings, depth = _strings(obj)
    if depth > MAX_DEPTH:
        check.add("too_deeply_nested", f"the example is nested {depth} levels deep (at most"
                  f" {MAX_DEPTH} are accepted)")
        return
    for path, text in strings:
        key, index = _path_key(path), _message_index(path)
        bad = _BAD_CHARS.search(text)
        if bad and bad.group() == "\x00":
            check.add("nul_character", f"{key} contains a NUL character (U+0000)", key=key,
                      index=index)
        elif bad:
            check.add("invalid_unicode", f"{key} contains a lone surrogate"
                      f" (\\u{ord(bad.group()):04x}), which is not valid Unicode text",
                      key=key, index=index)
            continue
        found = list(dict.fromkeys(pattern.findall(text))) if pattern else []
        forbidden = [t for t in found if t in check.specials.forbidden]
        added = [t for t in found if t not in check.specials.forbidden]
        if forbidden:
            check.add("special_token_in_content", f"{key} contains the special token(s)"
                      f" {', '.join(map(repr, forbidden))}, which the chat template uses to"
                      " mark turns (template injection); remove them", key=key, index=index)
        if added:
            check.add("added_token_in_content", f"{key} contains {', '.join(map(repr, added))},"
                      " encoded by the tokenizer as special tokens, not as text", key=key,
                      index=index, severity="warning")


def _strings(obj: Any) -> tuple[list[tuple[tuple, str]], int]:
    """Every string in a parsed JSON value with its path, and the nesting depth.

    Iterative, so no recursion limit applies however deep the value is.
    """
    found, stack, depth = [], [((), obj)], 0
    while stack:
        path, value = stack.pop()
        depth = max(depth, len(path))
        if isinstance(value, str):
            found.append((path, value))
        elif isinstance(value, dict):
            stack.extend(reversed([((*path, k), v) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([((*path, i), v) for i, v in enumerate(value)]))
    return found, depth


def _path_key(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message_index(path: tuple) -> int | None:
    for i, part in enumerate(path[:-1]):
        if part in ("messages", "preferred_output", "non_preferred_output") and isinstance(
                path[i + 1], int):
            return path[i + 1]
    return None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
