"""The HTML report opened in real headless Chromium: plots load, tables render, nothing is
fetched from the network. A full-page screenshot goes to ``test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed "
                    "(make install adds it)")
def test_report_renders_in_chromium(eval_report):
    from playwright.sync_api import sync_playwright

    report, html = eval_report
    requested: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.id, e.complete, e.naturalWidth, e.naturalHeight])")
            tables = page.eval_on_selector_all("table",
                                               "els => els.map(e => [e.id, e.rows.length])")
            summary = page.inner_text("#summary")
            cells = page.inner_text("#differences")
            page.screenshot(path=str(ARTIFACTS / "eval-report.png"), full_page=True)
        finally:
            browser.close()
    assert sorted(i[0] for i in images) == ["loss", "metrics", "training_curves"]
    for name, complete, width, height in images:
        assert complete and width > 100 and height > 100, name
    rows = dict(tables)
    assert rows["differences"] == 1 + len(report.comparisons)
    assert rows["candidates"] > len(report.metrics)
    assert rows["forgetting"] == 2
    assert rows["disagreements"] >= 2  # header + at least one example where answers differ
    assert rows["confusion-fine-tuned"] == 1 + len(report.labels)
    assert summary.startswith("fine-tuned beats base: accuracy")
    assert "better" in cells
    external = [u for u in requested if not u.startswith(("file:", "data:"))]
    assert external == []
    assert (ARTIFACTS / "eval-report.png").stat().st_size > 10_000
