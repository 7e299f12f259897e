"""``tools`` / ``tool_choice`` on ``/v1/chat/completions``, with the real SDK.

A template that renders tools gets them (``tool_choice="none"``: the prompt grows by the tool
definitions); what tunehouse cannot honour gets a clear 400, as vLLM answers without a
tool-call parser: ``auto`` (OpenAI's default with tools), ``required``, a named function, and
tools for a template that would silently drop them.
"""

from __future__ import annotations

import openai
import pytest
from api_support import start_server, stop_server

from tunehouse.models.tiny import build_model, build_tokenizer

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these functions:\n"
    "{% for t in tools %}{{ t.function.name }}: {{ t.function.description }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% for call in message.tool_calls or [] %}<call>{{ call.function.name }}"
    "({{ call.function.arguments }})</call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city, in degrees Celsius.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
MSG = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """A server whose base model's chat template renders tools."""
    root = tmp_path_factory.mktemp("tools")
    tok = build_tokenizer(TOOLS_TEMPLATE)
    build_model(tok).save_pretrained(root / "tools-llama", safe_serialization=True)
    tok.save_pretrained(root / "tools-llama")
    srv = start_server(root, root / "tools-llama", workers=0)
    yield srv
    stop_server(srv)


def _usage(client, model, **kw):
    return client.chat.completions.create(model=model, max_tokens=2, temperature=0,
                                          **{"messages": MSG, **kw}).usage.prompt_tokens


def test_tools_are_rendered_by_a_template_that_supports_them(tools_server):
    client, model = tools_server.client(), tools_server.model
    plain = _usage(client, model)
    with_tools = _usage(client, model, tools=[WEATHER], tool_choice="none")
    # byte-level tokenizer: one token per byte of the rendered tool list
    assert with_tools - plain >= len("get_weather: " + WEATHER["function"]["description"])
    chunks = list(client.chat.completions.create(model=model, messages=MSG, tools=[WEATHER],
                                                 tool_choice="none", max_tokens=2, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_tool_calls_and_tool_results_in_the_conversation_reach_the_template(tools_server):
    client, model = tools_server.client(), tools_server.model
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    turns = [*MSG, {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_1", "content": "12"}]
    without_call = [*MSG, {"role": "assistant", "content": ""},
                    {"role": "tool", "tool_call_id": "call_1", "content": "12"}]
    a = _usage(client, model, messages=turns, tools=[WEATHER], tool_choice="none")
    b = _usage(client, model, messages=without_call, tools=[WEATHER], tool_choice="none")
    assert a - b == len('<call>get_weather({"city": "Oslo"})</call>')


@pytest.mark.parametrize("choice, needle", [
    (None, "'auto' (the default when tools are given)"),
    ("auto", "'auto'"),
    ("required", "'required'"),
    ({"type": "function", "function": {"name": "get_weather"}}, "function 'get_weather'"),
])
def test_tool_choices_that_need_tool_call_parsing_get_a_clear_400(tools_server, choice, needle):
    extra = {} if choice is None else {"tool_choice": choice}
    with pytest.raises(openai.BadRequestError) as exc:
        tools_server.client().chat.completions.create(
            model=tools_server.model, messages=MSG, tools=[WEATHER], max_tokens=2, **extra)
    err = exc.value.body
    assert (err["param"], err["code"]) == ("tool_choice", "tool_choice_not_supported")
    assert needle in err["message"] and "tool_choice='none'" in err["message"]


def test_tool_choice_without_tools_is_a_400(tools_server):
    with pytest.raises(openai.BadRequestError) as exc:
        tools_server.client().chat.completions.create(
            model=tools_server.model, messages=MSG, tool_choice="required", max_tokens=2)
    assert exc.value.body["param"] == "tool_choice"


def test_tools_for_a_template_without_tools_are_refused_not_dropped(server):
    """The shared server's ChatML template never mentions tools."""
    with pytest.raises(openai.BadRequestError) as exc:
        server.client().chat.completions.create(model=server.model, messages=MSG,
                                                tools=[WEATHER], tool_choice="none", max_tokens=2)
    assert (exc.value.body["param"], exc.value.body["code"]) == ("tools", "tools_not_supported")
    ok = server.client().chat.completions.create(model=server.model, messages=MSG, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
