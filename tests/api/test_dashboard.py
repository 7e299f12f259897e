"""The web dashboard end to end in real headless Chromium (Debian's, driven by Playwright)
against the shared ``tunehouse serve`` (tiny model, API keys set, steps slowed a little).

The browser asks for the key, uploads a bad file (every problem listed, nothing stored) and a
good one (validation report with token statistics and histogram), creates a job from the
form, watches the loss curve get points, pauses, resumes and cancels it from its buttons, and
chats with the base model and the job's checkpoint side by side. Every request must stay on
the server (no CDN) and the console must stay free of errors. A screenshot of each page goes
to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from api_support import KEY_A, KEY_B, chat_example, jsonl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian chromium not installed (make install adds it)")


class Browser:
    """One page of one Chromium, with every console error and request it made."""

    def __init__(self, page, base: str):
        self.page, self.base = page, base
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        self.dialogs: list[str] = []
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def until(self, check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Poll ``check`` (page state read through Playwright; the page's CSP forbids eval)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            self.page.wait_for_timeout(250)
        self.shot("timeout")
        raise AssertionError(f"timed out waiting for {what}")

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def clean(self) -> None:
        """No console errors, and nothing fetched from anywhere but the server."""
        assert self.errors == [], self.errors
        foreign = [u for u in self.requests if not u.startswith((self.base, "blob:", "data:"))]
        assert foreign == [], foreign


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(60_000)
            yield Browser(page, server.url)
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def state() -> dict:
    """What one step of the flow hands the next (file id, job id, checkpoint model)."""
    return {}


def test_shell_and_assets_are_public_but_the_api_is_not(server):
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and 'data-auth="key"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        local = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert local and all(u.startswith(("/static/", "#")) for u in local), local
        for url in local:
            if url.startswith("/static/"):
                assert anon.get(url).status_code == 200, url
        chart = anon.get("/static/vendor/chartjs/chart.umd.min.js")
        assert chart.headers["content-type"].startswith("text/javascript")
        assert "Chart.js v4" in chart.text[:200]
        for bad in ("/static/../deps.py", "/static/%2e%2e/deps.py", "/static/js",
                    "/static/nothing.js"):
            assert anon.get(bad).status_code == 404, bad
        assert anon.get("/v1/files/file-x/validation").status_code == 401
        assert anon.post("/v1/files/validation", content=b"{}").status_code == 401


def test_without_keys_the_page_does_not_ask_for_one(tmp_path):
    from fastapi.testclient import TestClient

    from tunehouse.api.app import build_app
    from tunehouse.api.deps import ServerSettings
    from tunehouse.store import Database

    app = build_app(ServerSettings(base_model="x"), Database(f"sqlite:///{tmp_path}/open.db"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert 'data-auth="none"' in client.get("/").text
        assert client.head("/static/dashboard.css").status_code == 200


def test_validation_reports_over_the_api(server):
    client = server.client()
    good = jsonl([chat_example(i) for i in range(12)])
    f = client.files.create(file=("report.jsonl", io.BytesIO(good)), purpose="fine-tune")
    with server.http() as http, server.http(KEY_B) as other:
        report = http.get(f"/v1/files/{f.id}/validation").json()
        assert report["ok"] and report["file"] == "report.jsonl" and report["id"] == f.id
        tokens = report["stats"]["tokens"]
        assert tokens["trained_total"] > 0 and sum(tokens["histogram"]["counts"]) == 12
        assert other.get(f"/v1/files/{f.id}/validation").status_code == 404
        bad = good + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
        dry = http.post("/v1/files/validation", params={"filename": "x.jsonl"}, content=bad)
        assert dry.status_code == 200 and not dry.json()["ok"], dry.text
        assert [i["line"] for i in dry.json()["issues"] if i["severity"] == "error"] == [13]
    assert f.id in {x.id for x in client.files.list().data}
    assert "x.jsonl" not in {x.filename for x in client.files.list().data}  # a dry run


@needs_chromium
def test_the_page_asks_for_the_key_once(browser):
    page = browser.page
    page.goto(f"{browser.base}/", wait_until="load")
    page.wait_for_selector("#api-key")
    browser.shot("key")
    page.fill("#api-key", "not-a-key")
    page.click("text=Continue")
    page.wait_for_selector("#key-error:has-text('refused')")
    assert [e for e in browser.errors if "401" not in e] == []  # Chrome logs the refusal
    browser.errors.clear()
    page.fill("#api-key", KEY_A)
    page.click("text=Continue")
    page.wait_for_selector("h1:has-text('Fine-tuning jobs')")
    page.reload(wait_until="load")  # kept for the tab: no second prompt
    page.wait_for_selector("h1:has-text('Fine-tuning jobs')")
    assert page.locator("#api-key").count() == 0
    browser.clean()


@needs_chromium
def test_upload_shows_every_problem_then_the_report_of_a_good_file(browser, state, tmp_path):
    page = browser.page
    good = [chat_example(i) for i in range(12)]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(good[:2] + [{"messages": [{"role": "robot", "content": "hi"},
                                                    {"role": "assistant", "content": "x"}]}]
                          + good[2:5] + ['{"messages": [}'] + good[5:]))
    page.click("nav >> text=Files")
    page.set_input_files("#upload-file", str(bad))
    page.click("#upload-button")
    page.wait_for_selector("#report-issues")
    assert "was not uploaded" in page.inner_text("#upload-status")
    rows = page.locator("#report-issues tbody tr").all_inner_texts()
    assert rows[0].startswith("3\t") and "invalid_role" in rows[0] and "robot" in rows[0]
    assert rows[1].startswith("7\t") and "invalid_json" in rows[1]
    assert "Not usable" in page.inner_text("#report-verdict")
    assert "bad.jsonl" not in page.inner_text("#files-list")
    browser.shot("files-invalid")

    path = tmp_path / "colours.jsonl"
    path.write_bytes(jsonl(good))
    page.set_input_files("#upload-file", str(path))
    page.click("#upload-button")
    page.wait_for_url(re.compile(r"#/files/file-"))
    page.wait_for_selector("#report-verdict.ok")
    state["file"] = page.url.rsplit("/", 1)[-1]
    assert state["file"] in page.inner_text("#upload-status")
    assert "colours.jsonl" in page.inner_text("#files-list")
    tokens = page.inner_text("#report-tokens")
    assert "Tokens per example" in tokens and "Trained (assistant) tokens" in tokens
    box = page.locator("#length-histogram").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100
    browser.shot("files")
    browser.clean()


@needs_chromium
def test_create_a_job_and_watch_its_curve(browser, state, server):
    page = browser.page
    valid = server.client().files.create(file=("valid.jsonl", io.BytesIO(jsonl(
        [chat_example(100 + i) for i in range(4)]))), purpose="fine-tune")
    page.click("#report-new-job")  # from the file's report: the file is preselected
    page.wait_for_selector("#create-job")
    assert page.input_value("#job-training-file") == state["file"]
    page.select_option("#job-validation-file", valid.id)
    page.fill("#hp-n_epochs", "3")
    page.fill("#hp-batch_size", "1")  # learning_rate_multiplier stays "auto"
    page.fill("#job-suffix", "dash")
    browser.shot("new-job")
    page.click("#create-job")
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    state["job"] = page.url.rsplit("/", 1)[-1]
    hparams = page.inner_text("#hyperparameters")
    assert re.search(r"n_epochs\s+3", hparams) and re.search(r"learning_rate_multiplier\s+auto",
                                                             hparams)

    def points() -> int:
        return int(page.get_attribute("#loss-chart", "data-points") or 0)

    browser.until(lambda: points() >= 3, "three points on the loss curve")
    browser.until(lambda: int(page.get_attribute("#loss-chart", "data-valid-points") or 0) >= 1,
                  "a validation point")
    first = points()
    browser.until(lambda: points() > first, "the curve to grow while the job runs", 60)
    assert "Step" in page.inner_text("#loss-caption")
    assert "training loss=" in page.inner_text("#events")
    browser.shot("job")
    browser.clean()


@needs_chromium
def test_pause_resume_and_cancel_from_the_job_page(browser, state, server):
    page = browser.page
    page.click("#job-pause")
    page.wait_for_selector("#job-controls .status-paused")
    assert page.is_enabled("#job-resume") and page.is_disabled("#job-pause")
    page.click("#job-resume")
    browser.until(lambda: page.locator("#job-controls .status-paused").count() == 0,
                  "the job to leave 'paused'")
    page.wait_for_selector("#checkpoints", timeout=150_000)  # the epoch-end checkpoint
    state["checkpoint"] = page.locator("#checkpoints tbody tr td:nth-child(2)").first.inner_text()
    assert state["checkpoint"].endswith(":ckpt-step-12")
    page.click("#job-cancel")
    page.wait_for_selector("#job-controls .status-cancelled")
    assert browser.dialogs and state["job"] in browser.dialogs[-1]
    assert page.is_disabled("#job-cancel") and page.is_disabled("#job-resume")
    browser.until(lambda: "cancelled" in page.inner_text("#events"), "the cancel event")
    browser.shot("job-cancelled")
    short = server.client().fine_tuning.jobs.create(  # one step: finishes while we chat
        model=server.model, training_file=state["file"], suffix="short",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 12}}})
    state["short"] = short.id

    page.click("nav >> text=Jobs")
    row = page.locator("#jobs-table tr", has_text=state["job"])
    row.wait_for()
    assert "cancelled" in row.inner_text() and re.search(r"\d+/36", row.inner_text())
    browser.shot("jobs")
    browser.clean()


@needs_chromium
def test_playground_streams_base_and_checkpoint_side_by_side(browser, state, server):
    page = browser.page
    page.click("nav >> text=Playground")
    page.wait_for_selector("#send")
    page.select_option("#left-select", server.model)
    page.select_option("#right-select", state["checkpoint"])
    page.fill("#user-prompt", "Colour 3: gold?")
    page.fill("#max-tokens", "12")
    page.click("#send")

    def finished(side: str) -> bool:
        return "tokens in" in page.inner_text(f"#{side}-meta")

    browser.until(lambda: finished("left") and finished("right"), "both answers")
    assert page.inner_text("#left-model") == server.model
    assert page.inner_text("#right-model") == state["checkpoint"]
    for side in ("left", "right"):
        tokens = int(re.search(r"(\d+) tokens in", page.inner_text(f"#{side}-meta")).group(1))
        assert 1 <= tokens <= 12
    # the seeded tiny base model does not stop early: its answer arrives in several deltas
    assert int(page.get_attribute("#left-answer", "data-chunks")) >= 2
    browser.shot("playground")
    browser.clean()


@needs_chromium
def test_a_finished_job_offers_its_model_and_result_files(browser, state, server):
    page = browser.page
    page.goto(f"{browser.base}/#/jobs/{state['short']}")
    page.wait_for_selector("#job-controls .status-succeeded", timeout=150_000)
    assert "ft:" in page.inner_text("#job-summary") and "Try it" in page.inner_text("#job-summary")
    with page.expect_download() as download:  # fetched with the key, saved from a blob
        page.click("#result-files button")
    assert download.value.suggested_filename == "step_metrics.csv"
    header = Path(download.value.path()).read_text().splitlines()[0]
    assert header == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    browser.shot("job-succeeded")
    page.click("text=Try it")
    page.wait_for_selector("#send")
    assert page.input_value("#right-select").startswith(f"ft:{server.model}:tunehouse:short:")
    browser.clean()
