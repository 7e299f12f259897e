"""Turn candidates' answers into per-example scores, summaries, intervals and comparisons.

Which metrics apply follows from the references (``metrics.detect_kind``) or the user's
``--metric``: exact and normalised match always; JSON validity/keys/fields for JSON answers;
accuracy and macro-F1 for labels; token F1 and ROUGE-L for free text; reference loss for all.
Preference pairs are scored from log-probabilities instead (``pair_scores``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tunehouse.eval import metrics as m
from tunehouse.eval.results import CandidateResult, Comparison

METRIC_CHOICES = ("auto", "exact", "json", "label", "text")
PER_EXAMPLE = {
    "exact_match": m.exact_match,
    "normalized_match": m.normalized_match,
    "json_valid": lambda p, r: m.json_valid(p),
    "json_same_keys": m.json_same_keys,
    "json_field_accuracy": m.json_field_accuracy,
    "token_f1": m.token_f1,
    "rouge_l": m.rouge_l,
}
KIND_METRICS = {
    "exact": [],
    "json": ["json_valid", "json_same_keys", "json_field_accuracy"],
    "label": ["accuracy", "macro_f1"],
    "text": ["token_f1", "rouge_l"],
}
PRIMARY = {"exact": "exact_match", "json": "json_field_accuracy", "label": "accuracy",
           "text": "rouge_l"}
LOWER_IS_BETTER = {"loss"}
# preference pairs (``eval.preference``): compared fine-tuned vs base, in display order
PREFERENCE_METRICS = ("preference_accuracy", "normalized_preference_accuracy", "margin")


def metric_names(kind: str) -> list[str]:
    """Answer metrics reported for a kind of reference, in display order (loss is separate)."""
    return ["exact_match", "normalized_match", *KIND_METRICS[kind]]


def label_indices(answers: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Index in ``labels`` named by each answer; ``len(labels)`` for none of them."""
    index = {label: i for i, label in enumerate(labels)}
    return [index.get(m.label_of(a, labels), len(labels)) for a in answers]


