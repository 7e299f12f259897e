"""OpenAI's documented three-step example, unchanged but for ``base_url``, on the real embedded model.

1. ``client.files.create(file=open("mydata.jsonl", "rb"), purpose="fine-tune")``
2. ``client.fine_tuning.jobs.create(training_file=file.id, model=...)``
3. ``client.chat.completions.create(model=job.fine_tuned_model, messages=[...])``
"""

from __future__ import annotations

import json
import os

import pytest
from api_support import start_server, stop_server, wait_job

from th_support import REPO, embedded_home

pytestmark = pytest.mark.integration
DATA = REPO / "examples" / "ticket-triage"


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory):
    from tunehouse.models import DEFAULT_MODEL

    os.environ["TUNEHOUSE_HOME"] = embedded_home()
    from tunehouse import models

    converted = models.resolve(None).path  # converted once in the real home
    tmp = tmp_path_factory.mktemp("smol-serve")
    (tmp / "home" / "models").mkdir(parents=True)
    (tmp / "home" / "models" / DEFAULT_MODEL).symlink_to(converted)
    srv = start_server(tmp, None)
    yield srv
    stop_server(srv)


def test_openai_three_step_example(smol_server, tmp_path):
    client = smol_server.client()
    rows = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()][:48]
    path = tmp_path / "mydata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    file = client.files.create(file=open(path, "rb"), purpose="fine-tune")  # noqa: SIM115
    job = client.fine_tuning.jobs.create(training_file=file.id, model="smollm2-135m-instruct",
                                         hyperparameters={"n_epochs": 1, "batch_size": 8})
    job = wait_job(client, job.id, ("succeeded", "failed", "cancelled"), timeout=900)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:smollm2-135m-instruct:")

    heldout = json.loads((DATA / "heldout.jsonl").read_text().splitlines()[0])["messages"]
    completion = client.chat.completions.create(model=job.fine_tuned_model,
                                                messages=heldout[:-1], temperature=0,
                                                max_tokens=24)
    answer = completion.choices[0].message.content
    assert json.loads(answer).keys() == {"category", "priority"}, answer
