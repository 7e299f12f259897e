"""The embedded SmolLM2 model: an untrained LoRA adapter must tie with its base, exactly.

PEFT initialises LoRA's B matrices to zero, so the merged adapter is the base model: any
difference in answers or reference loss would be a bug in loading, merging, padding or
stopping. The answers must also stop at ``<|im_end|>`` well before ``max_new_tokens``.
"""

from __future__ import annotations

import json
import math

import pytest

from th_support import embedded_home, write_jsonl

pytestmark = pytest.mark.integration

QA = [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4"),
      ("What colour is the sky on a clear day?", "Blue"), ("How many legs does a spider have?",
                                                          "Eight")]


def test_identity_adapter_ties_with_base(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEHOUSE_HOME", embedded_home())
    from peft import LoraConfig, get_peft_model

    from tunehouse import models
    from tunehouse.eval import evaluate

    src = models.resolve(None)
    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(models.load_model(src), LoraConfig(r=4, lora_alpha=8,
                                                                   target_modules="all-linear"))
    peft_model.save_pretrained(adapter)
    (adapter / "tunehouse.json").write_text(json.dumps({"base_model": src.name}))
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in QA]
    data = write_jsonl(tmp_path / "heldout.jsonl", rows)
    report = evaluate(str(adapter), str(data), max_new_tokens=20, forgetting=False)
    tuned, base = report.candidates
    assert report.base == models.DEFAULT_MODEL and report.kind == "text"  # 4 distinct answers: not a label set
    assert tuned.answers == base.answers
    assert "Paris" in tuned.answers[0]
    assert all(a.strip() and "<|im_end|>" not in a for a in tuned.answers)
    assert tuned.completion_tokens < 20  # stopped at end of turn, not at the limit
    for a, b in zip(tuned.scores["loss"], base.scores["loss"], strict=True):
        assert math.isfinite(a) and a == pytest.approx(b, abs=0.02)  # bf16 merge rounding
    cmp = report.comparison("fine-tuned", "base", "rouge_l")
    assert cmp.ties == 4 and cmp.verdict == "no clear difference"
