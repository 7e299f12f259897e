"""Scoring candidates and comparing them, without any model (answers given literally)."""

from __future__ import annotations

import pytest

from tunehouse.eval import scoring
from tunehouse.eval.results import CandidateResult, EvalReport


def _cand(name: str, answers: list[str], refs: list[str], kind: str, losses: list[float],
          labels: list[str] | None = None) -> CandidateResult:
    c = CandidateResult(name=name, model="m", answers=answers)
    c.scores = {**scoring.score(answers, refs, kind, labels), "loss": losses}
    scoring.summarize(c, refs, kind, labels, resamples=200, seed=0)
    return c


def test_json_kind_scores_fields():
    refs = ['{"name": "Ada", "age": 36}', '{"name": "Alan", "age": 41}']
    tuned = _cand("fine-tuned", ['{"name": "Ada", "age": 36}', '{"name": "Alan", "age": 40}'],
                  refs, "json", [0.1, 0.2])
    base = _cand("base", ["Ada is 36", '{"name": "Alan"}'], refs, "json", [1.0, 1.2])
    assert scoring.metric_names("json") == ["exact_match", "normalized_match", "json_valid",
                                            "json_same_keys", "json_field_accuracy"]
    assert tuned.scores["json_field_accuracy"] == [1.0, 0.5]
    assert base.scores["json_valid"] == [0.0, 1.0] and base.scores["json_same_keys"] == [0.0, 0.0]
    assert tuned.summary["json_field_accuracy"] == pytest.approx(0.75)
    assert tuned.summary["perplexity"] == pytest.approx(2.718281828 ** 0.15, rel=1e-6)
    cmp = {c.metric: c for c in scoring.compare(tuned, base, [*scoring.metric_names("json"),
                                                               "loss"], refs, None,
                                                 resamples=200, seed=0)}
    assert cmp["json_field_accuracy"].diff == pytest.approx(0.5)
    # example 2: both get "name" right, neither "age" -> a tie
    assert (cmp["json_field_accuracy"].wins, cmp["json_field_accuracy"].ties) == (1, 1)
    loss = cmp["loss"]
    assert loss.diff == pytest.approx(-0.95) and not loss.higher_is_better
    assert loss.verdict == "better" and (loss.wins, loss.losses) == (2, 0)


def test_text_kind_and_report_round_trip():
    refs = ["the cat sat on the mat", "paris is the capital"]
    tuned = _cand("fine-tuned", ["the cat sat on a mat", "paris is the capital"], refs, "text",
                  [0.5, float("nan")])
    base = _cand("base", ["a dog", "london"], refs, "text", [2.0, 3.0])
    assert tuned.scores["rouge_l"][1] == 1.0 and base.scores["rouge_l"][1] == 0.0
    assert tuned.summary["loss"] == 0.5  # a missing (nan) loss is left out, not averaged in
    comps = scoring.compare(tuned, base, ["rouge_l", "loss"], refs, None, resamples=200, seed=0)
    report = EvalReport(model="m", base="b", data="d.jsonl", kind="text", primary="rouge_l",
                        metrics=scoring.metric_names("text"), n_examples=2,
                        candidates=[tuned, base], comparisons=comps,
                        examples=[{"line": 1, "prompt": "p", "reference": r} for r in refs])
    data = report.to_dict()
    assert data["candidates"][0]["scores"]["loss"] == [0.5, None]  # JSON has no NaN
    again = EvalReport.from_dict(data)
    assert again.summary_line() == report.summary_line()
    assert report.summary_line().startswith("fine-tuned ")
    assert "rouge_l" in report.format_text()


def test_summary_line_verdicts():
    def line(lo: float, hi: float) -> str:
        from tunehouse.eval.results import Comparison

        cmp = Comparison("fine-tuned", "base", "accuracy", 0.91, 0.42, 0.49, lo, hi, 40, 55, 5)
        return EvalReport(model="m", base="b", data="d", kind="label", primary="accuracy",
                          metrics=[], n_examples=100, candidates=[], comparisons=[cmp],
                          examples=[]).summary_line()

    assert line(0.40, 0.58) == ("fine-tuned beats base: accuracy 0.91 vs 0.42, +0.49 "
                                "(95% CI +0.40..+0.58)")
    assert line(-0.05, 0.58).startswith("fine-tuned is level with base")
