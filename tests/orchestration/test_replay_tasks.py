"""The Airflow tasks' guards around dates run out of order, called as Airflow calls them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from churnops.orchestration import airflow as adapter
from churnops.pipelines import replay
from churnops.pipelines.replay import ReplayPendingError
from churnops.settings import Settings, load_settings


def _workspace(tmp_path: Path, ran: list[str]) -> tuple[dict[str, object], Settings]:
    config = tmp_path / "churnops.yaml"
    config.write_text(yaml.safe_dump({"workspace": str(tmp_path / "ws")}))
    settings = load_settings(config)
    for day in ran:  # dates whose steps ran (what `later_days` reads)
        folder = settings.paths.root / "runs" / day
        folder.mkdir(parents=True)
        (folder / "trigger.json").write_text(json.dumps({"step": "trigger", "skipped": True}))
    return {"params": {"config": str(config)}}, settings


def _at(context: dict[str, object], day: str) -> dict[str, object]:
    return {**context, "data_interval_end": datetime.fromisoformat(day).replace(tzinfo=UTC)}


def test_a_task_of_an_older_date_cleared_on_its_own_is_refused(tmp_path: Path) -> None:
    """Later dates ran and this date's run did not rewind for them: its tasks after the first,
    and its replay task, refuse instead of acting on the later dates' decisions."""
    context, settings = _workspace(tmp_path, ["2025-01-01", "2025-01-03"])
    with pytest.raises(ReplayPendingError, match="clear the whole run, from its first task"):
        adapter._refuse_a_partial_rerun(settings, datetime(2025, 1, 1).date())
    with pytest.raises(ReplayPendingError):
        adapter.replay_task(**_at(context, "2025-01-01"))
    # the run that rewound for them may go on
    replay.owe(settings, datetime(2025, 1, 1).date(), [datetime(2025, 1, 3).date()])
    adapter._refuse_a_partial_rerun(settings, datetime(2025, 1, 1).date())


def test_the_date_a_failed_replay_stopped_at_is_crossed_off_by_its_own_run(tmp_path: Path) -> None:
    """An older date's replay failed at the newest date; cleared and run again on its own, that
    date's replay task finds nothing after it to run, crosses it off and skips: the refusal of
    newer dates ends."""
    from airflow.sdk.exceptions import AirflowSkipException

    context, settings = _workspace(tmp_path, ["2025-01-01", "2025-01-03"])
    older, newest = datetime(2025, 1, 1).date(), datetime(2025, 1, 3).date()
    replay.owe(settings, older, [newest])
    replay.done(settings, older)
    with pytest.raises(ReplayPendingError, match="--date 2025-01-03 --from STEP"):
        replay.check_pending(settings, datetime(2025, 1, 4).date())
    replay.check_pending(settings, newest)  # the date to finish may run
    with pytest.raises(AirflowSkipException):
        adapter.replay_task(**_at(context, "2025-01-03"))
    assert replay.pending(settings) is None
    replay.check_pending(settings, datetime(2025, 1, 4).date())


def test_status_shows_the_dates_owed_and_a_rewind_cut_short(tmp_path: Path) -> None:
    """`churnops status` names the dates still to run again, the date to finish first, and a
    rewind a crash cut short."""
    from typer.testing import CliRunner

    from churnops.cli import app

    context, settings = _workspace(tmp_path, ["2025-01-01", "2025-01-03"])
    config = str(context["params"]["config"])  # type: ignore[index]
    quiet = CliRunner().invoke(app, ["status", "-c", config], env={"COLUMNS": "200"})
    assert quiet.exit_code == 0, quiet.output
    assert "dates owed" not in quiet.output
    replay.owe(settings, datetime(2025, 1, 1).date(), [datetime(2025, 1, 3).date()])
    replay.done(settings, datetime(2025, 1, 1).date())
    replay.plan_path(settings).write_text("{}")
    shown = CliRunner().invoke(app, ["status", "-c", config], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "dates owed: 1 later date(s) (2025-01-03) to run again after 2025-01-01" in shown.output
    assert "churnops run --date 2025-01-03 --from STEP" in shown.output
    assert "a rewind was cut short" in shown.output
