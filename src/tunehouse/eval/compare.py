"""Fine-tuned vs base vs few-shot prompting on held-out data: ``evaluate(...) -> EvalReport``.

The base model is loaded once and answers twice (zero-shot, and with K training examples as
earlier turns); then the fine-tuned model (LoRA merged for speed) answers. Every candidate
also scores the reference answers by teacher forcing, and base and fine-tuned score a small
general-purpose chat set shipped with tunehouse, so forgetting shows as a loss change.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunehouse import models
from tunehouse.errors import InvalidRequest, ModelNotFound
from tunehouse.eval import generate as gen
from tunehouse.eval import scoring
from tunehouse.eval.examples import HeldoutExample, load_heldout, load_shots, with_shots
from tunehouse.eval.metrics import detect_kind
from tunehouse.eval.results import BASE, FEW_SHOT, FINE_TUNED, CandidateResult, EvalReport

GENERAL_HELDOUT = "general_heldout.jsonl"
RESAMPLES, SEED = 1000, 0
PRECISIONS = ("auto", "bf16", "fp32")
Message = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """Which models to load: the fine-tuned one, the base to compare with, the run dir."""

    tuned: models.ModelSource
    base: models.ModelSource
    run_dir: str | None


def general_heldout_path() -> Path:
    """The general-purpose chat set used for the forgetting check (ships with tunehouse)."""
    return Path(str(resources.files("tunehouse") / "resources" / GENERAL_HELDOUT))


def _recorded_base(path: Path) -> str | None:
    """``base_model`` from a training output's ``tunehouse.json`` (full fine-tunes too)."""
    meta = path / "tunehouse.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("base_model")
        except (ValueError, AttributeError):
            return None
    return None


def _run_dir(path: Path) -> str | None:
    """The training run directory ``path`` belongs to (itself, or a checkpoint's run)."""
    for cand in (path, path.parent.parent):
        if (cand / "metrics.csv").is_file() or (cand / "metrics.jsonl").is_file():
            return str(cand)
    return None


def plan(model: str, against: str | None) -> Plan:
    """Resolve ``--model`` and its base (``--against`` or the base the run recorded).

    Raises:
        ModelNotFound: either name is unknown, or the adapter's recorded base is.
        InvalidRequest: no base can be determined, or both name the same model.
    """
    tuned = models.resolve(model)
    path = Path(model).expanduser()
    base_name = against or tuned.adapter_of or (_recorded_base(path) if path.is_dir() else None)
    if not base_name:
        raise InvalidRequest(
            f"Cannot tell which base model '{model}' was fine-tuned from (no tunehouse.json "
            "naming it); pass --against BASE.", param="against")
    try:
        base = models.resolve(base_name)
    except ModelNotFound as err:
        where = "--against" if against else f"the base recorded in {model}"
        raise ModelNotFound(f"{where}: {err}") from None
    if Path(base.path).resolve() == Path(tuned.path).resolve():
        raise InvalidRequest(f"--model and --against name the same model ({base.path}); "
                             "compare a fine-tuned model with its base.", param="against")
    return Plan(tuned=tuned, base=base, run_dir=_run_dir(path) if path.is_dir() else None)


def _load(source: models.ModelSource, placement: tuple[str, Any]) -> tuple[Any, Any]:
    """Model (LoRA merged) and tokenizer; a shape mismatch becomes a one-line error."""
    try:
        tok = models.load_tokenizer(source)
        model = models.load_model(source, device=placement[0], dtype=placement[1],
                                  merge_adapter=True)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        text = str(err).strip()
        base = f" on its base '{source.adapter_of}'" if source.adapter_of else ""
        if "size mismatch" in text:
            why = " (was it trained on another model?): its weight shapes differ"
        else:
            why = ": " + (text.splitlines()[0][:200] if text else type(err).__name__)
        raise InvalidRequest(f"Cannot load '{source.name}'{base}{why}", param="model") from None
    return model, tok


