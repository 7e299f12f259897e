"""Pure metric functions, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from tunehouse.eval import metrics as m


def test_normalized_and_exact_match():
    assert m.normalize("  The Answer:  Paris! ") == "the answer paris"
    assert m.exact_match(" Paris\n", "Paris") == 1.0
    assert m.exact_match("paris", "Paris") == 0.0
    assert m.normalized_match("PARIS.", "Paris") == 1.0
    assert m.normalized_match("Paris, France", "Paris") == 0.0


def test_token_f1_and_rouge_l_literal_strings():
    # common tokens {cat, sat}: P = 2/3, R = 2/4 -> F1 = 4/7
    assert m.token_f1("the cat sat", "a cat sat down") == pytest.approx(4 / 7)
    # LCS "the cat on the mat" = 5 of 6 tokens each side -> F = 5/6
    assert m.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # order matters for ROUGE-L but not for token F1
    assert m.token_f1("b a", "a b") == 1.0
    assert m.rouge_l("b a", "a b") == pytest.approx(0.5)
    assert m.rouge_l("", "") == 1.0 and m.rouge_l("x", "") == 0.0
    assert m.rouge_l("completely different", "nothing shared") == 0.0


def test_json_metrics():
    ref = '{"a": 1, "b": 3, "d": 5}'
    pred = '{"a": 1, "b": 2, "c": 4}'
    assert m.json_valid(pred) == 1.0 and m.json_valid("{a: 1}") == 0.0
    assert m.json_field_accuracy(pred, ref) == pytest.approx(1 / 3)  # only "a" right
    assert m.json_same_keys(pred, ref) == 0.0
    assert m.json_same_keys('{"d": 0, "b": 0, "a": 0}', ref) == 1.0
    fenced = '```json\n{"a": 1, "b": 3, "d": 5}\n```'
    assert m.json_valid(fenced) == 1.0 and m.json_field_accuracy(fenced, ref) == 1.0
    assert m.json_field_accuracy("[1, 2]", "[1, 2]") == 1.0
    assert m.json_field_accuracy("[1, 2]", ref) == 0.0
    assert m.json_field_accuracy("not json", ref) == 0.0


def test_confusion_matrix_and_macro_f1_known_values():
    labels = ["bird", "cat", "dog"]
    refs = ["cat", "cat", "dog", "dog", "bird", "bird"]
    preds = ["cat", "dog", "dog", "Dog.", "cat", "moose"]  # "Dog." normalises to dog
    cm = m.confusion_matrix(preds, refs, labels)
    assert cm == [[0, 1, 0, 1],  # bird: once "cat", once outside the label set
                  [0, 1, 1, 0],  # cat
                  [0, 0, 2, 0]]  # dog
    # per-label F1: bird 0, cat 2*1/(2+2) = 0.5, dog 2*2/(3+2) = 0.8 -> mean 1.3/3
    assert m.macro_f1(cm) == pytest.approx(1.3 / 3)
    import numpy as np

    pred_idx = np.array([1, 2, 2, 2, 1, 3])
    ref_idx = np.array([1, 1, 2, 2, 0, 0])
    assert m.macro_f1_indices(pred_idx, ref_idx, 3) == pytest.approx(1.3 / 3)


def test_detect_kind():
    assert m.detect_kind(['{"a": 1}', "[1, 2]"]) == "json"
    assert m.detect_kind(["yes", "no", "yes", "no", "no"]) == "label"
    assert m.detect_kind(["yes", "no"]) == "text"  # each label needs to recur
    assert m.detect_kind(["The capital of France is Paris.", "Water boils at 100 C."]) == "text"
    assert m.detect_kind(['{"a": 1}', "plain"]) == "text"  # mixed: not json


def test_paired_bootstrap_known_bounds_with_fixed_seed():
    a = [1, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    b = [0, 1, 0, 0, 1, 0, 0, 1, 0, 0]
    diff, lo, hi = m.bootstrap_diff_ci(a, b, resamples=1000, seed=0)
    assert (diff, lo, hi) == pytest.approx((0.5, 0.2, 0.8))
    assert m.bootstrap_diff_ci(a, b, resamples=1000, seed=0) == (diff, lo, hi)  # deterministic
    assert m.bootstrap_mean_ci([1, 0, 1, 1], resamples=1000, seed=0) == pytest.approx((0.25, 1.0))
    same = m.bootstrap_diff_ci(a, a)
    assert same == (0.0, 0.0, 0.0)
    assert all(math.isnan(x) for x in m.bootstrap_diff_ci([], []))


def test_win_tie_loss_respects_direction():
    assert m.win_tie_loss([1, 1, 0, 0.5], [0, 1, 1, 0.5]) == (1, 2, 1)
    # for a loss, lower is better
    assert m.win_tie_loss([1.0, 2.0, 3.0], [2.0, 2.0, 1.0], higher_is_better=False) == (1, 1, 1)


def test_perplexity():
    assert m.perplexity(0.0) == 1.0
    assert m.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert m.perplexity(1e6) == math.inf
