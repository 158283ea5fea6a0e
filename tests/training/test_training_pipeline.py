"""Training end to end against real Feast and MLflow (SQLite) in a temp workspace."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from churnops.cli import app
from churnops.pipelines.features import build_features
from churnops.pipelines.ingest import ingest, make_lake
from churnops.pipelines.simulate import simulate
from churnops.pipelines.train import (
    GateFailedError,
    TrainingError,
    build_training_set,
    model_registry,
    split_rows,
    train,
)
from churnops.settings import Settings, load_settings
from churnops.training.tracking import load_scorer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICK = {
    "lightgbm": {"algorithm": "lightgbm", "params": {"n_estimators": 80, "learning_rate": 0.1, "num_leaves": 15}},
    "hist_gradient_boosting": {"algorithm": "hist_gradient_boosting", "params": {"max_iter": 60}},
}


def _settings(workspace: Path, **overrides: Any) -> Settings:
    return load_settings(
        None,
        workspace=str(workspace),
        simulation={"customers": 1500, "start": "2024-01-01", "end": "2025-04-30", "products": 300, "seed": 5},
        training={"candidates": QUICK, **overrides.pop("training", {})},
        **overrides,
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A simulated shop, ingested, with features in Feast: ready to train."""
    settings = _settings(tmp_path_factory.mktemp("train") / "ws")
    simulate(settings, date(2025, 4, 30))
    ingest(settings, date(2025, 4, 30))
    build_features(settings)
    return settings


@pytest.fixture(scope="module")
def trained(shop: Settings) -> Any:
    return train(shop)


def test_first_passing_challenger_is_registered_and_promoted(shop: Settings, trained: Any) -> None:
    assert trained.gate.passed
    assert not trained.gate.compared_with_champion
    assert trained.version == "1"
    assert trained.promoted_to_champion
    registry = model_registry(shop)
    assert registry.holder("challenger") == "1"
    assert registry.holder("champion") == "1"
    version = registry.versions()[0]
    assert version["tags"]["feature_service"] == "churn_predictor_v1"
    assert float(version["tags"]["threshold"]) == pytest.approx(
        abs=1e-6, expected=next(c.threshold for c in trained.candidates if c.name == trained.challenger)
    )
    for move in registry.history():
        assert move.actor
        assert move.reason
        assert "f1" in move.metrics
    tags = registry.client.get_model_version(registry.model_name, "1").tags
    assert tags["alias.champion.reason"] == "first model to pass the gate"


def test_every_candidate_is_a_run_with_metrics_lineage_data_and_a_safe_model(shop: Settings, trained: Any) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(shop.mlflow.tracking_uri)
    for candidate in trained.candidates:
        run = client.get_run(candidate.run_id)
        for metric in (
            "accuracy",
            "precision",
            "recall",
            "f1",
            "roc_auc",
            "pr_auc",
            "brier",
            "cv_f1_mean",
            "cv_f1_std",
            "threshold",
        ):
            assert metric in run.data.metrics, metric
        assert any(k.startswith("importance.") for k in run.data.metrics)
        assert run.data.tags["feature_table_hash"] == make_feature_hash(shop)
        assert run.data.params["horizon_days"] == "90"
        contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
        assert contexts == {"training", "holdout"}
        artifacts = {a.path for a in client.list_artifacts(candidate.run_id)}
        assert {"lineage.json", "feature_importances.json"} <= artifacts
        lineage = json.loads(Path(client.download_artifacts(candidate.run_id, "lineage.json")).read_text())
        assert lineage["label_horizon_days"] == 90
        assert all(len(p["sha256"]) == 64 for p in lineage["raw_partitions"])
        scorer = load_scorer(candidate.model_uri)
        assert scorer.threshold == pytest.approx(candidate.threshold)
        assert scorer.flavor == ("lightgbm" if candidate.algorithm == "lightgbm" else "sklearn")


def make_feature_hash(settings: Settings) -> str:
    from churnops.pipelines.features import feature_table

    return feature_table(settings).manifest().content_hash


def test_models_are_not_pickles(shop: Settings, trained: Any) -> None:
    """LightGBM as its native text model; scikit-learn through skops."""
    from mlflow.models import Model

    for candidate in trained.candidates:
        flavors = Model.load(candidate.model_uri).flavors
        if candidate.algorithm == "lightgbm":
            assert "lightgbm" in flavors
        else:
            assert flavors["sklearn"]["serialization_format"] == "skops"


def test_training_set_has_no_feature_from_the_snapshot_or_after(shop: Settings) -> None:
    """Every row's frequency and monetary equal those of orders strictly before its snapshot."""
    training = build_training_set(shop)
    orders = make_lake(shop).read("orders", ["customer_id", "order_date", "total_amount"])
    sample = training.frame.sample(300, random_state=1)
    for row in sample.itertuples():
        snap = pd.Timestamp(row.event_timestamp).tz_localize(None)
        past = orders[(orders["customer_id"] == row.customer_id) & (orders["order_date"] < snap)]
        assert row.frequency == len(past)
        assert row.monetary == pytest.approx(past["total_amount"].sum())
    assert training.frame["frequency"].min() >= 1  # only customers with an order are labelled


