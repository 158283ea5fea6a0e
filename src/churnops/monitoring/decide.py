"""Decisions that do not cry wolf: hysteresis, alerts once per occurrence, a retrain cooldown.

Each monitored day records, per condition, whether it held (True), did not (False), or could not
be judged (None: too few predictions, no labels yet), in `<workspace>/monitoring/history.json`.
Everything is then derived from that history in day order, so rerunning a day, or running days
out of order, gives the same decisions:

- a condition is in alarm once it has held on `monitoring.consecutive_checks` judged days in a
  row; a False day ends the streak, a None day neither extends nor ends it;
- each occurrence of an alarm is alerted once (its key names the day the streak began), and an
  alarm that clears and comes back later is a new occurrence, alerted again;
- a day records the champion it judged (`CHAMPION`); when the champion changes, every streak
  starts again: the new model's alarms are its own, alerted as new occurrences;
- a retrain is triggered by an alarm, at most once per `monitoring.retrain_cooldown_days`;
  a trigger the training steps declined (a challenger's A/B test decides first) is marked
  `DECLINED` on its day and starts no cooldown, so the next check in alarm triggers again.

Conditions: `data_drift` (the data set drifted), `newcomer_drift` (the newcomers' features
drifted, by the same rule: where a new segment shows), `realized_f1` and `estimated_f1` (a version's
F1 below `monitoring.min_f1`, realized from labels or estimated by CBPE), `champion_age` (the
champion's logical date older than `monitoring.max_champion_age_days`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from churnops.settings import Settings

CONDITIONS = ("data_drift", "newcomer_drift", "realized_f1", "estimated_f1", "champion_age")
DECLINED = "retrain_declined"  # on a checked day: the retrain it triggered was not run
CHAMPION = "champion"  # on a checked day: the version judged (the day's champion)


@dataclass
class Decision:
    """What a day's check decided."""

    day: str
    holds: dict[str, bool | None] = field(default_factory=dict)
    alarms: dict[str, str] = field(default_factory=dict)  # condition -> the day its streak began
    raised: list[str] = field(default_factory=list)  # alert keys sent by this check
    retrain: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Decision:
        """The inverse of `as_dict`."""
        return cls(**body)


def conditions(settings: Settings, monitored: Any, champion_day: date | None) -> dict[str, bool | None]:
    """Whether each condition held on the monitored day (None: it could not be judged)."""
    cfg = settings.monitoring

    def judged(group: dict[str, Any]) -> bool:  # the day's champion's own, once it is known
        return monitored.champion is None or group.get("version") == monitored.champion

    realized = [g["f1"] for g in (monitored.realized or {}).get("groups", []) if judged(g)]
    estimated = [
        e["estimated_f1"]
        for e in monitored.estimated
        if e["estimated_f1"] is not None and e["predictions"] >= cfg.min_sample and judged(e)
    ]
    day = date.fromisoformat(monitored.day)
    return {
        "data_drift": monitored.dataset_drift,
        "newcomer_drift": (monitored.newcomers or {}).get("dataset_drift"),
        "realized_f1": min(realized) < cfg.min_f1 if realized else None,
        "estimated_f1": min(estimated) < cfg.min_f1 if estimated else None,
        "champion_age": (day - champion_day).days > cfg.max_champion_age_days if champion_day else None,
    }


def history_path(settings: Settings) -> Path:
    """Every monitored day's conditions."""
    return settings.paths.root / "monitoring" / "history.json"


def record_and_decide(
    settings: Settings, day: date, holds: dict[str, bool | None], champion: str | None = None
) -> Decision:
    """Record the day's conditions (and the champion judged), derive the decision from the whole
    history, send new alerts."""
    from churnops.alerts import Alert, raise_alert
    from churnops.data.lake import write_local_atomic

    path = history_path(settings)
    history: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    declined = history.get(day.isoformat(), {}).get(DECLINED)
    history[day.isoformat()] = (
        dict(holds) | ({CHAMPION: champion} if champion else {}) | ({DECLINED: True} if declined else {})
    )
    write_local_atomic(str(path), json.dumps(history, indent=1, sort_keys=True).encode())
    decision = derive(history, day, settings.monitoring.consecutive_checks, settings.monitoring.retrain_cooldown_days)
    for condition, since in decision.alarms.items():
        key = f"monitor-{condition}-since-{since}"
        sent = raise_alert(
            settings.alerts,
            Alert(
                key=key,
                title=f"{settings.mlflow.model_name}: {_TITLES[condition]} on {_checks(settings)} (since {since})",
                details={"condition": condition, "day": day.isoformat(), "retrain": decision.retrain},
            ),
        )
        if sent:
            decision.raised.append(key)
    return decision


