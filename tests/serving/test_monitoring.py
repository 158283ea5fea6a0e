"""Drift of a day of the prediction log against the champion's reference, with real Evidently."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from churnops.cli import app
from churnops.monitoring.drift import monitor_day
from churnops.pipelines.promotion import model_registry
from churnops.serving.prediction_log import LogRecord, PredictionLog
from churnops.settings import Settings
from churnops.training import tracking
from tests.serving.conftest import Shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DAY = date(2025, 3, 1)


def _settings(shop: Shop, tmp_path: Path) -> Settings:
    serving = shop.settings.serving.model_copy(update={"prediction_log_url": f"sqlite:///{tmp_path / 'log.db'}"})
    return shop.settings.model_copy(update={"serving": serving})


def _log_reference(
    settings: Settings, shop: Shop, n: int, scale: dict[str, float] | None = None, newcomers_only: bool = False
) -> None:
    """Log n rows of the champion's reference (the feature snapshot of the day it was trained
    for) as the day's predictions, some features scaled (only the newcomers', if so asked)."""
    import pandas as pd

    from churnops.pipelines.features import feature_table

    registry = model_registry(settings)
    version = registry.holder("champion")
    trained_for = registry.version_tags(version)["logical_date"]
    scorer = tracking.load_scorer(f"models:/{registry.model_name}/{version}")
    table = feature_table(settings)
    snapshot = pd.read_parquet(table.path_of(table.manifest().snapshots[trained_for]))
    snapshot = snapshot[snapshot["frequency"] > 0]  # the server scores (and logs) only customers with an order
    # Every row as often as n allows, the rest drawn without replacement: the traffic's
    # distribution is the reference's, not a resample of it (800 customers resampled would
    # differ by noise near the threshold on the heavy-tailed gap features).
    whole, rest = divmod(n, len(snapshot))
    rows = pd.concat([snapshot] * whole + [snapshot.sample(rest, random_state=1)], ignore_index=True)
    values = rows[scorer.features].astype("float64")
    everyone = pd.Series(True, index=values.index)
    scaled = values["customer_age_days"] <= settings.monitoring.newcomer_days if newcomers_only else everyone
    for column, factor in (scale or {}).items():
        values.loc[scaled, column] = values.loc[scaled, column] * factor + factor
    proba = scorer.predict_proba(values)
    start = datetime(DAY.year, DAY.month, DAY.day, 9)
    log = PredictionLog(settings.serving.prediction_log_url)
    log.put(
        [
            LogRecord(
                f"r{i}",
                start + timedelta(seconds=i),
                int(c),
                registry.model_name,
                str(version),
                "champion",
                scorer.features,
                row,
                float(p),
                int(p >= scorer.threshold),
                1.0 + i % 7,
            )
            for i, (c, row, p) in enumerate(zip(rows["customer_id"], values.to_numpy(), proba, strict=True))
        ]
    )
    log.close()


def test_traffic_like_the_reference_shows_no_drift(shop: Shop, tmp_path: Path) -> None:
    settings = _settings(shop, tmp_path)
    _log_reference(settings, shop, 1500)
    result = monitor_day(settings, DAY)
    assert result.skipped == ""
    assert result.predictions == 1500
    assert result.dataset_drift is False
    assert result.drifted_features == []
    assert max(result.distances.values()) < settings.monitoring.drift_threshold
    assert result.prediction_drift is not None
    assert result.prediction_drift < settings.monitoring.drift_threshold
    assert result.system["predictions"] == 1500
    assert result.system["latency_p99_ms"] == pytest.approx(7.0)
    (estimated,) = result.estimated
    assert (estimated["version"], estimated["variant"], estimated["predictions"]) == ("1", "champion", 1500)
    assert 0 < estimated["estimated_f1"] <= 1
    assert "calibrated on the version's holdout" in estimated["method"]
    summary = json.loads((settings.paths.root / "monitoring" / DAY.isoformat() / "summary.json").read_text())
    assert summary["dataset_drift"] is False
    assert Path(result.report).read_text().lower().count("<html") >= 1
    assert DAY.isoformat() in (settings.paths.root / "monitoring" / "index.html").read_text()
    # The shop is too small for the newcomers' own check at its default sample.
    assert result.newcomers["dataset_drift"] is None
    assert "under monitoring.newcomer_min_sample (1,000)" in result.newcomers["skipped"]
    assert not (settings.paths.root / "monitoring" / DAY.isoformat() / "newcomers.html").exists()


def test_newcomers_are_checked_on_their_own_and_a_change_among_them_alone_is_their_drift(
    shop: Shop, tmp_path: Path
) -> None:
    """The newcomers' features changed, everyone else's not: the whole population does not
    drift (they are a few percent of it), the newcomers do, and that is a condition of the day."""
    settings = _settings(shop, tmp_path)
    settings = settings.model_copy(
        update={"monitoring": settings.monitoring.model_copy(update={"newcomer_min_sample": 20})}
    )
    _log_reference(settings, shop, 1500)
    quiet = monitor_day(settings, DAY)
    newcomers = quiet.newcomers
    assert "skipped" not in newcomers
    assert newcomers["dataset_drift"] is False, newcomers
    assert newcomers["current"] == newcomers["reference"] > 20  # every newcomer of the snapshot, once each
    assert newcomers["window"] == [(DAY - timedelta(days=6)).isoformat(), DAY.isoformat()]
    assert quiet.decision["holds"]["newcomer_drift"] is False

    features = tracking.load_scorer(f"models:/{settings.mlflow.model_name}@champion").features
    changed = [f for f in features if f != "customer_age_days"]  # which tells the newcomers
    (tmp_path / "changed").mkdir()
    other = _settings(shop, tmp_path / "changed").model_copy(update={"monitoring": settings.monitoring})
    _log_reference(other, shop, 1500, scale=dict.fromkeys(changed, 3.0), newcomers_only=True)
    result = monitor_day(other, DAY)
    assert result.dataset_drift is False
    assert result.drifted_share is not None
    assert result.drifted_share < 0.5 * other.monitoring.drift_share
    assert result.newcomers["dataset_drift"] is True
    assert set(changed) <= set(result.newcomers["drifted_features"])
    assert result.decision["holds"]["newcomer_drift"] is True
    assert Path(result.newcomers["report"]).read_text().lower().count("<html") >= 1
    assert "newcomers.html" in (other.paths.root / "monitoring" / "index.html").read_text()


def test_a_day_is_judged_against_the_version_that_answered_it(shop: Shop, tmp_path: Path) -> None:
    """Checked again after the champion moved, a day keeps its verdict: its reference is the one
    of the version that served it, not the new champion's."""
    settings = _settings(shop, tmp_path)
    _log_reference(settings, shop, 1500)
    registry = model_registry(settings)
    served = registry.holder("champion")
    challenger = registry.holder("challenger")
    before = monitor_day(settings, DAY, decide=False)
    registry.move("champion", next(v for v in shop.versions if v != served), "tests: another champion")
    try:
        again = monitor_day(settings, DAY, decide=False)
    finally:
        registry.move("champion", str(served), "tests: back")
        if challenger is not None and registry.holder("challenger") != challenger:
            registry.move("challenger", challenger, "tests: back")
    assert again.champion == before.champion == served
    assert again.prediction_drift == before.prediction_drift
    assert again.distances == before.distances


