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


def test_status_shows_the_steps_the_run_log_does_not_hold_from_their_kept_results(tmp_path: Path) -> None:
    """monitor, production and the other steps write no run log record: their newest kept result
    is shown (a newer skip does not hide a run that did something); logged steps come from the log."""
    import json
    import os

    from churnops.pipelines.status import _newest_runs

    settings = load_settings(None, workspace=str(tmp_path / "ws"))
    settings.paths.root.mkdir(parents=True)
    append_run(settings.paths, {"command": "train", "date": "2025-01-01", "status": "ok"})
    kept = [
        ("2025-01-01", "train", True, 1_700_000_000),  # logged: the log's record stands
        ("2025-01-01", "monitor", False, 1_700_000_100),
        ("2025-01-02", "monitor", False, 1_700_000_300),
        ("2025-01-01", "staging", False, 1_700_000_200),
        ("2025-01-02", "staging", True, 1_700_000_400),
    ]
    for day, step, skipped, at in kept:
        path = settings.paths.root / "runs" / day / f"{step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": step, "skipped": skipped}))
        os.utime(path, (at, at))
    runs = {r["command"]: (r["date"], r["status"]) for r in _newest_runs(settings)}
    assert runs == {
        "train": ("2025-01-01", "ok"),
        "monitor": ("2025-01-02", "ok"),
        "staging": ("2025-01-01", "ok"),
    }
