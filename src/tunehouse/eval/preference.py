"""Fine-tuned vs base on held-out preference pairs (DPO's format): ``evaluate_preferences``.

A candidate *prefers* the preferred answer of a pair when it gives it the higher likelihood:
the summed log-probability of its completion tokens given the prompt, scored exactly as DPO
training scores it (``data.preference`` + ``models.logprobs``). Reported per candidate:

- preference accuracy: the fraction of pairs where log p(preferred) > log p(non-preferred)
  (ties count as not preferred);
- length-normalised preference accuracy: the same with the mean log-probability per token,
  which does not favour the shorter answer;
- the mean margin log p(preferred) - log p(non-preferred), in nats.

Fine-tuned minus base gets a paired-bootstrap 95% interval and win/tie/loss counts like the
chat metrics. Both candidates also answer every prompt (greedy), shown side by side in the
report, and score the shipped general chat set for the forgetting check.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from tunehouse import models
from tunehouse.data.formats import FORMAT_NAMES, PREFERENCE, detect_format, read_jsonl
from tunehouse.data.preference import ANSWER_KEYS, answer_text, encode_pairs
from tunehouse.errors import InvalidFile, InvalidRequest
from tunehouse.eval import generate as gen
from tunehouse.eval import scoring
from tunehouse.eval.examples import HeldoutExample
from tunehouse.eval.results import BASE, FINE_TUNED, CandidateResult, EvalReport
from tunehouse.models.logprobs import score_pairs

Message = Callable[[str], None]
KIND = "preference"


def is_preference_file(path: str) -> bool:
    """True when ``path`` is a JSONL file whose lines are mostly preference pairs.

    Unreadable or missing files answer False: the chat loader then reports them.
    """
    try:
        content = read_jsonl(path)
    except (OSError, ValueError):
        return False
    return bool(content.records) and detect_format(content.records)[0] == PREFERENCE


def load_pairs(path: str, limit: int | None = None) -> tuple[list[HeldoutExample], list[dict]]:
    """Held-out preference records (the first ``limit``), validated like ``tunehouse validate``.

    Returns each pair's prompt with its preferred answer as reference (for generation and the
    report) and the raw records (for encoding with each candidate's tokenizer).

    Raises:
        InvalidFile: the file has errors (the first is named with its line) or is not a
            preference file.
    """
    from tunehouse.data.validate import validate_file

    report = validate_file(path, min_examples=1)
    if report.format not in (None, PREFERENCE):
        raise InvalidFile(f"{path}: a {FORMAT_NAMES[report.format]} file, not preference pairs",
                          param="data")
    report.raise_if_invalid()
    records = report.examples[:limit] if limit else report.examples
    examples = []
    for rec in records:
        inp = rec.data["input"]
        prompt = [{k: v for k, v in m.items() if k != "weight"} for m in inp["messages"]]
        examples.append(HeldoutExample(line=rec.line, prompt=prompt, tools=inp.get("tools"),
                                       reference=answer_text(rec.data, ANSWER_KEYS[0])))
    return examples, [rec.data for rec in records]


def _score_candidate(name: str, source: models.ModelSource, model: Any, tok: Any,
                     examples: list[HeldoutExample], records: list[dict], *,
                     max_new_tokens: int, batch_size: int) -> CandidateResult:
    """Score every pair's two answers and generate an answer to every prompt."""
    pairs = encode_pairs(records, tok, models.context_length(model))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    device = next(model.parameters()).device
    logps = score_pairs(model, pad_id, pairs, device=device)
    scores = scoring.pair_scores([c for c, _ in logps], [r for _, r in logps],
                                 [len(p.chosen_ids) for p in pairs],
                                 [len(p.rejected_ids) for p in pairs])
    start = time.perf_counter()
    gens = gen.generate(model, tok, [e.prompt for e in examples], max_new_tokens=max_new_tokens,
                        batch_size=batch_size, tools=[e.tools for e in examples])
    n = len(gens)
    return CandidateResult(
        name=name, model=source.name, answers=[g.text for g in gens], scores=scores,
        prompt_tokens=sum(g.prompt_tokens for g in gens) / n,
        completion_tokens=sum(g.completion_tokens for g in gens) / n,
        latency_s=sum(g.latency_s for g in gens) / n,
        generation_s=time.perf_counter() - start)


def _candidates(where: Any, examples: list[HeldoutExample], records: list[dict], *,
                max_new_tokens: int | None, batch_size: int, forgetting: bool, precision: str,
                say: Message) -> tuple[list[CandidateResult], list[list[float] | None], dict]:
    """The fine-tuned model, then the base, one model in memory at a time."""
    from tunehouse.eval.compare import _general_losses, _load, _placement

    placement = _placement(precision)
    cands, general = [], []
    max_new = max_new_tokens
    for name, source in ((FINE_TUNED, where.tuned), (BASE, where.base)):
        say(f"loading {name} model {source.name}")
        model, tok = _load(source, placement)
        if max_new is None:
            answers = [answer_text(r, k) for r in records for k in ANSWER_KEYS]
            max_new = gen.default_max_new_tokens(tok, answers)
        say(f"{name}: scoring {len(records)} preference pairs, answering their prompts "
            f"(up to {max_new} new tokens each)")
        cands.append(_score_candidate(name, source, model, tok, examples, records,
                                      max_new_tokens=max_new, batch_size=batch_size))
        general.append(_general_losses(model, tok, batch_size) if forgetting else None)
        del model
        gc.collect()
    used = {"max_new_tokens": max_new, "device": placement[0],
            "dtype": str(placement[1]).replace("torch.", "")}
    return cands, [general[1], general[0]], used


def evaluate_preferences(model: str, data: str, *, against: str | None = None,
                         max_new_tokens: int | None = None, limit: int | None = None,
                         forgetting: bool = True, batch_size: int = 16, precision: str = "auto",
                         progress: Message | None = None) -> EvalReport:
    """Compare the fine-tuned ``model`` with its base on the preference pairs in ``data``.

    Raises:
        InvalidFile: ``data`` has errors (file and line named).
        ModelNotFound / InvalidRequest: unknown models, no base, an adapter that does not fit.
    """
    from tunehouse.eval.compare import GENERAL_HELDOUT, RESAMPLES, SEED, plan

    started = time.perf_counter()
    examples, records = load_pairs(data, limit)
    where = plan(model, against)
    cands, general, used = _candidates(where, examples, records, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, forgetting=forgetting,
                                       precision=precision,
                                       say=progress or (lambda _msg: None))
    names = scoring.PREFERENCE_METRICS
    for c in cands:
        scoring.summarize(c, [], KIND, None, resamples=RESAMPLES, seed=SEED)
    comparisons = scoring.compare(cands[0], cands[1], names, [], None, resamples=RESAMPLES,
                                  seed=SEED)
    forget = None
    if general[0] is not None and general[1] is not None:
        forget = scoring.forgetting(general[0], general[1], data=GENERAL_HELDOUT,
                                    resamples=RESAMPLES, seed=SEED)
    rows = [{"line": e.line, "prompt": e.last_user_text(), "reference": e.reference,
             "non_preferred": answer_text(r, ANSWER_KEYS[1])}
            for e, r in zip(examples, records, strict=True)]
    settings = {**used, "batch_size": batch_size, "limit": limit, "precision": precision,
                "bootstrap_resamples": RESAMPLES, "seed": SEED}
    timings = {"total_s": time.perf_counter() - started,
               **{f"{c.name}_generation_s": c.generation_s for c in cands}}
    return EvalReport(model=model, base=where.base.name, data=str(data), kind=KIND,
                      primary=names[0], metrics=list(names), n_examples=len(examples),
                      candidates=cands, comparisons=comparisons, examples=rows,
                      forgetting=forget, run_dir=where.run_dir, settings=settings,
                      timings=timings)


def check_options(few_shot: int, metric: str) -> None:
    """Options that only make sense for chat files are refused for preference files."""
    if few_shot:
        raise InvalidRequest("--few-shot applies to chat files; a preference file compares "
                             "the fine-tuned model with its base only", param="few_shot")
    if metric != "auto":
        raise InvalidRequest(f"--metric {metric} applies to chat files; preference pairs are "
                             "scored by preference accuracy", param="metric")
