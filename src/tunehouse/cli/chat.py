"""``tunehouse chat`` (interactive, streamed) and ``tunehouse generate`` (one answer)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from tunehouse.cli import app

DEFAULT_MAX_TOKENS = 512

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Embedded model name, model directory, or training output/checkpoint dir.")]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System message.")]
MaxTokensOpt = Annotated[int | None, typer.Option(
    "--max-tokens", help=f"Most tokens per answer (default: {DEFAULT_MAX_TOKENS}, or what fits).")]


def _engine(model: str | None) -> tuple[Any, str]:
    """An engine serving ``model`` (base, full model or adapter dir) and the id to ask for."""
    from tunehouse.models import resolve

    resolve(model)  # a bad name fails here, before torch is imported
    from tunehouse.serve import Engine

    engine = Engine(model, default_max_tokens=DEFAULT_MAX_TOKENS)
    return engine, model if model in engine.model_ids() else engine.base_model_id


def _start(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", help="The user message.")],
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy; up to 2.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (0, 1].")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Answer one prompt with a model or a fine-tune (streamed unless --json)."""
    engine, model_id = _engine(model)
    messages = _start(system) + [{"role": "user", "content": prompt}]
    opts = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    try:
        if as_json:
            result = engine.chat(model_id, messages, **opts)
            choice = result.choices[0]
            typer.echo(json.dumps({
                "model": model_id, "text": choice.text, "finish_reason": choice.finish_reason,
                "usage": {"prompt_tokens": result.prompt_tokens,
                          "completion_tokens": result.completion_tokens,
                          "total_tokens": result.total_tokens}}))
        else:
            _print_stream(engine.stream(model_id, messages, **opts))
    finally:
        engine.close()


def _print_stream(stream: Any) -> str:
    """Write deltas to stdout as they come; return the whole text."""
    parts = []
    with stream:
        for delta in stream:
            sys.stdout.write(delta.text)
            sys.stdout.flush()
            parts.append(delta.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


@app.command()
def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy; up to 2.")] = 0.7,
) -> None:
    """Chat with a model or a fine-tune in the terminal; /reset clears, /exit or EOF quits."""
    from tunehouse.errors import TunehouseError

    engine, model_id = _engine(model)
    history = _start(system)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"Chatting with {model_id}. /reset clears the conversation, /exit quits.",
                   err=True)
    try:
        while True:
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line or line.strip() == "/exit":
                break
            text = line.rstrip("\n")
            if text.strip() == "/reset":
                history = _start(system)
                typer.echo("(conversation cleared)", err=True)
                continue
            if not text.strip():
                continue
            history.append({"role": "user", "content": text})
            try:
                answer = _print_stream(engine.stream(
                    model_id, history, max_tokens=max_tokens, temperature=temperature))
            except TunehouseError as err:  # e.g. the conversation outgrew the context
                history.pop()
                typer.echo(f"error: {err}", err=True)
                continue
            history.append({"role": "assistant", "content": answer})
    finally:
        engine.close()
