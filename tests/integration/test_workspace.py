"""The workspace: a copy or a move keeps working, one lock for writers, read-only commands create nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from churnops.cli import app
from churnops.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = date(2025, 1, 1)
CONFIG = {
    "simulation": {"customers": 800, "start": "2024-01-01", "end": "2024-12-31", "products": 150, "seed": 4},
    "training": {
        "horizon_days": 28,
        "holdout_snapshots": 2,
        "validation_snapshots": 2,
        "cv_folds": 2,
        "candidates": {
            "lightgbm": {
                "algorithm": "lightgbm",
                "params": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 50},
            }
        },
    },
    "gate": {"min_f1": 0.3, "min_lift_f1": -0.5, "min_lift_auc": -0.5, "bootstrap_rounds": 100},
    "deploy": {"servers": False},  # tests/serving starts servers on ports of its own
}


def _settings(workspace: Path, **overrides: Any) -> Settings:
    return load_settings(None, workspace=str(workspace), **{**CONFIG, **overrides})


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from churnops.pipelines.steps import run_steps

    settings = _settings(tmp_path_factory.mktemp("original") / "ws")
    results = run_steps(settings, DAY)
    from churnops.pipelines.promotion import Registered

    assert results.get(Registered).version == "1"
    return settings


def test_a_copied_workspace_works_and_leaves_the_original_untouched(original: Settings, tmp_path: Path) -> None:
    from churnops.pipelines.features import build_features
    from churnops.pipelines.ingest import ingest
    from churnops.pipelines.promotion import gate, model_registry, register
    from churnops.pipelines.train import train
    from churnops.training.tracking import load_scorer, run_data

    before = _tree(original.workspace)
    copy = tmp_path / "elsewhere" / "ws"
    shutil.copytree(original.workspace, copy)
    settings = _settings(copy)

    reports = ingest(settings, date(2025, 1, 2))
    assert {r.source: r.status for r in reports}["order_files"] == "no new data"  # not 99% duplicates
    build_features(settings, DAY)
    reseeded = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": 9})})
    result = train(reseeded, DAY)
    assert not result.reused
    assert run_data(result.run_id).info.artifact_uri.startswith(copy.resolve().as_uri())
    assert gate(reseeded, DAY, result.run_id).passed
    version = register(reseeded, DAY, result.run_id).version
    assert version == "2"
    champion = load_scorer(f"models:/{settings.mlflow.model_name}@champion")  # version 1, copied
    assert champion.features
    assert model_registry(settings).holder("challenger") == "2"

    assert _tree(original.workspace) == before
    assert model_registry(original).holder("challenger") == "1"


def test_a_moved_workspace_trains_where_it_now_is(original: Settings, tmp_path: Path) -> None:
    from churnops.pipelines.train import train

    moved = tmp_path / "moved" / "ws"
    shutil.copytree(original.workspace, tmp_path / "first")
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "first"), str(moved))  # where it was used from no longer exists
    result = train(_settings(moved), DAY)
    assert result.reused  # the same inputs, found in the moved tracking store
    from churnops.features import feast_repo

    store = feast_repo.FeastFeatureStore(_settings(moved))
    for view in feast_repo.VIEWS:
        assert store.store.get_feature_view(view).batch_source.path.startswith(str(moved.resolve()))


def test_lineage_of_a_moved_workspace_reads_the_run_where_it_now_is(original: Settings, tmp_path: Path) -> None:
    """Before any writing command rebases MLflow's store, lineage still finds the run's record."""
    from churnops.pipelines.lineage import model_lineage
    from churnops.training.tracking import relocate_embedded_store

    expected = model_lineage(original, "1")
    first, moved = tmp_path / "first", tmp_path / "moved" / "ws"
    shutil.copytree(original.workspace, first)
    relocate_embedded_store(_settings(first))  # as a writing command there would: its store names `first`
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))  # where the store says the artifacts are no longer exists
    before = _tree(moved)
    chain = model_lineage(_settings(moved), "1")
    assert chain.raw_partitions, "the run's lineage.json was not read"
    assert [p.sha256 for p in chain.raw_partitions] == [p.sha256 for p in expected.raw_partitions]
    assert chain.feature_table_hash == expected.feature_table_hash
    assert chain.snapshots == expected.snapshots
    assert _tree(moved) == before  # read only


def test_read_only_commands_create_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workspace: {tmp_path / 'ws'}\n")
    for command in (["registry", "list"], ["registry", "history"], ["status"]):
        result = runner.invoke(app, [*command, "-c", str(cfg)])
        assert result.exit_code == 0, result.output
    assert not (tmp_path / "ws").exists()
    listing = runner.invoke(app, ["registry", "list", "-c", str(cfg)])
    assert "no versions of churn_predictor yet" in listing.output
    assert "alembic" not in listing.output.lower()


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["ingest", "--date", "2024-01-01"],
        ["features"],
        ["train"],
        ["run"],
        ["registry", "list"],
        ["backtest", "--cutoff", "2024-06-01"],
        ["simulate"],
        ["deploy", "status"],
    ],
)
def test_a_workspace_path_that_is_a_file_is_a_clear_error_from_every_command(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "ws").write_text("oops")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workspace: {tmp_path / 'ws'}\n")
    result = CliRunner().invoke(app, [*command, "-c", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "is a file, not a directory" in result.output
    assert "Traceback" not in result.output


def test_a_busy_workspace_gives_one_line_and_exit_75(tmp_path: Path) -> None:
    """A second writer fails at once while the first holds the workspace lock."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workspace: {tmp_path / 'ws'}\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from churnops.workspace import Workspace\n"
            f"with Workspace(Path({str(tmp_path / 'ws')!r})).lock('churnops features'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        for command in (
            ["ingest", "--date", "2024-01-01"],
            ["train", "--date", "2024-01-01"],
            ["run", "--date", "2024-01-01"],
            ["registry", "promote", "--to", "staging"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "churnops", *command, "-c", str(cfg)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if command[0] == "registry":  # nothing registered yet: it says so before it needs the lock
                assert result.returncode == 1
                continue
            assert result.returncode == 75, result.stderr
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, result.stderr
            assert "is busy: `churnops features`" in lines[0]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)