def test_shifted_features_are_named_and_the_data_set_drifts_by_share(shop: Shop, tmp_path: Path) -> None:
    """6 of 22 features shifted: each is named, but under the share of 0.5 the data set has not drifted."""
    settings = _settings(shop, tmp_path)
    shifted = ["recency", "frequency", "monetary", "order_days", "customer_age_days", "mean_gap_days"]
    _log_reference(settings, shop, 1500, scale=dict.fromkeys(shifted, 3.0))
    result = monitor_day(settings, DAY)
    assert result.drifted_features == sorted(shifted)
    assert result.drifted_share == pytest.approx(len(shifted) / len(result.distances))
    assert result.dataset_drift is False
    assert result.prediction_drift is not None
    assert result.prediction_drift > settings.monitoring.drift_threshold  # the model's answers moved too


def test_everything_shifted_is_data_set_drift(shop: Shop, tmp_path: Path) -> None:
    settings = _settings(shop, tmp_path)
    features = tracking.load_scorer(f"models:/{settings.mlflow.model_name}@champion").features
    _log_reference(settings, shop, 1500, scale=dict.fromkeys(features, 3.0))
    result = monitor_day(settings, DAY)
    assert result.dataset_drift is True
    assert result.drifted_share is not None
    assert result.drifted_share >= settings.monitoring.drift_share


