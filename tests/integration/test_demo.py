"""`churnops demo`: days of the loop with real local servers answering each day's traffic over HTTP."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from churnops.cli import app
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FIRST = date(2024, 8, 1)
DAYS = 6
# Headless Chromium on a machine with no network: nothing in the background reaches out.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_a_short_demo_trains_serves_monitors_detects_drift_retrains_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    """Six days of a small shop whose prices jump on day 2 (one drifted feature, one check, are an
    alarm here): day 1 trains and promotes the first model; each day's traffic is answered by the
    production server and logged inside that simulated day; drift is detected and the next
    training steps retrain; a rerun of the finished days changes nothing."""
    from churnops.pipelines.demo import DemoPlan, demo_settings
    from churnops.serving.prediction_log import read_predictions

    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\n"
        f"serving: {{port: {free_port()}}}\n"
        f"deploy: {{staging_port: {free_port()}}}\n"
        "simulation:\n  scenarios: [{kind: price_shift, start: 2024-08-02, magnitude: 4.0}]\n"
        "monitoring: {drift_share: 0.05, consecutive_checks: 1}\n"
    )
    args = ["demo", "-c", str(cfg), "--days", str(DAYS), "--traffic", "800", "--stop"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Traceback" not in out
    assert "ERROR" not in out  # log lines go to the demo's log, not over the view
    assert "drift: prices x5 from 2024-08-02" in out
    assert f"{FIRST}  >> version 1 trained and promoted: the first champion" in out
    for offset in range(DAYS):
        assert f"{FIRST + timedelta(days=offset)}  champion v1" in out
    assert f"reached  the first model trained and promoted: {FIRST}" in out
    assert "reached  drift detected after the injection" in out
    assert "reached  a retrain triggered by monitoring" in out
    assert ">> version 2 passed the gate: the challenger" in out
    assert "MISSING  an A/B test decided: not reached" in out  # six days cannot get labels that far
    assert "1 refused" in out
    assert re.search(rf"{DAYS} simulated day\(s\) in \d+ min \d\d s; the report: ", out)

    settings = demo_settings(cfg, DemoPlan(days=DAYS, traffic=800))
    root = settings.paths.root
    state = json.loads((root / "demo.json").read_text())
    assert state["done"] == [(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)]
    assert state["milestones"]["retrain"] > state["milestones"]["drift"] > FIRST.isoformat()
    assert not (root / "servers" / "production.json").exists()  # --stop stopped them
    log = (root / "demo.log").read_text()
    assert log.count("-- train: skipped") >= 2  # no training on the days without a trigger
    per_day = [
        read_predictions(settings.serving.prediction_log_url, day=FIRST + timedelta(days=i)) for i in range(DAYS)
    ]
    assert all(len(frame) > 300 for frame in per_day)  # stamped by the server clock of each simulated day
    assert {v for frame in per_day[:-1] for v in frame["version"]} == {"1"}
    summary = json.loads((root / "monitoring" / str(FIRST + timedelta(days=1)) / "summary.json").read_text())
    assert summary["system"]["errors"] == 1  # the day's one malformed request, recorded by the server
    assert summary["system"]["errors_by_status"] == {"422": 1}
    assert summary["system"]["error_rate"] == pytest.approx(1 / summary["system"]["requests"], abs=1e-6)
    assert summary["dataset_drift"] is False  # before the prices change, traffic is like the reference
    assert (root / "demo.yaml").exists()
    _check_report_in_a_browser(root / "report.html")

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"carrying on: {DAYS} day(s) done" in again.output
    total = sum(len(f) for f in per_day)
    assert len(read_predictions(settings.serving.prediction_log_url)) == total

    # A run that stopped after the last day's traffic but before marking it done: the rerun
    # redoes that day's steps and does not send its traffic twice.
    state["done"] = state["done"][:-1]
    (root / "demo.json").write_text(json.dumps(state))
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert f"carrying on: {DAYS - 1} day(s) done" in resumed.output
    assert "answered before" in (root / "demo.log").read_text()
    assert len(read_predictions(settings.serving.prediction_log_url)) == total


def _check_report_in_a_browser(page_path: Path) -> None:
    """The report page loads in headless Chromium with no console errors, its charts draw lines,
    and its links to the Evidently reports lead to files that exist."""
    import shutil

    from tests.servers import missing

    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(page_path.as_uri())
            charts = page.locator("svg.chart")
            assert charts.count() >= 5
            for i in range(charts.count()):
                box = charts.nth(i).bounding_box()
                assert box is not None
                assert box["width"] > 300
                assert box["height"] > 100
            lines = page.locator("svg.chart polyline.series")
            assert lines.count() >= 5
            assert all(lines.nth(i).get_attribute("points") for i in range(lines.count()))
            assert page.locator("#timeline td", has_text="champion → v1").count() == 1
            assert page.locator("#versions a", has_text="MLflow run").count() == 2
            reports = page.locator("#reports a")
            assert reports.count() >= 3
            for i in range(reports.count()):
                assert (page_path.parent / str(reports.nth(i).get_attribute("href"))).exists()
        finally:
            browser.close()
    assert problems == []


def test_the_demo_will_not_take_over_a_workspace_that_holds_other_work(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workspace: {tmp_path / 'ws'}\n")
    for extra in ([], ["--restart"]):
        result = CliRunner().invoke(app, ["demo", "-c", str(cfg), *extra])
        assert result.exit_code == 2, result.output
        assert "not a demo's" in result.output
    assert (tmp_path / "ws" / "mlflow.db").exists()
