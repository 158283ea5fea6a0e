"""A day run after later days: rewind what those days decided, run the day, run them again.

A day builds on the days before it: the champion it keeps or replaces, the A/B test it decides,
the retrain monitoring's history asks for. So when the daily steps run for a date D while later
dates have already run (a first run out of order, or a rerun of an older date), their decisions
were taken without D's. To end in the state an in-order run leaves:

1. record the later dates as owed (`<workspace>/replay_pending.json`), then **rewind** the
   registry to the end of the day before D: the versions registered for D and later dates go,
   the alias moves made for them are undone (the audit log keeps them in
   `registry_audit.rewound.jsonl`), and because MLflow never reuses a version number the
   registered model is rebuilt with the versions kept under their own numbers;
2. run D's steps;
3. run each later date's steps again, in date order, crossing it off the owed list.

While dates are owed, a run of a date after D is refused (`check_pending`): it would build on
the rewound registry. Resuming D (`--from`) rewinds what later dates decided since D began, then
runs them again.

What needs no rewind: the feature snapshots of a date are a function of the orders before it, so
running them again rewrites the same content; monitoring's decisions are derived from its history
in day order (`monitoring.decide`), and a day run again replaces its own entry; training reuses
the completed run of the same inputs, so a day that trained before trains no further. Prediction
logs record what was served and are kept as they are.

The raw lake: a date's orders are those of its data interval (`pipelines.ingest.read_state`), so
the later dates' partitions are set aside (kept, not read; `set_aside_later`), the date ingests
the orders before its midnight, and each later date ingests its own again. A table updated in
place (customers) holds only its current rows, so the date reads them as they are now. A
stream's entries were acknowledged once: its reads take the entries of its parts set aside
again, by their id ranges, until one takes them whole.

The rewind is written to `<workspace>/registry_rewind.json` before it starts and removed when it
has finished; a run, or any command that writes to the registry, that finds the file (a crash
part-way) carries it out first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from churnops.settings import Settings


def runs_root(settings: Settings) -> Path:
    """Where each date's step results are kept (`runs/<date>/<step>.json`)."""
    return settings.paths.root / "runs"


def started_days(settings: Settings) -> list[date]:
    """The dates any step has run for, in date order."""
    root = runs_root(settings)
    if not root.is_dir():
        return []
    days = []
    for folder in root.iterdir():
        try:
            day = date.fromisoformat(folder.name)
        except ValueError:
            continue
        if any(folder.glob("*.json")):
            days.append(day)
    return sorted(days)


def later_days(settings: Settings, day: date) -> list[date]:
    """The dates after `day` that have already run (they are run again after it)."""
    return [d for d in started_days(settings) if d > day]


def span(dates: list[Any]) -> str:
    """`first` or `first to last`, for messages."""
    return f"{dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "")


def plan_path(settings: Settings) -> Path:
    """A rewind under way."""
    return settings.paths.root / "registry_rewind.json"


def pending_path(settings: Settings) -> Path:
    """The later dates a run rewound for and has still to run again."""
    return settings.paths.root / "replay_pending.json"


class ReplayPendingError(RuntimeError):
    """A date's run rewound the registry and has not run the later dates again yet: a run of
    a date after it would build on the rewound registry."""


def pending(settings: Settings) -> dict[str, Any] | None:
    """{"after": the date that rewound, "after_done": whether its own steps are done, "dates":
    the later dates still to run again}, if any."""
    path = pending_path(settings)
    return json.loads(path.read_text()) if path.exists() else None


def owe(settings: Settings, day: date, later: list[date]) -> None:
    """Record, before the rewind, that `later` run again after `day`."""
    from churnops.data.lake import write_local_atomic

    body = {"after": day.isoformat(), "after_done": False, "dates": [d.isoformat() for d in later]}
    write_local_atomic(str(pending_path(settings)), json.dumps(body).encode())


def done(settings: Settings, day: date) -> None:
    """A date's own steps are done: what is owed now is running the later dates again (or, for
    an owed date run on its own, as when resumed after its replay failed, it is crossed off)."""
    from churnops.data.lake import write_local_atomic

    body = pending(settings)
    if body is None:
        return
    if body["after"] == day.isoformat():
        body["after_done"] = True
        write_local_atomic(str(pending_path(settings)), json.dumps(body).encode())
    else:
        paid(settings, day)


def paid(settings: Settings, again: date) -> None:
    """A later date has run again (the record goes with the last one)."""
    from churnops.data.lake import write_local_atomic

    body = pending(settings)
    if body is None:
        return
    body["dates"] = [d for d in body["dates"] if d != again.isoformat()]
    if body["dates"]:
        write_local_atomic(str(pending_path(settings)), json.dumps(body).encode())
    else:
        pending_path(settings).unlink()


