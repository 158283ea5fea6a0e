"""Monitoring decisions: hysteresis, one alert per occurrence, a retrain cooldown, order independence."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from churnops.monitoring.decide import derive, record_and_decide
from churnops.settings import Settings, load_settings

D0 = date(2025, 3, 1)


def _history(drift: list[bool | None]) -> dict[str, dict[str, bool | None]]:
    return {(D0 + timedelta(days=i)).isoformat(): {"data_drift": v} for i, v in enumerate(drift)}


def _day(i: int) -> date:
    return D0 + timedelta(days=i)


def test_an_alarm_needs_the_condition_on_consecutive_checks() -> None:
    history = _history([True, True, False, True, True, True])
    assert derive(history, _day(1), 3, 7).alarms == {}
    assert derive(history, _day(4), 3, 7).alarms == {}
    assert derive(history, _day(5), 3, 7).alarms == {"data_drift": _day(3).isoformat()}


def test_a_day_without_a_verdict_neither_extends_nor_ends_a_streak() -> None:
    history = _history([True, None, True, None, True])
    assert derive(history, _day(4), 3, 7).alarms == {"data_drift": _day(0).isoformat()}
    assert derive(history, _day(3), 3, 7).alarms == {}


def test_a_retrain_is_triggered_at_most_once_per_cooldown() -> None:
    history = _history([True] * 12)
    triggered = [i for i in range(12) if derive(history, _day(i), 3, 7).retrain]
    assert triggered == [2, 9]
    held = derive(history, _day(5), 3, 7)
    assert held.alarms
    assert not held.retrain
    assert f"triggered on {_day(2)}" in held.reason


def test_a_declined_retrain_starts_no_cooldown(tmp_path: Path) -> None:
    """A trigger the training steps did not act on (an A/B test decided first) is not a retrain:
    the next check in alarm triggers again, and the cooldown runs from the retrain that ran."""
    from churnops.monitoring.decide import mark_retrain, retrain_trigger

    settings = _settings(tmp_path)  # two checks in a row make an alarm; cooldown 7 days
    for i in range(12):
        record_and_decide(settings, _day(i), {"data_drift": True})
    assert retrain_trigger(settings, _day(3))  # the check of day 1
    assert retrain_trigger(settings, _day(4)) is None  # cooling down
    mark_retrain(settings, _day(3), declined=True)
    record_and_decide(settings, _day(1), {"data_drift": True})  # a rerun of that check keeps the mark
    triggered = [i for i in range(14) if retrain_trigger(settings, _day(i))]
    assert triggered == [3, 4, 11]  # day 2's check triggers again; then the cooldown runs from it
    held = derive(json.loads((settings.paths.root / "monitoring" / "history.json").read_text()), _day(5), 2, 7)
    assert f"triggered on {_day(2)}" in held.reason
    assert held.holds == {"data_drift": True}
    mark_retrain(settings, _day(3), declined=False)  # a rerun of that date found no test and trained
    assert [i for i in range(14) if retrain_trigger(settings, _day(i))] == [3, 10]


def test_status_names_the_alarms_the_monitoring_history_is_in(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from churnops.cli import app

    settings = _settings(tmp_path)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(settings.model_dump(mode="json")))
    quiet = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert quiet.exit_code == 0, quiet.output
    assert "monitoring:" not in quiet.output  # nothing checked yet
    for i, value in enumerate([False, True, True, True]):
        record_and_decide(settings, _day(i), {"data_drift": value})
    shown = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert f"monitoring: 4 day(s) checked, the last {_day(3)}; alarms: data_drift since {_day(1)}" in shown.output


def test_a_new_champion_starts_its_own_streaks_and_is_alerted_anew(tmp_path: Path) -> None:
    """Version 1 drifted since day 0; version 2, champion from day 4, drifts too: its alarm is its
    own (since day 4, after two checks of it), alerted as a new occurrence."""
    settings = _settings(tmp_path)
    for i in range(8):
        record_and_decide(settings, _day(i), {"data_drift": True}, champion="1" if i < 4 else "2")
    history = json.loads((settings.paths.root / "monitoring" / "history.json").read_text())
    assert derive(history, _day(3), 2, 7).alarms == {"data_drift": _day(0).isoformat()}
    assert derive(history, _day(4), 2, 7).alarms == {}  # one check of version 2
    assert derive(history, _day(5), 2, 7).alarms == {"data_drift": _day(4).isoformat()}
    keys = [a["key"] for a in _alerts(settings)]
    assert keys == [f"monitor-data_drift-since-{_day(0)}", f"monitor-data_drift-since-{_day(4)}"]
    # days recorded without a champion (before this was kept) do not break a streak
    assert derive(_history([True] * 4), _day(3), 2, 7).alarms == {"data_drift": _day(0).isoformat()}


def test_the_decision_depends_on_the_history_not_on_the_order_days_were_checked() -> None:
    values = [True, False, True, True, True, False, True]
    forward = _history(values)
    backward = dict(reversed(list(forward.items())))
    for i in range(len(values)):
        assert derive(forward, _day(i), 2, 3) == derive(backward, _day(i), 2, 3)


def _settings(tmp_path: Path) -> Settings:
    return load_settings(None, workspace=str(tmp_path / "ws"), monitoring={"consecutive_checks": 2})


def _alerts(settings: Settings) -> list[dict[str, object]]:
    path = Path(settings.alerts.file)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_occurrence_is_alerted_once_and_a_new_occurrence_again(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sequence = [True, True, True, False, True, True]
    for i, value in enumerate(sequence):
        record_and_decide(settings, _day(i), {"data_drift": value})
    again = record_and_decide(settings, _day(2), {"data_drift": True})  # a rerun of a checked day
    assert again.raised == []
    keys = [a["key"] for a in _alerts(settings)]
    assert keys == [f"monitor-data_drift-since-{_day(0)}", f"monitor-data_drift-since-{_day(4)}"]
    history = json.loads((settings.paths.root / "monitoring" / "history.json").read_text())
    assert len(history) == len(sequence)


def test_a_retrain_triggered_by_a_check_runs_with_the_next_logical_dates_training(tmp_path: Path) -> None:
    """The check of day C runs in the pipeline of C + 1; its trigger trains on C + 2, and only then
    (the cooldown holds the next one back)."""
    from churnops.monitoring.decide import retrain_trigger

    settings = _settings(tmp_path)
    assert retrain_trigger(settings, _day(5)) is None  # nothing checked yet
    for i, value in enumerate([True, True, True, True]):
        record_and_decide(settings, _day(i), {"data_drift": value})
    due = {i: retrain_trigger(settings, _day(i)) for i in range(7)}
    assert [i for i, why in due.items() if why] == [3]  # two checks in a row: the check of day 1 made the alarm
    assert f"its check of {_day(1)}: data_drift" in str(due[3])


def test_a_webhook_receives_each_occurrence_of_an_alarm_exactly_once(tmp_path: Path) -> None:
    """A local receiver: two occurrences of drift (and reruns of their days) are two posts."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts: list[dict[str, object]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = load_settings(
            None,
            workspace=str(tmp_path / "ws"),
            monitoring={"consecutive_checks": 2},
            alerts={"webhook_url": f"http://127.0.0.1:{server.server_port}/hook"},
        )
        for i, value in enumerate([True, True, True, False, True, True]):
            record_and_decide(settings, _day(i), {"data_drift": value})
            record_and_decide(settings, _day(i), {"data_drift": value})  # the same check again
    finally:
        server.shutdown()
    assert len(posts) == 2
    assert f"since {_day(0)}" in str(posts[0]["text"])
    assert f"since {_day(4)}" in str(posts[1]["text"])
