"""Pure metric functions for comparing generated answers with references (no torch).

Every per-example metric returns a float in [0, 1] (1 = right), so candidates can be compared
example by example: a paired bootstrap over examples gives a confidence interval for the
difference of two candidates' means, and win/tie/loss counts say how often one was better.

>>> normalize("  The Answer:  Paris! ")
'the answer paris'
>>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 4)
0.8333
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

OTHER_LABEL = "(other)"  # column for predictions outside the reference label set
MAX_LABELS = 20
MAX_LABEL_WORDS = 4
MAX_LABEL_CHARS = 40
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


# ----------------------------------------------------------------------------- strings
def normalize(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: the 'normalised match' form."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the answer equals the reference (surrounding whitespace ignored)."""
    return float(pred.strip() == ref.strip())


def normalized_match(pred: str, ref: str) -> float:
    """1.0 when the answers are equal up to case, whitespace and punctuation."""
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style bag-of-tokens F1 over normalised tokens (both empty counts as 1.0)."""
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) dynamic programme)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: longest common subsequence of normalised tokens (Lin, 2004; beta = 1)."""
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- JSON
def parse_json(text: str) -> tuple[bool, Any]:
    """``(ok, value)`` for an answer that should be JSON; a ```json fence around it is allowed."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


def json_valid(pred: str) -> float:
    """1.0 when the answer parses as JSON."""
    return float(parse_json(pred)[0])


def json_same_keys(pred: str, ref: str) -> float:
    """1.0 when both are JSON objects with the same top-level keys (non-objects: same type)."""
    ok_p, p = parse_json(pred)
    ok_r, r = parse_json(ref)
    if not (ok_p and ok_r):
        return 0.0
    if isinstance(r, dict):
        return float(isinstance(p, dict) and set(p) == set(r))
    return float(type(p) is type(r))


def json_field_accuracy(pred: str, ref: str) -> float:
    """Fraction of the reference object's top-level fields the answer reproduces exactly.

    For a reference that is not an object, 1.0 when the parsed values are equal.
    """
    ok_p, p = parse_json(pred)
    ok_r, r = parse_json(ref)
    if not (ok_p and ok_r):
        return 0.0
    if not isinstance(r, dict):
        return float(p == r)
    if not r:
        return float(p == r)
    if not isinstance(p, dict):
        return 0.0
    return sum(1 for k, v in r.items() if k in p and p[k] == v) / len(r)


# ----------------------------------------------------------------------------- labels
def label_of(pred: str, labels: Sequence[str]) -> str:
    """The reference label an answer names (normalised comparison), else ``OTHER_LABEL``."""
    wanted = normalize(pred)
    for label in labels:
        if normalize(label) == wanted:
            return label
    return OTHER_LABEL


def confusion_matrix(preds: Sequence[str], refs: Sequence[str],
                     labels: Sequence[str]) -> list[list[int]]:
    """Counts ``m[i][j]`` of reference ``labels[i]`` answered as ``labels[j]``.

    The last column counts answers that name none of the labels (``OTHER_LABEL``).
    """
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for pred, ref in zip(preds, refs, strict=True):
        guess = label_of(pred, labels)
        matrix[index[ref]][index.get(guess, len(labels))] += 1
    return matrix


def macro_f1(matrix: Sequence[Sequence[int]]) -> float:
    """Unweighted mean over reference labels of per-label F1, from a confusion matrix.

    Labels never predicted and never present score 0 precision/recall (F1 = 0); answers
    outside the label set only lower the recall of their true label.
    """
    n = len(matrix)
    if n == 0:
        return 0.0
    scores = []
    for i in range(n):
        tp = matrix[i][i]
        predicted = sum(matrix[k][i] for k in range(n))
        actual = sum(matrix[i])
        denom = predicted + actual
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / n


def macro_f1_indices(pred: np.ndarray, ref: np.ndarray, n_labels: int) -> float:
    """Macro-F1 from label indices (``n_labels`` means 'other'); fast enough to bootstrap."""
    matrix = np.zeros((n_labels, n_labels + 1), dtype=np.int64)
    np.add.at(matrix, (ref, pred), 1)
    return macro_f1(matrix.tolist())


def is_label_set(refs: Sequence[str]) -> bool:
    """True when references look like labels: few distinct, short, and each used repeatedly."""
    if not refs:
        return False
    distinct = {r.strip() for r in refs}
    short = all(len(r) <= MAX_LABEL_CHARS and len(r.split()) <= MAX_LABEL_WORDS for r in distinct)
    return short and len(distinct) <= MAX_LABELS and len(refs) >= 2 * len(distinct)


def detect_kind(refs: Sequence[str]) -> str:
    """``json`` when every reference parses as a JSON object/array, ``label`` for a small label
    set, else ``text``."""
    if refs and all(isinstance(parse_json(r)[1], dict | list) for r in refs):
        return "json"
    if is_label_set(refs):
        return "label"
    return "text"


# ----------------------------------------------------------------------------- statistics
def perplexity(loss: float) -> float:
    """``exp(loss)`` for a mean token negative log-likelihood (inf when it overflows)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def paired_bootstrap(n: int, statistic: Callable[[np.ndarray], float], *,
                     resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` paired examples.

    The same resampled example indices are used for every candidate, so per-example
    correlation between candidates is kept (Koehn, 2004). Deterministic for a given seed.
    """
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    values = np.array([statistic(row) for row in draws], dtype=float)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float], **kwargs: Any) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-example values."""
    arr = np.asarray(values, dtype=float)
    return paired_bootstrap(len(arr), lambda idx: float(arr[idx].mean()), **kwargs)


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float],
                      **kwargs: Any) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: paired bootstrap interval of the mean difference."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) == 0:
        return math.nan, math.nan, math.nan
    lo, hi = paired_bootstrap(len(diff), lambda idx: float(diff[idx].mean()), **kwargs)
    return float(diff.mean()), lo, hi


def win_tie_loss(a: Sequence[float], b: Sequence[float], *,
                 higher_is_better: bool = True, tol: float = 1e-9) -> tuple[int, int, int]:
    """Per-example counts of ``a`` better than, equal to, and worse than ``b``."""
    wins = ties = losses = 0
    for x, y in zip(a, b, strict=True):
        d = (x - y) if higher_is_better else (y - x)
        if abs(d) <= tol:
            ties += 1
        elif d > 0:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses
