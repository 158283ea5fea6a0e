"""The CLI: help that teaches, clear errors with exit codes, and the commands end to end."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from churnops.cli import app

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "churnops.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\n"
        "simulation:\n  customers: 300\n  start: 2024-01-01\n  end: 2024-03-31\n  products: 100\n"
        "deploy:\n  servers: false\n"
    )
    return cfg


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "ingest", "status", "run", "serve-orders-api"):
        assert command in result.output


def _command_paths(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, command in getattr(group, "commands", {}).items():
        paths += _command_paths(command, (*path, name))
    return paths


def test_every_help_text_wraps_at_80_columns_only_where_a_word_does_not_fit() -> None:
    """At 80 columns, the prose of every command's --help breaks a line only where the next
    word would not fit (docstring line breaks inside a paragraph used to be kept, and every
    line then wrapped again, leaving half-empty lines); lists keep their lines."""
    import typer.main

    from churnops.cli import unwrapped_help

    assert (
        unwrapped_help("One\n    two.\n\n    Three\n    four.\n\n    Items:\n    - a\n    - b")
        == "One two.\n\nThree four.\n\nItems:\n- a\n- b"
    )
    paths = _command_paths(typer.main.get_command(app))
    assert len(paths) > 15
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        usage = next(i for i, line in enumerate(lines) if "Usage:" in line)
        prose = []
        for line in lines[usage + 1 :]:
            if line.lstrip().startswith(("╭", "│", "╰")):
                break
            prose.append(line.strip())
        assert any(prose), path
        for line, following in itertools.pairwise(prose):
            if line and following and not following.startswith(("- ", "* ")):
                assert len(line) + 1 + len(following.split()[0]) > 78, (path, line, following)


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "churnops", "--help"], capture_output=True, text=True, check=True)
    assert "churn" in out.stdout


def test_simulate_ingest_status_day_by_day(tmp_path: Path) -> None:
    cfg = str(_config(tmp_path))
    sim = runner.invoke(app, ["simulate", "-c", cfg, "--until", "2024-03-01"])
    assert sim.exit_code == 0, sim.output
    assert "published up to 2024-03-01" in sim.output
    assert "`churnops ingest --date 2024-03-02" in " ".join(sim.output.split())  # the day after: it reads 03-01's
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
        "deploy: {servers: false}\n"  # tests/serving runs the servers
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
    # a gate nothing passes: the day still runs to its end, as an Airflow run of it succeeds
    strict = runner.invoke(app, ["run", "-c", str(cfg)], env={"CHURNOPS_GATE__MIN_F1": "0.99"})
    assert strict.exit_code == 0, strict.output
    said = " ".join(strict.output.split())
    assert "refused: the challenger failed the gate; nothing was registered" in said
    assert "the team was alerted" in said
    assert "champion: churn_predictor version 1" in strict.output


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


def test_version_and_verbose_after_the_command() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"churnops {version('churnops')}"
    after = runner.invoke(app, ["status", "--help", "-v"])
    assert after.exit_code == 0, after.output
    assert "Show what is in the workspace" in after.output


def _clean(text: str) -> None:
    """What a person reads in a log or a pipe: no escape codes, no library chatter."""
    assert "\x1b[" not in text
    for noise in ("Warning", "WARNING", "INFO", "alembic", "Materializing", "Downloading artifacts", "Traceback"):
        assert noise not in text, noise
    assert "…" not in text  # tables abbreviate headers, never cut a value


def test_the_steps_print_no_library_output_and_tables_fit_80_columns(tmp_path: Path) -> None:
    """As subprocesses, so that whatever a library writes to the real stdout or stderr is seen."""
    import json as _json

    from tests.integration.test_workspace import CONFIG

    cfg = tmp_path / "c.json"
    cfg.write_text(_json.dumps({"workspace": str(tmp_path / "ws"), **CONFIG}))
    env = {"COLUMNS": "80", "PATH": "/usr/bin:/bin"}
    for command in (
        ["simulate"],
        ["ingest", "--date", "2025-01-01"],
        ["features", "--as-of", "2025-01-01"],
        ["train", "--date", "2025-01-01"],
        ["registry", "list"],
        ["status"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "churnops", *command, "-c", cfg.name],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        _clean(out.stdout + out.stderr)
        assert "next:" in out.stdout or command[0] in ("registry", "status")
        if command[0] == "features":  # the hint is a command that runs as it stands: with the settings
            assert "next: `churnops train -c c.json` trains on them" in out.stdout, out.stdout
        if command[0] == "train":
            assert "everyone churns" in out.stdout
            assert "recency score" in out.stdout
            assert "gate passed" in out.stdout
            assert "cross-validation fold 2/2" in out.stdout  # progress while a candidate trains
        if command[0] == "status":  # a raw-lake row whole on one line, its dates an unbroken interval
            assert re.search(r"^ orders +1 +[\d,]+ +0 +2025-01-01 +2024-\d\d-\d\d/2024-12-\d\d *$", out.stdout, re.M), (
                out.stdout
            )
        if command[0] == "ingest":
            header = next(line for line in out.stdout.splitlines() if line.lstrip().startswith("source"))
            assert len(header) <= 80


def test_run_over_real_data_never_simulates_and_defaults_to_the_day_after_the_last_order(tmp_path: Path) -> None:
    import json as _json

    from tests.training.test_backtest import _log, _settings, _write

    (tmp_path / "log").mkdir()
    log = _log(seed=5)
    _write(log, tmp_path / "log" / "orders.txt")
    settings = _settings(tmp_path)
    cfg = tmp_path / "c.json"
    body = _json.loads(settings.model_dump_json())
    body["gate"] = {"min_f1": 0.3, "min_lift_f1": -0.5, "min_lift_auc": -0.5, "bootstrap_rounds": 100}
    body["deploy"] = {"servers": False}
    cfg.write_text(_json.dumps(body, default=str))
    day = (log["day"].max() + pd.Timedelta(days=1)).date()
    result = runner.invoke(app, ["run", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"churnops run {day}" in result.output
    assert "simulate: no source reads the simulated shop" in result.output
    assert not (tmp_path / "ws" / "sources").exists()
    assert f"ingest {day}" in result.output


def test_quarantine_shows_each_bad_row_with_its_file_and_row_and_writes_them_all(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("customer;day;amount\n1;2024-01-03;5.0\n2;2024-01-03;-6\n;2024-01-04;3\n")
    (drop / "b.csv").write_text("customer;day;amount\n1;2024-01-05;x\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\ningest:\n  max_bad_share: 0.9\nsources:\n"
        f"  - {{kind: file, name: mine, table: orders, path: '{drop}/*.csv', csv_delimiter: ';',"
        " derive_order_id: true, date_formats: {order_date: '%Y-%m-%d'},"
        " columns: {customer_id: customer, order_date: day, total_amount: amount}}\n"
    )
    ingested = runner.invoke(app, ["ingest", "-c", str(cfg), "--date", "2024-01-10"])
    assert ingested.exit_code == 0, ingested.output
    assert "churnops quarantine --date 2024-01-10" in ingested.output
    shown = runner.invoke(app, ["quarantine", "-c", str(cfg), "--limit", "2", "--csv", str(tmp_path / "q.csv")])
    assert shown.exit_code == 0, shown.output
    assert "quarantine (3 row(s))" in shown.output
    assert "1 more" in shown.output
    written = pd.read_csv(tmp_path / "q.csv")
    assert sorted(zip(written["file"], written["file_row"], written["reason"], strict=True)) == [
        ("a.csv", 2, "negative total_amount"),
        ("a.csv", 3, "null customer_id"),
        ("b.csv", 1, "unparseable total_amount"),
    ]
    misspelt = runner.invoke(app, ["quarantine", "-c", str(cfg), "--table", "order"])
    assert misspelt.exit_code == 2
    assert "the tables are orders, customers, products" in misspelt.output
    other_day = runner.invoke(app, ["quarantine", "-c", str(cfg), "--date", "2024-01-11"])
    assert other_day.exit_code == 0
    assert "nothing quarantined on 2024-01-11" in other_day.output


def test_ingest_names_a_path_that_matches_no_file_and_does_not_send_the_user_on_to_features(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\nsources:\n"
        f"  - {{kind: file, name: mine, table: orders, path: '{tmp_path}/ordrs/*.csv', derive_order_id: true}}\n"
    )
    result = runner.invoke(app, ["ingest", "-c", str(cfg), "--date", "2024-01-10"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())  # a long path wraps
    assert "mine: " in flat
    assert "matches no file" in flat
    assert "check the source path" in flat
    assert "churnops features" not in flat


def test_ui_serves_mlflow_on_loopback_and_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    import signal
    import threading
    import time
    import urllib.error
    import urllib.request

    from tests.servers import free_port

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "mlflow.db").touch()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    mlflow.search_experiments()  # a real, initialised store
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workspace: {ws}\n")
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "churnops", "ui", "--port", str(port), "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # started with SIGINT ignored, as a script's background job starts it (and as this suite
        # runs when started that way): Ctrl-C must stop it all the same
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    # the UI and its server write to this pipe until they end: read it all along (a full pipe
    # would stop them mid-write), and show it when they do not behave
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(ui.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300  # beside the suite: over 120 s with four workers, 64 s with one
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert ui.poll() is None, "".join(said)
                assert time.monotonic() < deadline, f"the MLflow UI did not come up: {''.join(said)}"
                time.sleep(0.5)
        time.sleep(0.5)  # for the reader to catch up
        assert "(Ctrl-C stops it)" in " ".join("".join(said).split()), "".join(said)  # ours answered, not another
        ui.send_signal(signal.SIGINT)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"churnops ui did not stop within 60 s of Ctrl-C; it said: {''.join(said)}")
    finally:
        if ui.poll() is None:
            ui.kill()
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