def test_too_few_predictions_get_no_verdict(shop: Shop, tmp_path: Path) -> None:
    settings = _settings(shop, tmp_path)
    _log_reference(settings, shop, 100)
    result = monitor_day(settings, DAY)
    assert result.dataset_drift is None
    assert "under monitoring.min_sample" in result.skipped
    assert result.system["predictions"] == 100
    other = monitor_day(settings, DAY + timedelta(days=1))
    assert other.predictions == 0
    assert "0 production predictions" in other.skipped
    # the history names the champion a day judged only when it answered that day: the alias's
    # holder on a quiet day is today's, which would restart another model's streaks
    history = json.loads((settings.paths.root / "monitoring" / "history.json").read_text())
    assert history[DAY.isoformat()]["champion"] == result.champion == model_registry(settings).holder("champion")
    assert "champion" not in history[(DAY + timedelta(days=1)).isoformat()]
    np.testing.assert_equal(
        other.system, {"predictions": 0, "requests": 0, "errors": 0, "errors_by_status": {}, "error_rate": None}
    )
    # asked by hand for a day after the log, the CLI refuses it rather than add it to the history
    config = tmp_path / "monitor.json"
    config.write_text(json.dumps(settings.model_dump(mode="json")))
    later = (DAY + timedelta(days=30)).isoformat()
    refused = CliRunner().invoke(app, ["monitor", "-c", str(config), "--day", later])
    assert refused.exit_code == 2, refused.output
    assert f"--day {later} is after the prediction log: the newest logged prediction is of {DAY}" in refused.output
    assert not (settings.paths.root / "monitoring" / later).exists()


def _log_on(settings: Settings, day: date, customers: list[int], seed: int) -> None:
    """Log a made-up prediction for each customer on `day`."""
    rng = np.random.default_rng(seed)
    log = PredictionLog(settings.serving.prediction_log_url)
    start = datetime(day.year, day.month, day.day, 10)
    log.put(
        [
            LogRecord(
                f"{day}-{c}",
                start + timedelta(seconds=i),
                c,
                "churn_predictor",
                "1",
                "champion",
                ["x"],
                [1.0],
                float(p),
                int(p >= 0.5),
                1.0,
            )
            for i, (c, p) in enumerate(zip(customers, rng.uniform(size=len(customers)), strict=True))
        ]
    )
    log.close()


