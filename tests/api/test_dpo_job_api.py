"""A DPO job through the real ``openai`` SDK against ``tunehouse serve`` on the tiny model: upload
preference files, ``method={"type": "dpo", ...}``, wait, and find held-out preference accuracy
of the fine-tuned model above the base's, in the events and in the evaluation result file."""

from __future__ import annotations

import io
import json
import re

from api_support import jsonl, wait_job

COLOURS = ["blue", "gold", "gray", "pink", "teal", "lime", "navy", "rose"]
EVENT = re.compile(r"^Evaluation: fine-tuned prefers the preferred answer on (\d+)% of (\d+) "
                   r"held-out pairs \(base (\d+)%\)")


def pref(i: int) -> dict:
    """Preferred "Sure, <colour>" over "Nope <colour>": one byte longer, so the untrained model
    (about -5.5 nats per byte) prefers the other answer on every pair; DPO has to learn it."""
    w = COLOURS[i % len(COLOURS)]
    return {"input": {"messages": [{"role": "user", "content": f"Colour {i}: {w}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Sure, {w}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Nope {w}"}]}


def test_dpo_job_raises_heldout_preference_accuracy(server):
    client = server.client()
    train = client.files.create(file=("prefs.jsonl", io.BytesIO(jsonl(
        [pref(i) for i in range(24)]))), purpose="fine-tune")
    valid = client.files.create(file=("prefs-valid.jsonl", io.BytesIO(jsonl(
        [pref(100 + i) for i in range(12)]))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=server.model, training_file=train.id, validation_file=valid.id, seed=7,
        suffix="dpo", method={"type": "dpo", "dpo": {"hyperparameters": {
            "beta": 0.1, "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error

    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data]
    found = [m for m in events if EVENT.match(m)]
    assert len(found) == 1, [m for m in events if "valuat" in m]
    tuned_pct, n, base_pct = map(int, EVENT.match(found[0]).groups())
    assert n == 12 and tuned_pct > base_pct, found[0]

    names = {client.files.retrieve(f).filename: f for f in job.result_files}
    assert set(names) == {"step_metrics.csv", "eval_report.html", "eval_report.json"}
    report = json.loads(client.files.content(names["eval_report.json"]).text)
    assert report["kind"] == "preference" and report["n_examples"] == 12
    acc = {c["name"]: c["summary"]["preference_accuracy"] for c in report["candidates"]}
    assert acc["fine-tuned"] > acc["base"]
    assert (round(100 * acc["fine-tuned"]), round(100 * acc["base"])) == (tuned_pct, base_pct)
    margins = {c["name"]: c["summary"]["margin"] for c in report["candidates"]}
    assert margins["fine-tuned"] > margins["base"]
    assert all(len(c["answers"]) == 12 for c in report["candidates"])  # generated side by side
    page = client.files.content(names["eval_report.html"]).text
    assert 'id="side-by-side"' in page and "preferred answer" in page
