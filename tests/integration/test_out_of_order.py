"""Dates run out of order, or an older date run again, end as running them once in order does."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from churnops.settings import Settings, load_settings
from tests.integration.test_workspace import CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST = date(2024, 12, 25)
DAYS = [FIRST + timedelta(days=i) for i in range(7)]
SHUFFLED = [DAYS[i] for i in (6, 2, 0, 4, 1, 5, 3)]
# a champion older than a day is an alarm on one check and triggers a retrain at once: the
# first date trains version 1, and the later dates retrain and stage versions 2 to 4, so what a
# date decides depends on the dates before it
AGEING = {"monitoring": {"consecutive_checks": 1, "retrain_cooldown_days": 0, "max_champion_age_days": 1}}


def _settings(workspace: Path) -> Settings:
    return load_settings(None, workspace=str(workspace), **{**CONFIG, **AGEING})


def _run(settings: Settings, days: list[date], **kwargs: Any) -> list[str]:
    from churnops.pipelines.steps import run_steps

    said: list[str] = []
    for day in days:
        run_steps(settings, day, progress=said.append, **kwargs)
    return said


def _state(settings: Settings) -> dict[str, Any]:
    """What the dates decided and computed: registry versions (their dates, candidates and
    holdout metrics), aliases, the audited moves, monitoring's history, each date's training
    decision, and the content of every feature snapshot."""
    from churnops.data.tables import read_customers
    from churnops.pipelines.features import feature_table
    from churnops.pipelines.ingest import make_lake
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    assert registry is not None
    root = settings.paths.root
    return {
        "versions": {
            v["version"]: {k: v["tags"].get(k) for k in ("logical_date", "candidate", "holdout_metrics")}
            for v in registry.versions()
        },
        "aliases": {alias: registry.holder(alias) for alias in ("challenger", "staging", "champion")},
        "moves": [(m.alias, m.version, m.kind, m.logical_date, m.reason) for m in registry.history()],
        "history": json.loads((root / "monitoring" / "history.json").read_text()),
        "due": {
            day.isoformat(): json.loads((root / "runs" / day.isoformat() / "due.json").read_text())["result"]
            for day in DAYS
        },
        "snapshots": {k: v.content_hash for k, v in feature_table(settings).manifest().snapshots.items()},
        # the raw partitions of the orders and the catalog; customers are a table updated in
        # place, so a date run late reads them as they are now, not as they were: their
        # partitions differ, the latest version of each customer (what every stage reads) not
        "lake": {
            table: {m.ingest_date: m.sha256 for m in make_lake(settings).manifests(table) if m.parts}
            for table in ("orders", "products")
        },
        "customers": read_customers(make_lake(settings)).sort_values("customer_id").to_dict("list"),
    }


@pytest.fixture(scope="module")
def in_order(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = _settings(tmp_path_factory.mktemp("in-order") / "ws")
    _run(settings, DAYS)
    state = _state(settings)
    # the scenario decides something on most dates, or the comparisons below would prove little
    assert {k: v["logical_date"] for k, v in state["versions"].items()} == {
        "1": "2024-12-25",
        "2": "2024-12-29",
        "3": "2024-12-30",
        "4": "2024-12-31",
    }
    assert state["aliases"] == {"challenger": "4", "staging": "4", "champion": "1"}
    trained = [d for d, due in state["due"].items() if due["due"]]
    assert trained == ["2024-12-25", "2024-12-29", "2024-12-30", "2024-12-31"]
    assert list(state["lake"]["orders"]) == [d.isoformat() for d in DAYS]  # one partition a date
    return state


def test_dates_run_out_of_order_end_as_in_order(in_order: dict[str, Any], tmp_path: Path) -> None:
    """Seven dates run in a shuffled order: each date run before a later one rewinds what the
    later dates decided and runs them again, so the registry (version numbers, their dates and
    models, aliases, the audited moves), monitoring's history, each date's training decision and
    the feature snapshots equal seven runs in date order. The undone moves are kept aside."""
    settings = _settings(tmp_path / "ws")
    said = _run(settings, SHUFFLED)
    assert _state(settings) == in_order
    assert any(line.startswith("registry rewound to before 2024-12-27: version(s) 1 removed") for line in said), said
    assert "running 2024-12-31 again, after 2024-12-25" in said
    rewound = settings.paths.registry_audit.with_name("registry_audit.rewound.jsonl")
    undone = [json.loads(line) for line in rewound.read_text().splitlines()]
    assert undone
    assert all(line["rewound_since"] <= line["logical_date"] for line in undone)
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    assert registry is not None
    # the newest date ran first and its version 1 was removed: what served as version 1 then is on record
    assert next(r["logical_date"] for r in registry.removed_as("1")) == DAYS[-1].isoformat()
    assert not (settings.paths.root / "registry_rewind.json").exists()


def test_without_the_replay_the_order_shows(in_order: dict[str, Any], tmp_path: Path) -> None:
    """The check above can fail: the newest date first, then the oldest, without running the
    later date again, leaves version 1 trained for the newest date."""
    settings = _settings(tmp_path / "ws")
    _run(settings, [DAYS[-1], DAYS[0]], replay=False)
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    assert registry is not None
    trained_for = registry.version_tags("1")["logical_date"]
    assert trained_for == DAYS[-1].isoformat() != in_order["versions"]["1"]["logical_date"]


def test_an_older_date_run_again_and_a_rewind_cut_short_change_nothing(
    in_order: dict[str, Any], tmp_path: Path
) -> None:
    """Running an older date again (after the later ones) rewinds and replays them to the same
    state; a rewind a crash cut short (the registered model deleted, nothing rebuilt yet) is
    finished by the next run before anything else."""
    import shutil

    from churnops.pipelines.promotion import existing_registry
    from churnops.pipelines.replay import plan_path

    settings = _settings(tmp_path / "ws")
    _run(settings, DAYS)
    copy = _settings(tmp_path / "copy")
    shutil.copytree(settings.paths.root, copy.paths.root)
    _run(settings, [DAYS[1]])
    assert _state(settings) == in_order

    registry = existing_registry(copy)
    assert registry is not None
    plan = registry.rewind_plan(DAYS[1].isoformat())  # what running DAYS[1] again begins with
    assert plan is not None
    assert plan["dropped"] == [2, 3, 4]
    plan_path(copy).write_text(json.dumps(plan))
    registry.client.delete_registered_model(copy.mlflow.model_name)  # the crash: nothing rebuilt yet
    said = _run(copy, [DAYS[1]])
    assert said[0] == "finished a registry rewind an earlier run began"
    assert not plan_path(copy).exists()
    assert _state(copy) == in_order
