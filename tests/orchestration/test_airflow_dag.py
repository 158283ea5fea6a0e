"""The Airflow DAG, run by real Airflow 3 (SQLite metadata database) in processes of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from churnops.settings import Settings, load_settings
from tests.integration.test_workspace import CONFIG  # the small shop the workspace tests run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("airflow_driver.py")
BIN = Path(sys.executable).parent
DAYS = ["2024-12-31", "2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04", "2025-01-05", "2025-01-06"]
STEP_TASKS = [
    "simulate",
    "ingest",
    "features",
    "validate",
    "due",
    "train",
    "gate",
    "notify",
    "register",
    "staging",
    "integration",
    "production",
    "monitor",
    "trigger",
]
# the tasks a day with no training due skips: training and the road it opens
TRAINING_BRANCH = set(STEP_TASKS[STEP_TASKS.index("train") : STEP_TASKS.index("production")])


def _config(folder: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "churnops.yaml"
    path.write_text(yaml.safe_dump({"workspace": str(folder / "ws"), **CONFIG, **overrides}))
    return path


def _airflow_env(home: Path, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CHURNOPS_"))}
    return env | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "CHURNOPS_CONFIG": str(config),
        "PATH": f"{BIN}:{env.get('PATH', '')}",
    }


def _call(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done


def _migrate(home: Path, config: Path) -> dict[str, str]:
    env = _airflow_env(home, config)
    _call([str(BIN / "airflow"), "db", "migrate"], env, home.parent, home.parent / "migrate.log")
    return env


def _drive(env: dict[str, str], cwd: Path, *args: str) -> Any:
    out = cwd / f"driver-{args[0]}.json"
    _call([sys.executable, str(DRIVER), args[0], str(out), *args[1:]], env, cwd, cwd / f"driver-{args[0]}.log")
    return json.loads(out.read_text())


def _kept(settings: Settings, day: str, step: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((settings.paths.root / "runs" / day / f"{step}.json").read_text())
    return body


def _registry_state(settings: Settings) -> dict[str, Any]:
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    assert registry is not None
    return {
        "versions": sorted(str(v["version"]) for v in registry.versions()),
        "aliases": {alias: registry.holder(alias) for alias in ("challenger", "staging", "champion")},
    }


def test_the_dag_file_parses_with_the_designed_shape_and_touches_nothing(tmp_path: Path) -> None:
    """The DAG imports without errors or side effects, has no cycle, and has the designed tasks,
    dependencies, schedule, retries, timeout and owner."""
    config = _config(tmp_path)
    env = _airflow_env(tmp_path / "airflow", config)
    body = _drive(env, tmp_path, "describe")
    assert body["import_errors"] == {}
    dag = body["dags"]["churnops_daily"]
    assert dag["schedule"] == "0 0 * * *"
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert {"churnops", "mlops"} <= set(dag["tags"])
    assert dag["params"] == ["config"]
    tasks = dag["tasks"]
    assert set(tasks) == {*STEP_TASKS, "gate_branch", "replay"}
    upstream = {task_id: task["upstream"] for task_id, task in tasks.items()}
    assert upstream == {
        "simulate": [],
        "ingest": ["simulate"],
        "features": ["ingest"],
        "validate": ["features"],
        "due": ["validate"],
        "train": ["due"],
        "gate": ["train"],
        "gate_branch": ["gate"],
        "notify": ["gate_branch"],
        "register": ["gate_branch"],
        "staging": ["register"],
        "integration": ["staging"],
        "production": ["integration", "notify"],
        "monitor": ["production"],
        "trigger": ["monitor"],
        "replay": ["trigger"],  # the later dates a run of an older date rewound for, run again
    }
    assert tasks["gate_branch"]["operator"] == "BranchPythonOperator"
    for task_id, task in tasks.items():
        assert task["retries"] == 2, task_id
        assert task["retry_delay_s"] == 600, task_id
        assert task["execution_timeout_s"] == (86400 if task_id == "replay" else 7200), task_id
        assert task["owner"] == "churnops", task_id
        assert task["depends_on_past"] is (task_id != "replay"), task_id  # days run in date order
        # a skipped step (nothing due, nothing registered) must not stop the day's later steps
        assert task["trigger_rule"] == ("all_success" if task_id == "simulate" else "none_failed"), task_id
    assert not (tmp_path / "ws").exists()  # parsing loaded no settings and created no workspace
    assert not (tmp_path / ".churnops").exists()


@pytest.fixture(scope="module")
def in_order(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The same seven days run in this process with `run_steps` (what `churnops run` does)."""
    from churnops.pipelines.steps import run_steps

    settings = load_settings(_config(tmp_path_factory.mktemp("inprocess")))
    for day in DAYS:
        run_steps(settings, date.fromisoformat(day))
    return settings


