"""End to end on a tiny model: the trained adapter beats its base and the report says so."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tunehouse.eval import load_report
from tunehouse.eval.results import BASE, FEW_SHOT, FINE_TUNED, EvalReport


def test_fine_tuned_beats_base_and_report_says_so(eval_report, eval_run):
    report, html = eval_report
    assert report.kind == "label" and report.labels == ["cold", "warm"]
    assert report.primary == "accuracy" and report.n_examples == 12
    assert [c.name for c in report.candidates] == [FINE_TUNED, BASE, FEW_SHOT]
    tuned, base, few = report.candidates
    assert tuned.summary["accuracy"] >= 0.9 > base.summary["accuracy"]
    assert tuned.summary["loss"] < base.summary["loss"]
    cmp = report.comparison(FINE_TUNED, BASE, "accuracy")
    assert cmp.verdict == "better" and cmp.ci_low > 0 and cmp.wins > cmp.losses
    assert cmp.wins + cmp.ties + cmp.losses == 12
    assert report.comparison(FINE_TUNED, FEW_SHOT, "macro_f1") is not None
    assert report.summary_line().startswith("fine-tuned beats base: accuracy ")
    assert few.shots == 2 and few.prompt_tokens > base.prompt_tokens
    assert sum(map(sum, tuned.confusion)) == 12
    # forgetting: both losses measured on the shipped general set
    f = report.forgetting
    assert f["n_examples"] >= 40 and math.isfinite(f["base_loss"])
    assert math.isclose(f["delta"], f["fine_tuned_loss"] - f["base_loss"], abs_tol=1e-9)
    assert f["ci_low"] <= f["delta"] <= f["ci_high"]
    assert report.run_dir == str(eval_run.run)
    text = report.format_text()
    assert "fine-tuned beats base" in text and "accuracy" in text


def test_report_files_and_json_round_trip(eval_report):
    report, html = eval_report
    out = html.parent
    for name in ("report.html", "report.json", "metrics.png", "loss.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    again = EvalReport.from_dict(data)
    assert again.summary_line() == report.summary_line()
    assert again.to_dict() == data
    assert load_report(out.parent).summary_line() == report.summary_line()
    page = html.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") == 3


def _cli(*args: str, env_home: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEHOUSE_HOME": env_home}
    return subprocess.run([sys.executable, "-c", "from tunehouse.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_report_regenerates_html(eval_report, eval_run, tmp_path):
    _, html = eval_report
    html.unlink()
    res = _cli("report", str(eval_run.run), env_home=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "fine-tuned beats base" in res.stdout
    assert html.is_file() and "training_curves" in html.read_text()


def test_cli_bad_inputs_are_one_line_errors(eval_run, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = _cli("eval", "--model", str(eval_run.run), "--data", str(empty), env_home=str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: {empty}: the file is empty; it needs at least one "
                                  "chat example")
    res = _cli("eval", "--model", "no-such-model", "--data", str(eval_run.heldout),
               env_home=str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: Unknown model 'no-such-model'")
    assert len(res.stderr.strip().splitlines()) == 1
