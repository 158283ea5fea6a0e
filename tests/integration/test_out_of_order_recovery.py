"""Recovering from what goes wrong around dates run out of order: failed runs resumed, a
rewind cut short, a prediction served by a version a rewind removed, the CLI's view, and a
rewind through a real MLflow tracking server."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from churnops.settings import Settings, load_settings
from tests.integration.test_out_of_order import AGEING, DAYS, _run, _settings
from tests.integration.test_workspace import CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_cli_says_what_runs_again_and_no_replay_runs_the_date_alone(tmp_path: Path) -> None:
    """`churnops run` names each later date it runs again under a rule of its own;
    `--no-replay` runs the older date alone and leaves the later date's run as it was."""
    import yaml
    from typer.testing import CliRunner

    from churnops.cli import app
    from churnops.pipelines.promotion import existing_registry

    config = tmp_path / "churnops.yaml"
    config.write_text(yaml.safe_dump({"workspace": str(tmp_path / "ws"), **CONFIG, **AGEING}))
    settings = load_settings(config)
    cli = CliRunner()
    later = settings.paths.root / "runs" / DAYS[1].isoformat() / "due.json"

    def run(*args: str) -> str:
        result = cli.invoke(app, ["run", "-c", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("--date", DAYS[1].isoformat())
    before = later.read_text()
    # a resumption that cannot start (the date never ran) fails before it rewinds anything
    wrong = cli.invoke(app, ["run", "-c", str(config), "--date", DAYS[0].isoformat(), "--from", "train"])
    assert wrong.exit_code == 2, wrong.output
    assert "has not run for" in wrong.output
    assert not (settings.paths.root / "replay_pending.json").exists()
    assert {v["version"] for v in existing_registry(settings).versions()} == {"1"}  # type: ignore[union-attr]
    alone = run("--date", DAYS[0].isoformat(), "--no-replay")
    assert "again" not in alone
    assert later.read_text() == before
    registry = existing_registry(settings)
    assert registry is not None
    assert registry.version_tags("1")["logical_date"] == DAYS[1].isoformat()  # left as the later date made it

    out = run("--date", DAYS[0].isoformat())
    assert f"1 later date(s) have run ({DAYS[1]}): {DAYS[0]} runs first" in out
    assert f"churnops run {DAYS[1]} (again, after {DAYS[0]})" in out
    assert "version(s) 1 removed" in out
    assert f"raw lake: 3 part(s) of {DAYS[1]} set aside" in out  # orders, customers, the catalog
    assert registry.version_tags("1")["logical_date"] == DAYS[0].isoformat()
    status = cli.invoke(app, ["status", "-c", str(config)])
    assert "raw lake parts set aside (kept, not read; an older date ran after theirs): " in status.output
    assert json.loads(later.read_text())["result"]["due"] is False  # version 1 is the champion, trained before it


def test_a_prediction_served_by_a_removed_version_traces_to_that_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1 serves, then a date run before its date removes it and registers another
    version 1. Servers on the wall clock: a prediction logged before the rewind traces to the
    removed version's run and date, one logged after it to the new version 1. Servers on the
    simulated shop's calendar (this workspace): the time cannot tell, so the lineage names both."""
    from datetime import UTC, datetime

    from churnops.pipelines import lineage
    from churnops.pipelines.steps import run_steps
    from churnops.pipelines.train import TrainResult
    from churnops.serving.prediction_log import LogRecord, PredictionLog

    settings = _settings(tmp_path / "ws")

    def serve(request_id: str) -> None:
        log = PredictionLog(settings.serving.prediction_log_url)
        now = datetime.now(UTC)
        log.put([LogRecord(request_id, now, 7, "churn_predictor", "1", "champion", ["x"], [1.0], 0.9, 1, 1.0)])
        log.close()

    newer = run_steps(settings, DAYS[1]).get(TrainResult)
    serve("before-the-rewind")
    older = run_steps(settings, DAYS[0]).get(TrainResult)
    serve("after-the-rewind")
    assert newer.run_id != older.run_id

    assert not lineage.served_on_the_wall_clock(settings)
    for request_id in ("before-the-rewind", "after-the-rewind"):
        chain = lineage.prediction_lineage(settings, request_id)
        assert (chain.version, chain.run_id) == ("1", older.run_id)
        assert [(m["run_id"], m["logical_date"]) for m in chain.prediction["may_have_been"]] == [
            (newer.run_id, DAYS[1].isoformat())
        ]

    monkeypatch.setattr(lineage, "served_on_the_wall_clock", lambda settings: True)
    before = lineage.prediction_lineage(settings, "before-the-rewind")
    assert (before.version, before.run_id, before.logical_date) == ("1 (removed)", newer.run_id, DAYS[1].isoformat())
    assert before.aliases == []
    assert [m["kind"] for m in before.alias_moves][-1] == "removed"
    assert {m["alias"] for m in before.alias_moves if m["kind"] == "move"} == {"challenger", "champion"}
    assert before.raw_partitions  # the removed run's own lineage.json, read back
    after = lineage.prediction_lineage(settings, "after-the-rewind")
    assert (after.version, after.run_id, after.logical_date) == ("1", older.run_id, DAYS[0].isoformat())
    assert "champion" in after.aliases
    assert "may_have_been" not in after.prediction


def _registry_dates(settings: Settings) -> dict[str, Any]:
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    assert registry is not None
    return {
        "versions": {v["version"]: v["tags"].get("logical_date") for v in registry.versions()},
        "aliases": {alias: registry.holder(alias) for alias in ("challenger", "staging", "champion")},
        "moves": [(m.alias, m.version, m.kind, m.logical_date) for m in registry.history()],
    }


def test_failed_runs_resume_to_the_in_order_state_and_a_replay_owed_blocks_newer_dates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The oldest date fails at `register` while it is the newest; a newer date runs; the
    oldest resumes `--from register`: the newer date's decisions are rewound and it runs again.
    2. The oldest date runs again and fails after its rewind: until it is resumed, a run of a
    newer date is refused (it would build on the rewound registry); resumed, the newer dates run
    again and the refusal ends. 3. A later date's run again fails: it is the one to resume.
    Each ends as the dates run in order."""
    from churnops.pipelines import promotion
    from churnops.pipelines.replay import ReplayPendingError, pending
    from churnops.pipelines.steps import run_steps
    from churnops.registry.mlflow_registry import RegistryError

    expected = _settings(tmp_path / "in-order")
    _run(expected, DAYS[:3])
    settings = _settings(tmp_path / "ws")
    register = promotion.register

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RegistryError("the registry is unreachable")

    monkeypatch.setattr(promotion, "register", broken)
    with pytest.raises(RegistryError):
        run_steps(settings, DAYS[0])
    monkeypatch.setattr(promotion, "register", register)
    _run(settings, [DAYS[1]])  # trains and registers version 1 for itself: no champion yet
    said = _run(settings, [DAYS[0]], resume_from="register")
    assert any(line.startswith(f"registry rewound to before {DAYS[1]}: version(s) 1 removed") for line in said)
    _run(settings, [DAYS[2]])
    assert _registry_dates(settings) == _registry_dates(expected)

    monkeypatch.setattr(promotion, "register", broken)
    with pytest.raises(RegistryError):
        run_steps(settings, DAYS[0])  # rewinds, retrains (reused), fails at register
    monkeypatch.setattr(promotion, "register", register)
    owed_dates = [DAYS[1].isoformat(), DAYS[2].isoformat()]
    assert pending(settings) == {"after": DAYS[0].isoformat(), "after_done": False, "dates": owed_dates}
    with pytest.raises(ReplayPendingError, match=f"churnops run --date {DAYS[0]} --from STEP"):
        run_steps(settings, DAYS[2])
    _run(settings, [DAYS[0]], resume_from="register")
    assert pending(settings) is None
    assert _registry_dates(settings) == _registry_dates(expected)

    # 3. the oldest date runs again and a later date's run again fails: that date is the one
    # to resume (and the only later one allowed to run), and resuming it finishes the rest
    from churnops.monitoring.drift import MonitoringError
    from churnops.pipelines import steps

    trigger = steps.trigger_step

    def failing_on_the_middle_date(settings: Settings, day: date, results: Any, say: Any) -> Any:
        if day == DAYS[1]:
            raise MonitoringError("the alert webhook is down")
        return trigger(settings, day, results, say)

    monkeypatch.setattr(steps, "trigger_step", failing_on_the_middle_date)
    with pytest.raises(MonitoringError):
        run_steps(settings, DAYS[0])
    monkeypatch.setattr(steps, "trigger_step", trigger)
    assert pending(settings) == {"after": DAYS[0].isoformat(), "after_done": True, "dates": owed_dates}
    with pytest.raises(ReplayPendingError, match=f"churnops run --date {DAYS[1]} --from STEP"):
        run_steps(settings, DAYS[2])
    _run(settings, [DAYS[1]], resume_from="trigger")
    assert pending(settings) is None
    assert _registry_dates(settings) == _registry_dates(expected)
    assert json.loads((settings.paths.root / "runs" / DAYS[2].isoformat() / "trigger.json").read_text())["result"]


def test_a_move_written_between_a_cut_short_rewind_and_its_end_is_kept_aside(tmp_path: Path) -> None:
    """A rewind stopped after rebuilding the registry, before rewriting the audit log; a move
    is made in between: finishing the rewind moves that line to the rewound log, not away."""
    from churnops.pipelines import replay
    from churnops.pipelines.promotion import existing_registry
    from churnops.registry.mlflow_registry import ModelRegistry

    settings = _settings(tmp_path / "ws")
    _run(settings, [DAYS[1], DAYS[0]], replay=False)  # version 1 for DAYS[1], nothing for DAYS[0]
    registry = existing_registry(settings)
    assert registry is not None
    plan = registry.rewind_plan(DAYS[1].isoformat())
    assert plan is not None
    replay.plan_path(settings).write_text(json.dumps(plan))
    rewrite = ModelRegistry._rewrite_audit
    try:
        ModelRegistry._rewrite_audit = lambda self, plan: None  # type: ignore[method-assign]  # the crash
        registry.apply_rewind(plan)
    finally:
        ModelRegistry._rewrite_audit = rewrite  # type: ignore[method-assign]
    assert registry.versions() == []
    registry.client.create_registered_model("other_model")  # another model's line stays where it is
    other = ModelRegistry(settings.mlflow.tracking_uri, "other_model", settings.paths.registry_audit)
    lines_before = settings.paths.registry_audit.read_text().splitlines()
    from churnops.jsonl import append_line

    append_line(settings.paths.registry_audit, {**plan["undone"][0], "reason": "made by hand in between"})
    append_line(settings.paths.registry_audit, {**plan["undone"][0], "model": "other_model"})
    assert replay.finish_rewind(settings)
    kept = [json.loads(line) for line in settings.paths.registry_audit.read_text().splitlines()]
    assert [r["model"] for r in kept] == ["other_model"]  # this model's moves were all for DAYS[1]
    aside = [json.loads(line) for line in registry.rewound_log.read_text().splitlines()]
    assert "made by hand in between" in {r.get("reason") for r in aside}
    assert len([r for r in aside if r.get("kind") != "removed"]) == len(lines_before) + 1
    assert other.history()[0].model == "other_model"


def test_a_rewind_through_a_tracking_server_rebuilds_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real `mlflow server` (basic authentication on): the versions kept are
    registered again under their numbers from their logged models (the server requires the
    model's id), the aliases and their tags return, and the next version takes the next number."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from churnops.registry.mlflow_registry import ModelRegistry
    from tests.servers import mlflow_server

    store = tmp_path / "server"
    store.mkdir()
    with mlflow_server(f"sqlite:///{store / 'mlflow.db'}", str(store / "artifacts"), {}) as credentials:
        for key, value in credentials.items():
            monkeypatch.setenv(key, value)
        uri = credentials["MLFLOW_TRACKING_URI"]
        client = MlflowClient(uri)
        registry = ModelRegistry(uri, "churn_rewound", tmp_path / "audit.jsonl")

        def logged_model() -> tuple[str, str]:
            run = client.create_run("0")
            model = client.create_logged_model("0", source_run_id=run.info.run_id, name="model")
            client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            client.set_terminated(run.info.run_id)
            return f"models:/{model.model_id}", run.info.run_id

        runs = {}
        for day in ("2024-12-25", "2024-12-26", "2024-12-27"):
            uri_of_model, run_id = logged_model()
            version = registry.register(uri_of_model, run_id, {"logical_date": day})
            registry.mark_complete(version)
            registry.move("challenger", version, "passed the gate", logical_date=day)
            if day == "2024-12-25":
                registry.move("champion", version, "the first", logical_date=day)
            runs[version] = run_id
        plan = registry.rewind_plan("2024-12-26")
        assert plan is not None
        assert plan["dropped"] == [2, 3]
        registry.apply_rewind(plan)
        assert [(v["version"], v["run_id"]) for v in registry.versions()] == [("1", runs["1"])]
        assert registry.holder("champion") == registry.holder("challenger") == "1"
        assert registry.is_complete("1")
        assert registry.version_tags("1")["alias.champion.reason"] == "the first"
        uri_of_model, run_id = logged_model()
        assert registry.register(uri_of_model, run_id, {"logical_date": "2024-12-26"}) == "2"
