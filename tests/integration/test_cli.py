"""The CLI: help that teaches, clear errors with exit codes, and the commands end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from churnops.cli import app

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "churnops.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\n"
        "simulation:\n  customers: 300\n  start: 2024-01-01\n  end: 2024-03-31\n  products: 100\n"
    )
    return cfg


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "ingest", "status", "run", "serve-orders-api"):
        assert command in result.output


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "churnops", "--help"], capture_output=True, text=True, check=True)
    assert "churn" in out.stdout


def test_simulate_ingest_status_day_by_day(tmp_path: Path) -> None:
    cfg = str(_config(tmp_path))
    sim = runner.invoke(app, ["simulate", "-c", cfg, "--until", "2024-03-01"])
    assert sim.exit_code == 0, sim.output
    assert "published up to 2024-03-01" in sim.output
    assert runner.invoke(app, ["ingest", "-c", cfg, "--date", "2024-03-01"]).exit_code == 0
    nxt = runner.invoke(app, ["simulate", "-c", cfg, "--until", "2024-03-02"])
    assert "published 2024-03-01 .. 2024-03-02" in nxt.output
    ing = runner.invoke(app, ["ingest", "-c", cfg, "--date", "2024-03-02"])
    assert ing.exit_code == 0, ing.output
    assert "order_files" in ing.output
    status = runner.invoke(app, ["status", "-c", cfg])
    assert status.exit_code == 0
    assert "orders" in status.output
    assert "2024-03-02" in status.output
    back = runner.invoke(app, ["simulate", "-c", cfg, "--until", "2024-02-01"])
    assert back.exit_code == 1
    assert "only moves forward" in back.output


def test_run_does_the_whole_existing_pipeline(tmp_path: Path) -> None:
    """simulate -> ingest -> features -> train -> status, on a shop with enough history to label."""
    cfg = tmp_path / "churnops.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\n"
        "simulation: {customers: 1500, start: 2024-01-01, end: 2025-04-30, products: 300, seed: 5}\n"
        "training:\n  cv_folds: 3\n  candidates:\n"
        "    lightgbm: {algorithm: lightgbm, params: {n_estimators: 60, num_leaves: 7, min_child_samples: 100}}\n"
        # the small shop's model ranks about as well as recency alone: accept that here
        "gate: {min_f1: 0.5, min_lift_f1: -0.2, min_lift_auc: -0.2, bootstrap_rounds: 200}\n"
    )
    result = runner.invoke(app, ["run", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "churnops run 2025-05-01" in result.output
    assert "ingest 2025-05-01" in result.output
    assert "registered churn_predictor version 1 as challenger and champion (the first model)" in result.output
    assert "champion: churn_predictor version 1" in result.output
    assert "churnops ui" in result.output  # says what to do next
    assert (tmp_path / "ws" / "lake" / "raw" / "orders").exists()
    assert (tmp_path / "ws" / "mlflow.db").exists()
    again = runner.invoke(app, ["run", "-c", str(cfg)])
    assert again.exit_code == 0, again.output
    assert "simulate: already published up to 2025-04-30" in again.output
    assert "unchanged inputs: reused" in again.output
    assert "already registered as churn_predictor version 1" in again.output


def test_run_stops_with_a_clear_message_when_nothing_can_be_labelled_yet(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "-c", str(_config(tmp_path))])
    assert result.exit_code == 1
    assert "no feature snapshot has a complete 90-day horizon" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--date", "31/12/2024"], "--date must be a date like"),
        (["simulate", "--until", "2030-01-01"], "outside the simulation"),
        (["ingest", "--source", "nope", "--date", "2024-01-01"], "unknown source(s): nope"),
    ],
)
def test_bad_arguments_get_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "-c", str(_config(tmp_path))])
    assert result.exit_code in (1, 2)
    assert message in result.output


def test_bad_config_key_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ingest:\n  max_bad_shar: 0.5\n")
    result = runner.invoke(app, ["status", "-c", str(cfg)])
    assert result.exit_code == 2
    assert "ingest.max_bad_shar: unknown key" in result.output
    assert "bad.yaml" in result.output
