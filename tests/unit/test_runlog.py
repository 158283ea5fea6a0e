"""The run log `churnops status` reads."""

from __future__ import annotations

from pathlib import Path

from churnops.runlog import append_run, newest_runs
from churnops.settings import load_settings


def test_status_shows_the_newest_run_of_each_step_so_daily_steps_do_not_hide_training(tmp_path: Path) -> None:
    paths = load_settings(None, workspace=str(tmp_path / "ws")).paths
    paths.root.mkdir(parents=True)
    for command, day in [("ingest", "d1"), ("features", "d1"), ("train", "d1"), ("ingest", "d2"), ("features", "d2")]:
        append_run(paths, {"command": command, "date": day, "status": "ok"})
    assert [(r["command"], r["date"]) for r in newest_runs(paths)] == [
        ("train", "d1"),
        ("ingest", "d2"),
        ("features", "d2"),
    ]
    assert newest_runs(load_settings(None, workspace=str(tmp_path / "empty")).paths) == []