def test_dag_runs_and_a_rerun_leave_what_the_in_process_runner_leaves(tmp_path: Path, in_order: Settings) -> None:
    """Seven daily DAG runs (a seven-day backfill) then a rerun of the first: every task ends as
    designed, and the feature tables, model metrics, registry versions and aliases equal those
    of seven single `churnops run`s over the same days; the rerun adds nothing."""
    config = _config(tmp_path)
    settings = load_settings(config)
    env = _migrate(tmp_path / "airflow", config)
    runs = _drive(env, tmp_path, "run", *DAYS)
    first, later = runs[0], runs[1:]
    assert [run["state"] for run in runs] == ["success"] * len(DAYS)
    assert [run["interval"][1][:10] for run in runs] == DAYS  # the churnops date is the end of the data interval
    # the first model becomes champion at once: nothing to stage, so the integration tests skip
    not_run = {k: v for k, v in first["tasks"].items() if v != "success"}
    assert not_run == {"notify": "skipped", "integration": "skipped", "replay": "skipped"}  # no later date
    assert _kept(settings, DAYS[0], "staging")["result"]["skipped"].endswith("is the champion already")
    for day in DAYS:
        checked = _kept(settings, day, "validate")["result"]
        assert checked["snapshot"] == day
        assert checked["online_sampled"] > 0
    # the later days: no training due, so the training branch skips itself and production and monitoring still run
    for day, run in zip(DAYS[1:], later, strict=True):
        assert run["tasks"]["due"] == "success", day
        assert {t for t, state in run["tasks"].items() if state == "skipped"} == TRAINING_BRANCH | {"replay"}, day
        assert run["tasks"]["production"] == run["tasks"]["monitor"] == run["tasks"]["trigger"] == "success", day
        assert not _kept(settings, day, "due")["result"]["due"], day

    for day in DAYS:
        ours, theirs = _kept(settings, day, "features"), _kept(in_order, day, "features")
        assert ours["result"]["content_hash"] == theirs["result"]["content_hash"]
    ours_train, theirs_train = _kept(settings, DAYS[0], "train")["result"], _kept(in_order, DAYS[0], "train")["result"]
    for metric, value in theirs_train["candidates"][0]["holdout"].items():
        assert ours_train["candidates"][0]["holdout"][metric] == pytest.approx(value, abs=1e-9), metric
    state = _registry_state(settings)
    assert state == _registry_state(in_order)
    assert state == {"versions": ["1"], "aliases": {"challenger": "1", "staging": None, "champion": "1"}}

    rerun = _drive(env, tmp_path, "run", DAYS[0])[0]
    assert rerun["state"] == "success"
    assert _registry_state(settings) == state  # the rerun reused the run and the version
    again = _kept(settings, DAYS[0], "train")["result"]
    assert again["reused"] is True
    assert again["run_id"] == ours_train["run_id"]
    # the older day rerun rewrote its snapshots with the same content: the table equals the
    # in-order one, snapshot by snapshot
    from churnops.pipelines.features import feature_table

    ours_table, theirs_table = feature_table(settings).manifest(), feature_table(in_order).manifest()
    assert {k: v.content_hash for k, v in ours_table.snapshots.items()} == {
        k: v.content_hash for k, v in theirs_table.snapshots.items()
    }