def retrain_trigger(settings: Settings, day: date) -> str | None:
    """Why the training steps run on logical date `day` because of monitoring, if they do.

    The monitor and trigger steps of logical date D check the day D - 1; a retrain triggered runs with
    the next logical date's training steps. So the trigger for `day` is the decision of the
    check of `day - 2`, derived from the history like every decision (a pure function of it).
    """
    path = history_path(settings)
    if not path.exists():
        return None
    history = json.loads(path.read_text())
    checked = checked_for(day)
    if checked.isoformat() not in history:
        return None
    cfg = settings.monitoring
    decision = derive(history, checked, cfg.consecutive_checks, cfg.retrain_cooldown_days)
    if not decision.retrain:
        return None
    return f"monitoring triggered a retrain on its check of {checked}: {', '.join(sorted(decision.alarms))}"


def checked_for(day: date) -> date:
    """The checked day whose decision the training steps of logical date `day` act on."""
    return day - timedelta(days=2)


def mark_retrain(settings: Settings, day: date, declined: bool) -> None:
    """Record whether the retrain `retrain_trigger(settings, day)` reported was declined (it then
    starts no cooldown) or run (a rerun that now trains takes a mark of an earlier run back)."""
    from churnops.data.lake import write_local_atomic

    path = history_path(settings)
    history = json.loads(path.read_text()) if path.exists() else {}
    checked = checked_for(day).isoformat()
    if checked in history and bool(history[checked].get(DECLINED)) != declined:
        if declined:
            history[checked][DECLINED] = True
        else:
            history[checked].pop(DECLINED)
        write_local_atomic(str(path), json.dumps(history, indent=1, sort_keys=True).encode())


def _checks(settings: Settings) -> str:
    needed = settings.monitoring.consecutive_checks
    return "the last check" if needed == 1 else f"{needed} checks in a row"


_TITLES = {
    "data_drift": "the served data drifted",
    "newcomer_drift": "the newcomers' data drifted (a new segment?)",
    "realized_f1": "realized F1 below the floor",
    "estimated_f1": "estimated F1 (CBPE) below the floor",
    "champion_age": "the champion is older than allowed",
}


def derive(history: dict[str, dict[str, Any]], day: date, needed: int, cooldown_days: int) -> Decision:
    """The decision for `day` from the history of days up to it (a pure function of both)."""
    streak = dict.fromkeys(CONDITIONS, 0)
    began: dict[str, str | None] = dict.fromkeys(CONDITIONS, None)
    last_retrain: date | None = None
    judged: str | None = None  # the champion of the days before
    decision = Decision(day=day.isoformat())
    for name in sorted(k for k in history if date.fromisoformat(k) <= day):
        holds = history[name]
        champion = holds.get(CHAMPION)
        if champion is not None:
            if judged is not None and champion != judged:  # another model: its streaks are its own
                streak, began = dict.fromkeys(CONDITIONS, 0), dict.fromkeys(CONDITIONS, None)
            judged = champion
        for condition in CONDITIONS:
            value = holds.get(condition)
            if value is None:
                continue
            if value:
                streak[condition] += 1
                began[condition] = began[condition] or name
            else:
                streak[condition], began[condition] = 0, None
        alarms = {c: str(began[c]) for c in CONDITIONS if streak[c] >= needed}
        current = date.fromisoformat(name)
        retrain = bool(alarms) and (last_retrain is None or (current - last_retrain).days >= cooldown_days)
        if retrain and not holds.get(DECLINED):
            last_retrain = current
        if name == day.isoformat():
            decision.holds = {c: v for c, v in holds.items() if c in CONDITIONS}
            decision.alarms = alarms
            decision.retrain = retrain
            if alarms and not retrain and last_retrain is not None:
                decision.reason = (
                    f"in alarm, but a retrain was triggered on {last_retrain} (cooldown {cooldown_days} days)"
                )
            elif retrain:
                decision.reason = f"retrain: {', '.join(sorted(alarms))}"
    return decision