def test_time_split_holds_out_the_latest_snapshots(shop: Settings) -> None:
    training = build_training_set(shop)
    split = split_rows(training.frame, shop)
    ts = training.frame["event_timestamp"]
    assert ts.iloc[split.fit].max() < ts.iloc[split.validation].min()
    assert ts.iloc[split.validation].max() < ts.iloc[split.holdout].min()
    random = shop.model_copy(update={"training": shop.training.model_copy(update={"split": "random"})})
    rsplit = split_rows(training.frame, random)
    assert len(rsplit.holdout) == pytest.approx(0.2 * len(training.frame), abs=2)
    assert abs(training.frame["churned"].iloc[rsplit.holdout].mean() - training.frame["churned"].mean()) < 0.01


def test_same_data_config_and_seed_give_the_same_metrics_and_predictions(shop: Settings, trained: Any) -> None:
    again = train(shop)  # registers version 2: identical, so it passes against the champion
    for first, second in zip(trained.candidates, again.candidates, strict=True):
        assert first.holdout == second.holdout
        np.testing.assert_array_equal(first.holdout_proba, second.holdout_proba)
    assert again.gate.compared_with_champion
    assert again.gate.difference == 0.0
    assert again.version == "2"
    assert not again.promoted_to_champion


def test_model_behaviour_recent_orders_lower_churn_and_customer_id_is_ignored(shop: Settings, trained: Any) -> None:
    scorer = load_scorer(f"models:/{shop.mlflow.model_name}@champion")
    training = build_training_set(shop)
    rows = training.frame.sample(500, random_state=2).reset_index(drop=True)
    base = scorer.predict_proba(rows)
    recent = rows.assign(
        recency=1,
        orders_last_7d=rows["orders_last_7d"] + 1,
        orders_last_30d=rows["orders_last_30d"] + 1,
        orders_last_90d=rows["orders_last_90d"] + 1,
    )
    assert scorer.predict_proba(recent).mean() < base.mean() - 0.05  # directional
    renamed = rows.assign(customer_id=rows["customer_id"] + 10_000_000)
    np.testing.assert_array_equal(scorer.predict_proba(renamed), base)  # invariance


def test_a_failing_gate_registers_nothing_and_alerts_once(shop: Settings, trained: Any) -> None:
    quick = shop.training.model_copy(
        update={"candidates": {"lightgbm": shop.training.candidates["lightgbm"]}, "cv_folds": 2}
    )
    strict = shop.model_copy(update={"gate": shop.gate.model_copy(update={"min_f1": 0.99}), "training": quick})
    registry = model_registry(strict)
    before = len(registry.versions())
    with pytest.raises(GateFailedError, match=r"below the floor 0\.99") as first:
        train(strict)
    assert first.value.report.alerted
    with pytest.raises(GateFailedError) as second:
        train(strict)
    assert not second.value.report.alerted
    assert len(registry.versions()) == before
    alerts = Path(strict.alerts.file).read_text().splitlines()
    assert len([a for a in alerts if json.loads(a)["key"].startswith("gate-failed")]) == 1


def test_registry_promote_history_and_rollback_from_the_cli(shop: Settings, trained: Any) -> None:
    runner = CliRunner()
    cfg = Path(shop.workspace) / "cli.yaml"
    cfg.write_text(json.dumps({"workspace": str(shop.workspace), "training": {"candidates": QUICK}}))
    registry = model_registry(shop)
    if registry.holder("challenger") == registry.holder("champion"):
        train(shop)  # a newer challenger to promote
    newest = registry.holder("challenger")
    old_champion = registry.holder("champion")
    assert newest != old_champion
    staged = runner.invoke(
        app, ["registry", "promote", "--to", "staging", "-c", str(cfg), "--reason", "integration tests"]
    )
    assert staged.exit_code == 0, staged.output
    assert registry.holder("staging") == newest
    promoted = runner.invoke(app, ["registry", "promote", "--to", "champion", "-c", str(cfg)])
    assert promoted.exit_code == 0, promoted.output
    assert registry.holder("champion") == newest
    history = runner.invoke(app, ["registry", "history", "-c", str(cfg), "--alias", "champion"])
    assert "integration tests" not in history.output
    assert newest in history.output
    back = runner.invoke(app, ["registry", "rollback", "-c", str(cfg), "--reason", "bad canary"])
    assert back.exit_code == 0, back.output
    assert registry.holder("champion") == old_champion
    last = registry.history("champion")[-1]
    assert last.reason == "rollback: bad canary"
    assert last.previous == newest
    listing = runner.invoke(app, ["registry", "list", "-c", str(cfg)], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    assert "champion" in listing.output
    bad = runner.invoke(app, ["registry", "promote", "--to", "prod", "--version", "1", "-c", str(cfg)])
    assert bad.exit_code == 1
    assert "unknown alias 'prod'" in bad.output


def test_no_complete_horizon_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        simulation={"customers": 300, "start": "2024-01-01", "end": "2024-03-15", "products": 100},
    )
    simulate(settings, date(2024, 3, 15))
    ingest(settings, date(2024, 3, 15))
    build_features(settings)
    with pytest.raises(TrainingError, match="no feature snapshot has a complete 90-day horizon"):
        train(settings)
