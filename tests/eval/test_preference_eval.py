"""Held-out preference pairs: the metrics from hand-built log-probabilities, the shared scoring
function on the tiny model, and ``evaluate`` end to end on an adapter that really learnt a task."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunehouse.data.preference import encode_pair
from tunehouse.errors import InvalidFile, InvalidRequest
from tunehouse.eval import evaluate, load_report, scoring, write_report
from tunehouse.eval.preference import is_preference_file
from tunehouse.eval.results import BASE, FINE_TUNED, CandidateResult, EvalReport
from tunehouse.models.logprobs import IGNORE_INDEX, pad_right, score_pairs
from tunehouse.models.tiny import build_model

ANSWERS = {"red": ("warm", "cold"), "blue": ("cold", "warm")}  # (preferred, non-preferred)


def pair(i: int) -> dict:
    """The eval fixture's task as a preference: the right label over the wrong one."""
    word = ["red", "blue"][i % 2]
    good, bad = ANSWERS[word]
    return {"input": {"messages": [{"role": "user", "content": f"{i} {word}"}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ----- metrics from hand-built log-probabilities ----------------------------------------------
def test_pair_scores_literal_values():
    s = scoring.pair_scores(chosen=[-2.0, -5.0, -3.0, -4.0], rejected=[-3.0, -4.0, -3.0, -8.0],
                            chosen_tokens=[2, 10, 3, 2], rejected_tokens=[2, 2, 3, 4])
    assert s["preference_accuracy"] == [1.0, 0.0, 0.0, 1.0]  # pair 3 is a tie: not preferred
    # per token: -1 > -1.5, -0.5 > -2, -1 = -1 (tie), -2 = -2 (tie)
    assert s["normalized_preference_accuracy"] == [1.0, 1.0, 0.0, 0.0]
    assert s["margin"] == [1.0, -1.0, 0.0, 4.0]
    assert s["chosen_logp"] == [-2.0, -5.0, -3.0, -4.0]


def test_summary_comparison_and_summary_line_from_hand_built_scores():
    tuned = CandidateResult(FINE_TUNED, "run", answers=["a"] * 4, scores=scoring.pair_scores(
        [-1.0, -1.0, -1.0, -5.0], [-2.0, -3.0, -4.0, -4.0], [1] * 4, [1] * 4))
    base = CandidateResult(BASE, "base", answers=["b"] * 4, scores=scoring.pair_scores(
        [-3.0, -3.0, -3.0, -1.0], [-2.0, -2.0, -2.0, -3.0], [1] * 4, [1] * 4))
    for c in (tuned, base):
        scoring.summarize(c, [], "preference", None, resamples=200, seed=0)
    assert tuned.summary["preference_accuracy"] == 0.75 and base.summary["preference_accuracy"] == 0.25
    assert tuned.summary["margin"] == pytest.approx(1.25)  # (1 + 2 + 3 - 1) / 4
    assert base.summary["margin"] == pytest.approx(-0.25)  # (-1 - 1 - 1 + 2) / 4
    lo, hi = tuned.ci["preference_accuracy"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0
    cmps = scoring.compare(tuned, base, scoring.PREFERENCE_METRICS, [], None, resamples=200,
                           seed=0)
    acc = next(c for c in cmps if c.metric == "preference_accuracy")
    assert acc.diff == pytest.approx(0.5) and (acc.wins, acc.ties, acc.losses) == (3, 0, 1)
    assert acc.ci_low <= 0.5 <= acc.ci_high
    report = EvalReport(model="run", base="base", data="p.jsonl", kind="preference",
                        primary="preference_accuracy", metrics=list(scoring.PREFERENCE_METRICS),
                        n_examples=4, candidates=[tuned, base], comparisons=cmps,
                        examples=[{"line": i + 1, "prompt": "q", "reference": "a",
                                   "non_preferred": "b"} for i in range(4)])
    line = report.summary_line()
    assert line.startswith("fine-tuned prefers the preferred answer on 75% of 4 held-out "
                           "pairs (base 25%), +0.50 (95% CI ")
    assert EvalReport.from_dict(json.loads(json.dumps(report.to_dict()))).summary_line() == line
    text = report.format_text()
    assert "4 held-out preference pairs" in text and "perplexity" not in text


# ----- the shared scoring function on the tiny model ------------------------------------------
def test_score_pairs_equals_full_logits_whatever_the_batching(tiny_tokenizer):
    tok = tiny_tokenizer
    model = build_model(tok, seed=5).train()
    pairs = [encode_pair(tok, pair(i)) for i in range(5)]
    pairs[3].chosen_ids = pairs[3].chosen_ids * 4  # uneven lengths: padding must not count
    one_by_one = score_pairs(model, tok.pad_token_id, pairs, token_budget=1)
    together = score_pairs(model, tok.pad_token_id, pairs, token_budget=100_000)
    assert torch.allclose(torch.tensor(one_by_one), torch.tensor(together), atol=1e-4)
    for p, (chosen, rejected) in zip(pairs, one_by_one, strict=True):
        for (ids, labels), got in zip(p.sequences(), (chosen, rejected), strict=True):
            x, att, lab = pad_right([(ids, labels)], tok.pad_token_id)
            with torch.no_grad():
                logp = model(input_ids=x, attention_mask=att).logits[0, :-1].log_softmax(-1)
            want = sum(float(logp[t, lab[0, t + 1]]) for t in range(len(ids) - 1)
                       if lab[0, t + 1] != IGNORE_INDEX)
            assert got == pytest.approx(want, abs=1e-3)
    assert model.training  # score_pairs evaluates in eval mode, then restores the mode


def test_preference_files_are_detected(tmp_path, chat_files):
    prefs = write(tmp_path / "p.jsonl", [pair(i) for i in range(3)])
    assert is_preference_file(prefs)
    assert not is_preference_file(str(chat_files[0]))
    assert not is_preference_file(str(tmp_path / "missing.jsonl"))


# ----- bad input: one clear error before any model is loaded ----------------------------------
def test_bad_preference_file_and_options(tmp_path, eval_run):
    rows = [pair(i) for i in range(4)]
    rows[2]["non_preferred_output"] = []
    bad = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InvalidFile, match=r"bad.jsonl line 3: .*non_preferred_output"):
        evaluate(str(eval_run.run), bad)
    good = write(tmp_path / "good.jsonl", [pair(i) for i in range(4)])
    with pytest.raises(InvalidRequest, match="--few-shot applies to chat files"):
        evaluate(str(eval_run.run), good, few_shot=1, shots_from=str(eval_run.train))
    with pytest.raises(InvalidRequest, match="--metric label applies to chat files"):
        evaluate(str(eval_run.run), good, metric="label")


# ----- end to end: an adapter that learnt red -> warm, blue -> cold ---------------------------
@pytest.fixture(scope="module")
def pref_report(eval_run, tmp_path_factory):
    data = write(tmp_path_factory.mktemp("prefs") / "prefs.jsonl",
                 [pair(100 + i) for i in range(12)])
    report = evaluate(str(eval_run.run), data, batch_size=8)
    return report, write_report(report, tmp_path_factory.mktemp("pref-eval"))


def test_fine_tuned_prefers_the_right_label_and_base_does_not(pref_report):
    report, _ = pref_report
    assert report.kind == "preference" and report.n_examples == 12
    assert [c.name for c in report.candidates] == [FINE_TUNED, BASE]
    tuned, base = report.candidates
    # the base answers every prompt alike, so it prefers the right label on at most half
    assert tuned.summary["preference_accuracy"] == 1.0
    assert base.summary["preference_accuracy"] <= 0.5
    assert tuned.summary["margin"] > 0 > min(base.scores["margin"])
    cmp = report.comparison(FINE_TUNED, BASE, "preference_accuracy")
    assert cmp.verdict == "better" and cmp.wins >= 6 and cmp.losses == 0
    assert len(tuned.answers) == len(base.answers) == 12  # generated side by side
    assert sum(a.strip() in ("warm", "cold") for a in tuned.answers) >= 10
    assert math.isfinite(report.forgetting["base_loss"])
    assert report.summary_line().startswith(
        f"fine-tuned prefers the preferred answer on 100% of 12 held-out pairs (base "
        f"{base.summary['preference_accuracy']:.0%})")


def test_preference_report_files_and_regeneration(pref_report, tmp_path):
    report, html = pref_report
    out = html.parent
    for name in ("report.html", "report.json", "preference.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "metrics.png").exists()  # no answer metrics for preference pairs
    page = html.read_text()
    assert 'id="side-by-side"' in page and 'id="preference"' in page
    base_right = round(12 * report.candidates[1].summary["preference_accuracy"])
    assert page.count('class="right"') == 12 + base_right  # fine-tuned: every pair preferred
    assert "12 held-out preference pairs" in page and "non-preferred" in page
    again = load_report(out)
    assert again.kind == "preference" and again.summary_line() == report.summary_line()
    html2 = write_report(again, tmp_path)
    assert 'id="side-by-side"' in html2.read_text()
