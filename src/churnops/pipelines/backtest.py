"""Backtests: "what if we had deployed this on date D?"

For a cutoff D the training stage is replayed with only what was known before D: features from
orders before D (in a private feature table, so the workspace's Feast registry and online store
are untouched), labels whose whole window [snapshot, snapshot + horizon) closes before D, the
configured candidates trained and tracked in a separate MLflow experiment, the challenger chosen
by the training stage's own rule. Then every customer with an order before D is scored at the
snapshot D and judged against what happened in [D, D + horizon), beside the two baselines.
Nothing is registered and no alias moves.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops.data.lake import write_local_atomic
from churnops.data.tables import order_span, read_customers
from churnops.features.definitions import ORDER_COUNT
from churnops.features.store import SnapshotFeatures
from churnops.features.table import FeatureTable
from churnops.pipelines.features import compute_table, plan_snapshots
from churnops.pipelines.ingest import NO_ORDERS, make_lake
from churnops.pipelines.train import TrainingError, TrainingSet, build_training_set, select, train_candidates
from churnops.settings import Settings
from churnops.training.gate import baseline_metrics, by_recency_scores
from churnops.training.labels import label_customers
from churnops.training.metrics import classification_metrics

MODEL_METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "brier")


@dataclass
class Backtest:
    """One cutoff's result, as written to `<workspace>/backtests/<D>.json`."""

    cutoff: str
    horizon_days: int
    customers: int
    churn_rate: float
    models: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, float]]
    best: str
    training_rows: dict[str, int]
    training_snapshots: dict[str, list[str]]
    seconds: float = 0.0
    run_ids: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return asdict(self)


@dataclass
class BacktestRun:
    """A backtest and the training set it used (for inspection and tests)."""

    result: Backtest
    training: TrainingSet
    evaluation: pd.DataFrame


def backtest(settings: Settings, cutoff: date, progress: Callable[[str], None] | None = None) -> BacktestRun:
    """Replay training as of `cutoff` and evaluate at the snapshot `cutoff`.

    Args:
        settings: The loaded settings.
        cutoff: The date D: training uses only information before it.
        progress: Called with a line per stage.

    Returns:
        The result (also written to `<workspace>/backtests/<D>.json`).

    Raises:
        TrainingError: The lake does not reach D + horizon, or D leaves too little history.
    """
    from churnops.training.tracking import use_tracking

    say = progress or (lambda _: None)
    started = time.perf_counter()
    horizon = settings.training.horizon_days
    lake = make_lake(settings)
    files = lake.data_files("orders")
    span = order_span(files)
    if span is None:
        raise TrainingError(NO_ORDERS)
    known_until = span[1].date() + timedelta(days=1)
    if cutoff + timedelta(days=horizon) > known_until:
        raise TrainingError(
            f"a backtest at {cutoff} is judged on [{cutoff}, {cutoff + timedelta(days=horizon)}), but the lake's "
            f"orders end {span[1].date()}; pick a cutoff on or before {known_until - timedelta(days=horizon)}"
        )
    paths = settings.paths
    with paths.lock("churnops backtest"):
        private = paths.backtests / f"{cutoff.isoformat()}.features"
        shutil.rmtree(private, ignore_errors=True)
        table = FeatureTable(private.resolve())
        try:
            customers = read_customers(lake)[["customer_id", "created_at"]]
            cfg = settings.features
            snapshots = plan_snapshots(span[0].date(), cutoff, cfg.cadence_days, cfg.history_snapshots)
            compute_table(settings, files, customers, table, snapshots, cutoff, say)
            training = build_training_set(settings, cutoff, store=SnapshotFeatures(table), table=table)
            rows = training.lineage["rows"]
            say(
                f"training set before {cutoff}: {rows['fit']:,} fit, {rows['validation']:,} validation, "
                f"{rows['holdout']:,} holdout rows"
            )
            experiment = use_tracking(settings, settings.mlflow.backtest_experiment)
            trained = train_candidates(settings, training, experiment, {"backtest_cutoff": cutoff.isoformat()}, say)
            best = select(trained.results, settings.training.selection_metric)
            evaluation = evaluation_rows(table, files, cutoff, horizon)
        finally:
            shutil.rmtree(private, ignore_errors=True)
    labels = evaluation["churned"].to_numpy().astype(int)
    x = evaluation[training.features].astype("float64")
    models = {}
    for result in trained.results:
        proba = trained.models[result.name].predict_proba(x)
        scored = classification_metrics(labels, proba, result.threshold)
        models[result.name] = {**{k: scored[k] for k in MODEL_METRICS}, "threshold": result.threshold}
    base = baseline_metrics(labels, by_recency_scores(evaluation["recency"].to_numpy(dtype=np.float64)))
    outcome = Backtest(
        cutoff=cutoff.isoformat(),
        horizon_days=horizon,
        customers=len(evaluation),
        churn_rate=float(labels.mean()) if len(labels) else float("nan"),
        models=models,
        baselines={
            "everyone_churns": {
                "f1": base["everyone_churns_f1"],
                "precision": base["everyone_churns_precision"],
                "recall": base["everyone_churns_recall"],
            },
            "recency": {"roc_auc": base["recency_roc_auc"], "pr_auc": base["recency_pr_auc"]},
        },
        best=best.name,
        training_rows=training.lineage["rows"],
        training_snapshots=training.split.snapshots,
        seconds=time.perf_counter() - started,
        run_ids={r.name: r.run_id for r in trained.results},
    )
    write_result(paths.backtests / f"{cutoff.isoformat()}.json", outcome)
    return BacktestRun(outcome, training, evaluation)


def evaluation_rows(table: FeatureTable, files: list[str], cutoff: date, horizon_days: int) -> pd.DataFrame:
    """Every customer with an order before the cutoff, their features at the snapshot D, and
    whether they placed no order in [D, D + horizon)."""
    snapshot = pd.Timestamp(cutoff)
    path = table.files()[-1]
    features = pd.read_parquet(path)
    features = features[features[ORDER_COUNT] > 0].copy()
    features["event_timestamp"] = pd.to_datetime(features["event_timestamp"]).dt.tz_convert(None)
    labels = label_customers(
        files, [snapshot.to_pydatetime()], horizon_days, (snapshot + pd.Timedelta(days=horizon_days)).to_pydatetime()
    )
    joined = features.merge(labels[["customer_id", "churned"]], on="customer_id", how="inner", validate="one_to_one")
    return joined.sort_values("customer_id").reset_index(drop=True)


def write_result(path: Path, result: Backtest) -> None:
    """Write one cutoff's JSON atomically."""
    write_local_atomic(str(path), json.dumps(result.as_dict(), indent=2, sort_keys=True, default=float).encode())