def check_pending(settings: Settings, day: date) -> None:
    """Refuse a run of a date after one whose run rewound the registry and stopped before
    running the later dates again (their decisions are undone until they do).

    Raises:
        ReplayPendingError: Such a run is owed.
    """
    body = pending(settings)
    if body is None or day.isoformat() <= body["after"]:
        return
    dates = body["dates"]
    # the date its run stopped at: itself, or the first later date whose run again failed
    stopped = dates[0] if body.get("after_done") else body["after"]
    if day.isoformat() == stopped:
        return
    raise ReplayPendingError(
        f"the run of {body['after']} rewound the registry and stopped before running "
        f"{len(dates)} later date(s) again ({span(dates)}); "
        f"finish it first: `churnops run --date {stopped} --from STEP` (the step that failed), or run "
        f"{stopped} again (under Airflow: clear the failed tasks)"
    )


def settle(settings: Settings, day: date) -> None:
    """Before a command moves aliases for a date (under the workspace lock): finish a rewind a
    crash cut short, and refuse while an earlier date's replay is owed (`check_pending`)."""
    finish_rewind(settings)
    check_pending(settings, day)


def finish_rewind(settings: Settings) -> bool:
    """Carry out a rewind a crash interrupted; whether there was one."""
    from churnops.pipelines.promotion import existing_registry

    path = plan_path(settings)
    if not path.exists():
        return False
    registry = existing_registry(settings)
    if registry is not None:
        _use_tracking(settings)
        _apply(registry, json.loads(path.read_text()))
    path.unlink()
    return True


def _use_tracking(settings: Settings) -> None:
    """MLflow finds a version's logged model through its global tracking URI (and a moved
    workspace's store is rebased first), as when the version was registered."""
    from churnops.training.tracking import use_tracking

    use_tracking(settings)


def _apply(registry: Any, plan: dict[str, Any]) -> None:
    from mlflow.exceptions import MlflowException

    from churnops.registry.mlflow_registry import RegistryError

    try:
        registry.apply_rewind(plan)
    except MlflowException as exc:
        raise RegistryError(
            f"rewinding the registry to before {plan['since']} failed part-way: {exc.message}; the plan is kept "
            "in registry_rewind.json and the next run carries it out once the cause is fixed"
        ) from exc


def set_aside_later(settings: Settings, later: list[date], say: Callable[[str], None]) -> None:
    """Take the later dates' raw partitions out of the lake's view before the date runs.

    The parts of every enabled source are set aside, files kept (`RawLake.set_aside`): the date
    then reads the rows of its own data interval, as it would have run before them, and each
    later date ingests its own again when it runs again. A stream's entries, acknowledged once,
    are read again by the id ranges of its parts set aside (`pipelines.ingest.read_state`).
    """
    from churnops.pipelines.ingest import make_lake

    lake = make_lake(settings)
    sources = [s.name for s in settings.enabled_sources()]
    moved = 0
    for table in lake.tables():
        for day in later:
            moved += len(lake.set_aside(table, day, sources, f"an earlier date ran after {day}: ingested again"))
    if moved:
        say(f"raw lake: {moved} part(s) of {span(later)} set aside; those dates ingest again when they run again")


def rewind(settings: Settings, since: date, say: Callable[[str], None]) -> None:
    """Undo in the registry what the runs of `since` and later dates did (see the module)."""
    from churnops.data.lake import write_local_atomic
    from churnops.pipelines.promotion import existing_registry

    finish_rewind(settings)
    registry = existing_registry(settings)
    plan = registry.rewind_plan(since.isoformat()) if registry is not None else None
    if registry is None or plan is None:
        return
    _use_tracking(settings)
    write_local_atomic(str(plan_path(settings)), json.dumps(plan, default=str).encode())
    _apply(registry, plan)
    plan_path(settings).unlink()
    dropped = ", ".join(str(v) for v in plan["dropped"])
    kept = ", ".join(f"{alias} v{version}" for alias, version in sorted(plan["aliases"].items())) or "no aliases"
    by_hand = (
        f" ({plan['hand_moves']} of them made by hand with `churnops registry`: they are not made again)"
        if plan["hand_moves"]
        else ""
    )
    say(
        f"registry rewound to before {since}: "
        + (f"version(s) {dropped} removed, " if dropped else "")
        + f"{len(plan['undone'])} alias move(s) undone{by_hand}; {kept}"
    )