def test_realized_performance_waits_for_labels_then_equals_a_pandas_computation(shop: Shop, tmp_path: Path) -> None:
    """The shop's orders end 2024-12-31 (known until 2025-01-01) and its horizon is 28 days: the
    predictions of 2024-11-20 are labelled, those of 2024-12-20 not yet."""
    import pandas as pd
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    from churnops.monitoring.performance import realized_performance
    from churnops.pipelines.ingest import make_lake

    settings = _settings(shop, tmp_path)
    horizon = settings.training.horizon_days
    orders = pd.concat(
        pd.read_parquet(f, columns=["customer_id", "order_date"]) for f in make_lake(settings).data_files("orders")
    )
    orders["order_date"] = pd.to_datetime(orders["order_date"])
    known = date(2025, 1, 1)
    late = date(2024, 12, 20)
    _log_on(settings, late, list(range(1, 301)), seed=1)
    waiting = realized_performance(settings, known)
    assert waiting.groups == []
    assert "no labels yet" in waiting.note
    assert f"once the orders up to {late + timedelta(days=horizon - 1)} are in" in waiting.note

    day = date(2024, 11, 20)
    buyers_before = set(orders[orders["order_date"] < pd.Timestamp(day)]["customer_id"])
    customers = sorted(buyers_before)[:400]
    _log_on(settings, day, customers, seed=2)
    result = realized_performance(settings, known, window_days=30)
    (group,) = result.groups
    logged = pd.DataFrame({"customer_id": customers})
    window = orders[
        (orders["order_date"] >= pd.Timestamp(day))
        & (orders["order_date"] < pd.Timestamp(day) + pd.Timedelta(days=horizon))
    ]
    logged["churned"] = (~logged["customer_id"].isin(set(window["customer_id"]))).astype(int)
    rng = np.random.default_rng(2)
    proba = rng.uniform(size=len(customers))
    label = (proba >= 0.5).astype(int)
    assert group["predictions"] == len(customers)
    assert (group["version"], group["variant"]) == ("1", "champion")
    assert group["f1"] == pytest.approx(f1_score(logged["churned"], label), abs=1e-4)
    assert group["precision"] == pytest.approx(precision_score(logged["churned"], label), abs=1e-4)
    assert group["recall"] == pytest.approx(recall_score(logged["churned"], label), abs=1e-4)
    assert group["roc_auc"] == pytest.approx(roc_auc_score(logged["churned"], proba), abs=1e-4)
    assert group["churn_rate"] == pytest.approx(logged["churned"].mean(), abs=1e-4)
    # CBPE's figure for the same predictions, their probabilities calibrated on version 1's holdout
    calibrated = _holdout_calibrated(settings, "1", proba)
    tp, fp, fn = (calibrated * label).sum(), ((1 - calibrated) * label).sum(), (calibrated * (1 - label)).sum()
    assert group["estimated_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)
    tp, fp, fn = (proba * label).sum(), ((1 - proba) * label).sum(), (proba * (1 - label)).sum()
    assert group["estimated_f1"] != pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-3)  # not the raw one


def _holdout_calibrated(settings: Settings, version: str, proba: np.ndarray) -> np.ndarray:
    """scikit-learn's isotonic regression of the version's holdout labels on its probabilities."""
    from sklearn.isotonic import IsotonicRegression

    registry = model_registry(settings)
    holdout = tracking.load_holdout(str(registry.client.get_model_version(registry.model_name, version).run_id))
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(holdout["proba"], holdout["churned"])
    return np.asarray(iso.predict(proba))


def _ab_workspace(shop: Shop, tmp_path: Path) -> Settings:
    """A copy of the shop's workspace (its registry is the session's), v2 staged for an A/B test."""
    import shutil

    from churnops.serving.deploy import INTEGRATION_PASSED
    from churnops.settings import load_settings

    root = tmp_path / "ws"
    shutil.copytree(shop.settings.paths.root, root)
    settings = load_settings(shop.config, workspace=str(root), ab_test={"min_labelled": 100, "policy": "superiority"})
    registry = model_registry(settings)
    assert (registry.holder("champion"), registry.holder("challenger")) == shop.versions
    registry.tag(shop.versions[1], INTEGRATION_PASSED, "true")
    return settings


def _log_ab(settings: Settings, shop: Shop, day: date, challenger_right: bool) -> None:
    """A day of A/B predictions: one variant predicts each customer's label, the other its opposite."""
    from churnops.pipelines.ingest import make_lake
    from churnops.serving.ab import challenger_mask
    from churnops.training.labels import label_customers

    champion, challenger = shop.versions
    truth = label_customers(
        make_lake(settings).data_files("orders"),
        [datetime(day.year, day.month, day.day)],
        settings.training.horizon_days,
        datetime(2025, 1, 1),
    )
    customers = truth["customer_id"].tolist()
    to_challenger = challenger_mask(challenger, customers, 0.5)
    start = datetime(day.year, day.month, day.day, 10)
    records = []
    for i, (c, churned, mine) in enumerate(zip(customers, truth["churned"], to_challenger, strict=True)):
        right = mine == challenger_right
        label = int(churned) if right else 1 - int(churned)
        version, variant = (challenger, "challenger") if mine else (champion, "champion")
        records.append(
            LogRecord(
                f"ab-{c}",
                start + timedelta(seconds=i),
                int(c),
                "churn_predictor",
                version,
                variant,
                ["x"],
                [1.0],
                float(label),
                label,
                1.0,
            )
        )
    assert len(records) > 300
    log = PredictionLog(settings.serving.prediction_log_url)
    log.put(records)
    log.close()