def _check_args(few_shot: int, shots_from: str | None, metric: str,
                max_new_tokens: int | None, limit: int | None, batch_size: int) -> None:
    """Reject out-of-range options with one line naming the option."""
    if metric not in scoring.METRIC_CHOICES:
        raise InvalidRequest(f"--metric must be one of {', '.join(scoring.METRIC_CHOICES)}; "
                             f"got '{metric}'", param="metric")
    if few_shot < 0 or (few_shot and not shots_from):
        raise InvalidRequest("--few-shot K needs K >= 1 and --shots-from TRAIN.jsonl",
                             param="few_shot")
    for name, value in (("--max-new-tokens", max_new_tokens), ("--limit", limit),
                        ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise InvalidRequest(f"{name} must be >= 1; got {value}")


def _run_candidate(name: str, source: models.ModelSource, model: Any, tok: Any,
                   examples: list[HeldoutExample], prompts: list[list[dict]], *,
                   shots: int, max_new_tokens: int, batch_size: int) -> CandidateResult:
    """Generate answers and score the reference answers for one candidate."""
    tools = [e.tools for e in examples]
    start = time.perf_counter()
    gens = gen.generate(model, tok, prompts, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, tools=tools)
    generation_s = time.perf_counter() - start
    convs = [[*p, {"role": "assistant", "content": e.reference}]
             for p, e in zip(prompts, examples, strict=True)]
    losses = gen.reference_losses(model, tok, convs, batch_size=batch_size, tools=tools)
    n = len(gens)
    return CandidateResult(
        name=name, model=source.name, shots=shots, answers=[g.text for g in gens],
        scores={"loss": losses},
        prompt_tokens=sum(g.prompt_tokens for g in gens) / n,
        completion_tokens=sum(g.completion_tokens for g in gens) / n,
        latency_s=sum(g.latency_s for g in gens) / n,
        generation_s=generation_s)


def _general_losses(model: Any, tok: Any, batch_size: int) -> list[float]:
    """Reference loss on every example of the shipped general-purpose set."""
    general = load_heldout(general_heldout_path())
    return gen.reference_losses(model, tok, [e.full for e in general], batch_size=batch_size)


def _candidates(where: Plan, examples: list[HeldoutExample], shots: list[list[dict]], *,
                max_new_tokens: int | None, batch_size: int, forgetting: bool,
                precision: str, say: Message
                ) -> tuple[list[CandidateResult], list[list[float] | None], dict]:
    """Run the fine-tuned model, then the base (zero-shot and few-shot), one model at a time.

    The fine-tuned model goes first: a broken adapter fails before any time is spent.
    Returns the candidates, the general-set losses (base, fine-tuned) and settings used.
    """
    n, refs = len(examples), [e.reference for e in examples]
    placement = _placement(precision)
    say(f"loading fine-tuned model {where.tuned.name}")
    model, tok = _load(where.tuned, placement)
    max_new = max_new_tokens or gen.default_max_new_tokens(tok, refs)
    run = {"examples": examples, "max_new_tokens": max_new, "batch_size": batch_size}
    plain = [e.prompt for e in examples]
    say(f"fine-tuned: answering {n} prompts (up to {max_new} new tokens each)")
    cands = [_run_candidate(FINE_TUNED, where.tuned, model, tok, prompts=plain, shots=0, **run)]
    general_tuned = _general_losses(model, tok, batch_size) if forgetting else None
    del model
    gc.collect()  # never hold two models at once

    say(f"loading base model {where.base.name}")
    model, tok = _load(where.base, placement)
    say(f"base: answering {n} prompts")
    cands.append(_run_candidate(BASE, where.base, model, tok, prompts=plain, shots=0, **run))
    if shots:
        say(f"base with {len(shots)} examples in the prompt: answering {n} prompts")
        cands.append(_run_candidate(FEW_SHOT, where.base, model, tok,
                                    prompts=[with_shots(e, shots) for e in examples],
                                    shots=len(shots), **run))
    general_base = _general_losses(model, tok, batch_size) if forgetting else None
    del model
    gc.collect()
    used = {"max_new_tokens": max_new, "device": placement[0],
            "dtype": str(placement[1]).replace("torch.", "")}
    return cands, [general_base, general_tuned], used


def evaluate(model: str, data: str, *, against: str | None = None, few_shot: int = 0,
             shots_from: str | None = None, metric: str = "auto",
             max_new_tokens: int | None = None, limit: int | None = None,
             forgetting: bool = True, batch_size: int = 16, precision: str = "auto",
             progress: Message | None = None) -> EvalReport:
    """Compare the fine-tuned ``model`` with its base (and few-shot prompting) on ``data``.

    Each held-out chat's last assistant message is the reference; the candidates answer the
    messages before it. ``precision`` is ``auto`` (bf16 where the hardware has it natively),
    ``bf16`` or ``fp32``; ``progress`` receives one line per stage. See the module docstring
    for what is measured. A file of preference pairs (DPO's format) is evaluated by
    ``eval.preference.evaluate_preferences`` instead (few-shot and ``metric`` do not apply).

    Raises:
        InvalidFile: ``data``/``shots_from`` missing, empty, malformed or without assistant
            messages (file and line named).
        ModelNotFound / InvalidRequest: unknown models, no base, bad options, an adapter that
            does not fit its base.
    """
    from tunehouse.eval.preference import check_options, evaluate_preferences, is_preference_file

    _check_args(few_shot, shots_from, metric, max_new_tokens, limit, batch_size)
    if precision not in PRECISIONS:
        raise InvalidRequest(f"--precision must be one of {', '.join(PRECISIONS)}; "
                             f"got '{precision}'", param="precision")
    if is_preference_file(data):  # DPO's format: preference accuracy, base vs fine-tuned
        check_options(few_shot, metric)
        return evaluate_preferences(model, data, against=against, max_new_tokens=max_new_tokens,
                                    limit=limit, forgetting=forgetting, batch_size=batch_size,
                                    precision=precision, progress=progress)
    started = time.perf_counter()
    examples = load_heldout(data, limit)
    shots = load_shots(shots_from, few_shot, exclude=examples) if few_shot and shots_from else []
    where = plan(model, against)
    kind = detect_kind([e.reference for e in examples]) if metric == "auto" else metric
    cands, general, used = _candidates(where, examples, shots, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, forgetting=forgetting,
                                       precision=precision, say=progress or (lambda _msg: None))
    settings = {**used, "few_shot": few_shot, "shots_from": shots_from, "batch_size": batch_size,
                "metric": metric, "limit": limit, "bootstrap_resamples": RESAMPLES, "seed": SEED}
    timings = {"total_s": time.perf_counter() - started}
    return _assemble(model, where, data, kind, examples, cands, general, settings, timings)


def _assemble(model: str, where: Plan, data: str, kind: str, examples: list[HeldoutExample],
              cands: list[CandidateResult], general: list[list[float] | None],
              settings: dict, timings: dict[str, float]) -> EvalReport:
    """Score every candidate, compare fine-tuned with the others, attach forgetting."""
    refs = [e.reference for e in examples]
    labels = sorted({r.strip() for r in refs}) if kind == "label" else None
    names = scoring.metric_names(kind)
    for c in cands:
        c.scores = {**scoring.score(c.answers, refs, kind, labels), "loss": c.scores["loss"]}
        scoring.summarize(c, refs, kind, labels, resamples=RESAMPLES, seed=SEED)
    comparisons = []
    for other in cands[1:]:
        comparisons += scoring.compare(cands[0], other, [*names, "loss"], refs, labels,
                                       resamples=RESAMPLES, seed=SEED)
    forget = None
    if general[0] is not None and general[1] is not None:
        forget = scoring.forgetting(general[0], general[1], data=GENERAL_HELDOUT,
                                    resamples=RESAMPLES, seed=SEED)
    rows = [{"line": e.line, "prompt": e.last_user_text(), "reference": e.reference}
            for e in examples]
    primary = scoring.PRIMARY[kind]
    return EvalReport(model=model, base=where.base.name, data=str(data), kind=kind,
                      primary=primary, metrics=names, n_examples=len(examples),
                      candidates=cands, comparisons=comparisons, examples=rows, labels=labels,
                      forgetting=forget, run_dir=where.run_dir, settings=settings,
                      timings={**timings, **{f"{c.name}_generation_s": c.generation_s
                                             for c in cands}})


def _placement(precision: str = "auto") -> tuple[str, Any]:
    """``(device, dtype)`` for inference; ``auto`` picks bf16 where it is native.

    On a 2-core CPU with AVX512-BF16 (oneDNN bf16), 100 short examples on SmolLM2-135M took
    6.3 s to generate in bf16 vs 17.1 s in float32, and 3.9 s vs 8.0 s for the reference
    loss (benchmarks/eval_speed.py --dtypes); without native bf16, float32 is kept, because
    emulated bf16 is slower.
    """
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if precision != "auto":
        return device, torch.bfloat16 if precision == "bf16" else torch.float32
    # the same test as training and serving: oneDNN's own check also says yes on AVX-512 CPUs
    # without bf16 instructions, where bf16 is emulated
    return device, torch.bfloat16 if models.bf16_is_fast(device) else torch.float32