def test_an_older_date_triggered_after_a_newer_one_ends_as_in_order(tmp_path: Path, in_order: Settings) -> None:
    """A DAG run of a newer date, then one of an older date (a manual trigger): the older run's
    first task rewinds what the newer date decided and its last task runs the newer date again,
    so version 1 is the older date's model, as in date order, and the newer date trains nothing."""
    from churnops.pipelines.promotion import existing_registry

    config = _config(tmp_path)
    settings = load_settings(config)
    env = _migrate(tmp_path / "airflow", config)
    runs = _drive(env, tmp_path, "run", DAYS[2], DAYS[0])
    assert [run["state"] for run in runs] == ["success", "success"]
    assert [run["tasks"]["replay"] for run in runs] == ["skipped", "success"]
    assert _registry_state(settings) == _registry_state(in_order)
    registry = existing_registry(settings)
    assert registry is not None
    assert registry.version_tags("1")["logical_date"] == DAYS[0]  # not DAYS[2], whose run came first
    assert not _kept(settings, DAYS[2], "due")["result"]["due"]
    assert _kept(settings, DAYS[2], "due")["result"] == _kept(in_order, DAYS[2], "due")["result"]
    from churnops.pipelines.features import feature_table

    ours = {k: v.content_hash for k, v in feature_table(settings).manifest().snapshots.items()}
    theirs = {k: v.content_hash for k, v in feature_table(in_order).manifest().snapshots.items()}
    assert {DAYS[0], DAYS[2]} <= set(ours)
    assert ours == {k: theirs[k] for k in ours}
    log = (tmp_path / "driver-run.log").read_text()
    assert "registry rewound to before 2024-12-31" in log
    assert f"running {DAYS[2]} again, after {DAYS[0]}" in log
    # the raw lake: the older date's orders are those before it, as in date order, and the newer
    # date's part from its first run is set aside, kept, and replaced by the orders after them
    from churnops.pipelines.ingest import make_lake

    lake, theirs_lake = make_lake(settings), make_lake(in_order)
    older, newer = (lake.manifest("orders", date.fromisoformat(d)) for d in (DAYS[0], DAYS[2]))
    assert older is not None
    assert newer is not None
    assert older.sha256 == theirs_lake.manifest("orders", date.fromisoformat(DAYS[0])).sha256  # type: ignore[union-attr]
    assert len(newer.set_aside) == 1
    orders = lake.read("orders")
    assert orders["order_id"].is_unique
    assert orders["order_date"].max() < pd.Timestamp(DAYS[2])
    assert len(orders) == sum(m.rows for m in theirs_lake.manifests("orders") if m.ingest_date <= DAYS[2])


def test_a_failing_gate_takes_the_notify_branch_under_airflow_dags_test(tmp_path: Path) -> None:
    """`airflow dags test` from the CLI, with a gate nothing passes: the branch notifies the team
    once, registers nothing, and the day's later steps still run."""
    config = _config(tmp_path, gate={**CONFIG["gate"], "min_f1": 0.99})
    settings = load_settings(config)
    env = _migrate(tmp_path / "airflow", config)
    _call(
        [str(BIN / "airflow"), "dags", "test", "churnops_daily", DAYS[0]],
        env,
        tmp_path,
        tmp_path / "dags-test.log",
    )
    assert not _kept(settings, DAYS[0], "gate")["result"]["passed"]
    notice = _kept(settings, DAYS[0], "notify")["result"]
    assert notice["alerted"] is True
    assert any(reason.startswith("F1 floor") for reason in notice["reasons"])
    assert not (settings.paths.root / "runs" / DAYS[0] / "register.json").exists()  # the branch skipped it
    assert _kept(settings, DAYS[0], "production")["result"]["skipped"] == "no champion yet"
    assert _kept(settings, DAYS[0], "monitor")["step"] == "monitor"
    assert _kept(settings, DAYS[0], "trigger")["result"]["retrain"] is False
    alerts = [json.loads(line) for line in Path(settings.alerts.file).read_text().splitlines()]
    assert [a["key"].startswith("gate-failed") for a in alerts] == [True]
