"""`churnops demo`: days of the loop with real local servers answering each day's traffic over HTTP."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from churnops.cli import app
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FIRST = date(2024, 8, 1)


def test_three_days_of_the_demo_train_promote_serve_and_monitor_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    """Day 1 trains and promotes the first model; each day's traffic is answered by the production
    server and logged inside that simulated day; the next days monitor it without training again."""
    from churnops.pipelines.demo import DemoPlan, demo_settings
    from churnops.serving.prediction_log import read_predictions

    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\nserving: {{port: {free_port()}}}\ndeploy: {{staging_port: {free_port()}}}\n"
    )
    args = ["demo", "-c", str(cfg), "--days", "3", "--traffic", "800", "--stop"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Traceback" not in out
    assert "ERROR" not in out  # log lines go to the demo's log, not over the view
    assert f"{FIRST}  >> version 1 trained and promoted: the first champion" in out
    for offset in range(3):
        assert f"{FIRST + timedelta(days=offset)}  champion v1" in out
    assert f"reached  the first model trained and promoted: {FIRST}" in out
    assert "MISSING  an A/B test decided: not reached" in out  # three days cannot get that far
    assert "1 refused" in out

    settings = demo_settings(cfg, DemoPlan(days=3, traffic=800))
    root = settings.paths.root
    state = json.loads((root / "demo.json").read_text())
    assert state["done"] == [(FIRST + timedelta(days=i)).isoformat() for i in range(3)]
    assert not (root / "servers" / "production.json").exists()  # --stop stopped them
    log = (root / "demo.log").read_text()
    assert log.count("-- train: skipped") == 2  # days 2 and 3: a champion, and no trigger
    per_day = [read_predictions(settings.serving.prediction_log_url, day=FIRST + timedelta(days=i)) for i in range(3)]
    assert all(len(frame) > 300 for frame in per_day)  # stamped by the server clock of each simulated day
    assert {v for frame in per_day for v in frame["version"]} == {"1"}
    summary = json.loads((root / "monitoring" / str(FIRST + timedelta(days=1)) / "summary.json").read_text())
    assert summary["system"]["errors"] == 1  # the day's one malformed request, recorded by the server
    assert summary["system"]["errors_by_status"] == {"422": 1}
    assert summary["system"]["error_rate"] == pytest.approx(1 / summary["system"]["requests"])
    assert summary["dataset_drift"] is False  # before the prices change, traffic is like the reference
    assert (root / "demo.yaml").exists()

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "carrying on: 3 day(s) done" in again.output
    total = sum(len(f) for f in per_day)
    assert len(read_predictions(settings.serving.prediction_log_url)) == total


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