def score(answers: Sequence[str], refs: Sequence[str], kind: str,
          labels: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Per-example values (1 = right) of every decomposable metric for ``kind``."""
    out: dict[str, list[float]] = {}
    for name in metric_names(kind):
        fn = PER_EXAMPLE.get(name)
        if fn is not None:
            out[name] = [float(fn(a, r)) for a, r in zip(answers, refs, strict=True)]
    if kind == "label":
        labels = list(labels or sorted({r.strip() for r in refs}))
        ref_idx = label_indices(refs, labels)
        out["accuracy"] = [float(p == r) for p, r in
                           zip(label_indices(answers, labels), ref_idx, strict=True)]
    return out


def pair_scores(chosen: Sequence[float], rejected: Sequence[float],
                chosen_tokens: Sequence[int], rejected_tokens: Sequence[int]
                ) -> dict[str, list[float]]:
    """Per-pair values from the summed log-probabilities of the preferred (``chosen``) and
    non-preferred (``rejected``) answers and their token counts.

    ``preference_accuracy`` is 1.0 when the preferred answer has the higher log-probability
    (a tie is 0.0: the model does not prefer it); ``normalized_preference_accuracy`` compares
    log-probabilities per token instead, so a longer preferred answer is not penalised for its
    length; ``margin`` is the difference in nats; ``chosen_logp``/``rejected_logp`` are the
    inputs, kept for the report.

    >>> pair_scores([-2.0], [-3.0], [4], [2])["normalized_preference_accuracy"]
    [0.0]
    """
    rows = list(zip(chosen, rejected, chosen_tokens, rejected_tokens, strict=True))
    return {
        "preference_accuracy": [float(c > r) for c, r, _, _ in rows],
        "normalized_preference_accuracy": [float(c / max(1, nc) > r / max(1, nr))
                                           for c, r, nc, nr in rows],
        "margin": [c - r for c, r, _, _ in rows],
        "chosen_logp": [float(c) for c in chosen],
        "rejected_logp": [float(r) for r in rejected],
    }


def _macro_f1_stat(answers: Sequence[str], refs: Sequence[str], labels: Sequence[str]):
    """``(value, statistic(indices))`` for bootstrapping macro-F1 over examples."""
    pred = np.array(label_indices(answers, labels))
    ref = np.array(label_indices(refs, labels))

    def stat(idx: np.ndarray) -> float:
        return m.macro_f1_indices(pred[idx], ref[idx], len(labels))

    return stat(np.arange(len(ref))), stat


def summarize(cand: CandidateResult, refs: Sequence[str], kind: str,
              labels: Sequence[str] | None, *, resamples: int, seed: int) -> None:
    """Fill ``cand.summary`` (means, perplexity, macro-F1) and ``cand.ci`` (95% intervals)."""
    for name, values in cand.scores.items():
        finite = [v for v in values if not math.isnan(v)]
        cand.summary[name] = float(np.mean(finite)) if finite else math.nan
        cand.ci[name] = list(m.bootstrap_mean_ci(finite, resamples=resamples, seed=seed))
    if "loss" in cand.summary:
        cand.summary["perplexity"] = m.perplexity(cand.summary["loss"])
    if kind == "label" and labels:
        value, stat = _macro_f1_stat(cand.answers, refs, labels)
        cand.summary["macro_f1"] = value
        cand.ci["macro_f1"] = list(m.paired_bootstrap(len(refs), stat, resamples=resamples,
                                                      seed=seed))
        cand.confusion = m.confusion_matrix(cand.answers, refs, labels)


def _paired(a: list[float], b: list[float]) -> tuple[list[float], list[float]]:
    """Drop examples where either value is missing (nan)."""
    keep = [i for i in range(len(a)) if not (math.isnan(a[i]) or math.isnan(b[i]))]
    return [a[i] for i in keep], [b[i] for i in keep]


def compare(a: CandidateResult, b: CandidateResult, names: Sequence[str],
            refs: Sequence[str], labels: Sequence[str] | None, *,
            resamples: int, seed: int) -> list[Comparison]:
    """``a`` minus ``b`` for each metric: difference, paired-bootstrap 95% CI, win/tie/loss."""
    out = []
    for name in names:
        higher = name not in LOWER_IS_BETTER
        if name == "macro_f1" and labels:
            out.append(_compare_macro_f1(a, b, refs, labels, resamples=resamples, seed=seed))
            continue
        if name not in a.scores or name not in b.scores:
            continue
        xa, xb = _paired(a.scores[name], b.scores[name])
        diff, lo, hi = m.bootstrap_diff_ci(xa, xb, resamples=resamples, seed=seed)
        wins, ties, losses = m.win_tie_loss(xa, xb, higher_is_better=higher)
        va = float(np.mean(xa)) if xa else math.nan
        vb = float(np.mean(xb)) if xb else math.nan
        out.append(Comparison(a.name, b.name, name, va, vb, diff, lo, hi,
                              wins, ties, losses, higher))
    return out


def _compare_macro_f1(a: CandidateResult, b: CandidateResult, refs: Sequence[str],
                      labels: Sequence[str], *, resamples: int, seed: int) -> Comparison:
    """Macro-F1 is not a mean over examples: bootstrap the difference of recomputed values.

    Win/tie/loss counts use per-example label correctness.
    """
    va, sa = _macro_f1_stat(a.answers, refs, labels)
    vb, sb = _macro_f1_stat(b.answers, refs, labels)
    lo, hi = m.paired_bootstrap(len(refs), lambda i: sa(i) - sb(i), resamples=resamples,
                                seed=seed)
    wins, ties, losses = m.win_tie_loss(a.scores["accuracy"], b.scores["accuracy"])
    return Comparison(a.name, b.name, "macro_f1", va, vb, va - vb, lo, hi, wins, ties, losses)


def forgetting(base_losses: list[float], tuned_losses: list[float], *, data: str,
               resamples: int, seed: int) -> dict:
    """Loss on the general held-out set before and after fine-tuning, with a CI of the change."""
    xa, xb = _paired(tuned_losses, base_losses)
    diff, lo, hi = m.bootstrap_diff_ci(xa, xb, resamples=resamples, seed=seed)
    base, tuned = float(np.mean(xb)), float(np.mean(xa))
    return {
        "data": data, "n_examples": len(xa),
        "base_loss": base, "fine_tuned_loss": tuned,
        "base_perplexity": m.perplexity(base), "fine_tuned_perplexity": m.perplexity(tuned),
        "delta": diff, "ci_low": lo, "ci_high": hi,
    }