def test_a_run_resumes_at_a_step_with_the_kept_results_of_the_steps_before(original: Settings, tmp_path: Path) -> None:
    """`--from production` runs production, monitor and trigger only; a rerun of the whole finished day trains
    nothing new (the champion's own day reuses its runs) and registers nothing new."""
    from churnops.pipelines.promotion import Registered, model_registry
    from churnops.pipelines.steps import StepsError, TrainingDue, run_steps
    from churnops.pipelines.train import TrainResult

    copy = tmp_path / "ws"
    shutil.copytree(original.workspace, copy)
    settings = _settings(copy)
    ran: list[str] = []
    results = run_steps(settings, DAY, resume_from="production", on_start=lambda step: ran.append(step.name))
    assert ran == ["production", "monitor", "trigger"]
    assert results.get(Registered).version == "1"  # kept by the first run, read back
    assert results.get(TrainingDue).due is True
    assert results.get(TrainResult).logical_date == DAY.isoformat()

    ran.clear()
    again = run_steps(settings, DAY, on_start=lambda step: ran.append(step.name))
    assert "train" in ran  # the champion was trained for this date: a rerun reuses its runs
    assert again.get(TrainResult).reused
    assert again.get(Registered).reused
    assert model_registry(settings).holder("champion") == "1"

    with pytest.raises(StepsError, match="no step is called 'gates'"):
        run_steps(settings, DAY, resume_from="gates")
    fresh = _settings(tmp_path / "empty")
    with pytest.raises(StepsError, match="step simulate has not run for"):
        run_steps(fresh, DAY, resume_from="train")


def test_a_run_resumes_after_a_branch_an_airflow_run_did_not_take(original: Settings, tmp_path: Path) -> None:
    """Airflow's gate branch skips the way not taken without running it, so that step leaves no
    result: a resumption reads it as skipped, but a step that should have run is still missing."""
    from churnops.pipelines.steps import StepsError, results_dir, run_steps

    copy = tmp_path / "ws"
    shutil.copytree(original.workspace, copy)
    settings = _settings(copy)
    kept = results_dir(settings, DAY)
    assert json.loads((kept / "notify.json").read_text())["skipped"]  # the gate passed
    (kept / "notify.json").unlink()
    ran: list[str] = []
    run_steps(settings, DAY, resume_from="monitor", on_start=lambda step: ran.append(step.name))
    assert ran == ["monitor", "trigger"]
    (kept / "register.json").unlink()
    with pytest.raises(StepsError, match="step register has not run for"):
        run_steps(settings, DAY, resume_from="monitor")