def test_an_ab_test_waits_for_labels_then_promotes_the_challenger_that_wins(shop: Shop, tmp_path: Path) -> None:
    """Until the horizon has passed nothing is decided; then the better variant's version is champion,
    audited with the figures; the next look finds no test running."""
    from churnops.monitoring.ab_test import decide_ab

    settings = _ab_workspace(shop, tmp_path)
    champion, challenger = shop.versions
    day = date(2024, 11, 20)
    _log_ab(settings, shop, day, challenger_right=True)
    early = decide_ab(settings, day + timedelta(days=10))
    assert early.status == "collecting"
    assert early.began == day.isoformat()
    assert model_registry(settings).holder("champion") == champion
    decided = decide_ab(settings, date(2025, 1, 1))
    assert decided.status == "promoted", decided
    assert decided.verdict["f1"]["challenger"] == 1.0
    assert decided.verdict["f1"]["champion"] == 0.0
    assert decided.verdict["interval"][0] > 0
    registry = model_registry(settings)
    assert registry.holder("champion") == challenger
    move = registry.history("champion")[-1]
    assert move.version == challenger
    assert move.previous == champion
    assert move.reason.startswith("A/B test won (superiority)")
    assert move.logical_date == "2025-01-01"
    assert decide_ab(settings, date(2025, 1, 1)).status == "no test"


def test_an_ab_test_the_challenger_loses_ends_with_the_champion_kept(shop: Shop, tmp_path: Path) -> None:
    from churnops.monitoring.ab_test import decide_ab

    settings = _ab_workspace(shop, tmp_path)
    champion, challenger = shop.versions
    _log_ab(settings, shop, date(2024, 11, 20), challenger_right=False)
    decided = decide_ab(settings, date(2025, 1, 1))
    assert decided.status == "ended", decided
    assert "lost" in decided.reason
    registry = model_registry(settings)
    assert registry.holder("champion") == champion
    assert registry.holder("challenger") is None
    release = registry.history("challenger")[-1]
    assert (release.kind, release.version) == ("release", challenger)
    assert registry.version_tags(challenger)["ab.outcome"] == "lost"
    assert decide_ab(settings, date(2025, 1, 1)).status == "no test"


def test_target_drift_compares_the_labelled_churn_rate_with_the_champions_by_cohens_h(
    shop: Shop, tmp_path: Path
) -> None:
    """Once labels exist the monitor reports the labelled churn rate beside the holdout's, and the
    effect size of the difference; it is judged drifted above the threshold, not before."""
    import pandas as pd

    from churnops.pipelines.ingest import make_lake

    settings = _settings(shop, tmp_path)
    day = date(2024, 12, 1)
    orders = pd.concat(
        pd.read_parquet(f, columns=["customer_id", "order_date"]) for f in make_lake(settings).data_files("orders")
    )
    orders["order_date"] = pd.to_datetime(orders["order_date"])
    before = orders[orders["order_date"] < pd.Timestamp(day)]
    window = orders[
        (orders["order_date"] >= pd.Timestamp(day)) & (orders["order_date"] < pd.Timestamp(day) + pd.Timedelta(days=28))
    ]
    buyers = set(window["customer_id"])
    # Only customers who churned: the labelled churn rate is 1, far from the holdout's.
    churners = sorted(c for c in set(before["customer_id"]) if c not in buyers)[:200]
    _log_on(settings, day, churners, seed=3)
    result = monitor_day(settings, date(2024, 12, 31))
    target = result.target_drift
    registry = model_registry(settings)
    run_id = registry.client.get_model_version(registry.model_name, registry.holder("champion")).run_id
    reference = tracking.load_holdout(run_id)["churned"].mean()
    assert target["labelled"] == len(churners)
    assert target["churn_rate"] == 1.0
    assert target["reference_churn_rate"] == pytest.approx(reference, abs=1e-4)
    assert target["cohens_h"] == pytest.approx(np.pi - 2 * np.arcsin(np.sqrt(reference)), abs=1e-3)
    assert target["drifted"] is True
    quiet = monitor_day(
        settings.model_copy(
            update={"monitoring": settings.monitoring.model_copy(update={"target_drift_threshold": 10.0})}
        ),
        date(2024, 12, 31),
    )
    assert quiet.target_drift["drifted"] is False
