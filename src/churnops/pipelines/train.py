"""Training: labels -> Feast point-in-time training set -> candidates in MLflow -> gate -> registry."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from churnops.alerts import Alert, raise_alert
from churnops.data.tables import order_span
from churnops.pipelines.features import feature_table
from churnops.pipelines.ingest import make_lake
from churnops.registry.mlflow_registry import ModelRegistry
from churnops.runlog import append_run, workspace_lock
from churnops.settings import CandidateSettings, Settings
from churnops.training.candidates import build_candidate
from churnops.training.gate import GateResult, evaluate_gate
from churnops.training.labels import label_customers
from churnops.training.metrics import choose_threshold, classification_metrics, cross_validated_f1

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot run; the message says why and what to do."""


class GateFailedError(RuntimeError):
    """The challenger failed the quality gate: nothing was registered and the team was alerted."""

    def __init__(self, message: str, report: TrainReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class TrainingSet:
    """Labelled rows with their point-in-time features, and where they came from."""

    frame: pd.DataFrame
    features: list[str]
    lineage: dict[str, Any]


@dataclass
class Split:
    """Row positions of the three parts of the training set."""

    fit: np.ndarray
    validation: np.ndarray
    holdout: np.ndarray
    description: str


@dataclass
class CandidateResult:
    """One trained, evaluated and logged candidate."""

    name: str
    algorithm: str
    run_id: str
    model_uri: str
    threshold: float
    holdout: dict[str, float]
    validation: dict[str, float]
    cv_f1_mean: float
    cv_f1_std: float
    importances: dict[str, float]
    seconds: float
    holdout_proba: np.ndarray = field(repr=False)


@dataclass
class TrainReport:
    """The outcome of one training run."""

    rows: int
    candidates: list[CandidateResult]
    challenger: str
    gate: GateResult
    version: str | None = None
    promoted_to_champion: bool = False
    alerted: bool = False
    seconds: float = 0.0


def model_registry(settings: Settings) -> ModelRegistry:
    """The registry for the configured model, with its audit log in the workspace."""
    from churnops.training.tracking import use_tracking

    use_tracking(settings.mlflow)
    return ModelRegistry(
        settings.mlflow.tracking_uri, settings.mlflow.model_name, settings.workspace / "registry_audit.jsonl"
    )


def build_training_set(settings: Settings) -> TrainingSet:
    """Labels for every complete snapshot, joined point-in-time with Feast's feature service.

    Raises:
        TrainingError: No features yet, or no snapshot whose horizon has passed.
    """
    from churnops.features import feast_repo

    table = feature_table(settings)
    manifest = table.manifest()
    if not manifest.snapshots:
        raise TrainingError("the feature table is empty; run `churnops features` first")
    files = make_lake(settings).data_files("orders")
    span = order_span(files)
    if span is None:
        raise TrainingError("the raw lake holds no orders; run `churnops ingest` first")
    data_end = span[1]
    horizon = settings.training.horizon_days
    snapshots = [datetime.fromisoformat(s) for s in sorted(manifest.snapshots)]
    labels = label_customers(files, snapshots, horizon, data_end.to_pydatetime())
    if labels.empty:
        raise TrainingError(
            f"no feature snapshot has a complete {horizon}-day horizon: the data ends {data_end:%Y-%m-%d} and "
            f"the first snapshot is {snapshots[0]:%Y-%m-%d}; ingest more history or shorten training.horizon_days"
        )
    if settings.training.max_rows and len(labels) > settings.training.max_rows:
        labels = labels.sample(settings.training.max_rows, random_state=settings.training.seed)
    entity = labels.assign(event_timestamp=pd.to_datetime(labels["event_timestamp"]).dt.tz_localize("UTC"))
    store = feast_repo.open_store(settings)
    service = store.get_feature_service(feast_repo.CURRENT_SERVICE)
    joined = store.get_historical_features(entity_df=entity, features=service).to_df()
    joined = joined.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)
    features = list(manifest.features)
    used = sorted(labels["event_timestamp"].unique())
    lineage = {
        "feature_table_hash": manifest.content_hash,
        "feature_service": feast_repo.CURRENT_SERVICE,
        "raw_partitions": manifest.raw_partitions,
        "snapshot_first": str(pd.Timestamp(used[0]).date()),
        "snapshot_last": str(pd.Timestamp(used[-1]).date()),
        "snapshots": len(used),
        "label_horizon_days": horizon,
        "data_end": data_end.isoformat(),
        "rows": len(joined),
        "churn_rate": float(joined["churned"].mean()),
    }
    return TrainingSet(joined, features, lineage)


def split_rows(data: pd.DataFrame, settings: Settings) -> Split:
    """Time split by default (latest complete snapshots held out); stratified random by config."""
    cfg = settings.training
    if cfg.split == "random":
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(data))
        rest, holdout = train_test_split(idx, test_size=cfg.test_size, stratify=data["churned"], random_state=cfg.seed)
        fit, validation = train_test_split(
            rest, test_size=cfg.test_size, stratify=data["churned"].iloc[rest], random_state=cfg.seed
        )
        return Split(
            np.sort(fit),
            np.sort(validation),
            np.sort(holdout),
            f"stratified random {1 - cfg.test_size:.0%}/{cfg.test_size:.0%}",
        )
    snaps = np.sort(data["event_timestamp"].unique())
    if len(snaps) < 3:
        raise TrainingError(
            f"a time split needs at least 3 labelled snapshots, there are {len(snaps)}; use training.split: random"
        )
    n_hold = min(cfg.holdout_snapshots, max(1, len(snaps) // 4))
    n_val = min(cfg.validation_snapshots, max(1, (len(snaps) - n_hold) // 4))
    hold_from = snaps[-n_hold]
    val_from = snaps[-(n_hold + n_val)]
    ts = data["event_timestamp"].to_numpy()
    fit = np.flatnonzero(ts < val_from)
    validation = np.flatnonzero((ts >= val_from) & (ts < hold_from))
    holdout = np.flatnonzero(ts >= hold_from)
    return Split(
        fit,
        validation,
        holdout,
        f"time: fit < {pd.Timestamp(val_from).date()} <= validation < {pd.Timestamp(hold_from).date()} <= holdout",
    )


def train_candidates(
    settings: Settings, training: TrainingSet, split: Split, progress: Callable[[str], None]
) -> list[CandidateResult]:
    """Fit, evaluate, cross-validate and log every configured candidate."""
    from churnops.training.tracking import log_candidate, use_tracking

    cfg = settings.training
    experiment = use_tracking(settings.mlflow)
    data = training.frame
    x = data[training.features].astype("float64")
    y = data["churned"].astype(int)
    train_part = np.concatenate([split.fit, split.validation])
    results = []
    for name, config in cfg.candidates.items():
        started = time.perf_counter()
        candidate = build_candidate(name, config, cfg.seed).fit(x.iloc[split.fit], y.iloc[split.fit])
        threshold = choose_threshold(
            y.iloc[split.validation].to_numpy(), candidate.predict_proba(x.iloc[split.validation])
        )
        validation = classification_metrics(
            y.iloc[split.validation].to_numpy(), candidate.predict_proba(x.iloc[split.validation]), threshold
        )
        proba = candidate.predict_proba(x.iloc[split.holdout])
        holdout = classification_metrics(y.iloc[split.holdout].to_numpy(), proba, threshold)

        def fresh_model(name: str = name, config: CandidateSettings = config) -> Any:
            return build_candidate(name, config, cfg.seed).model

        cv_mean, cv_std = cross_validated_f1(
            fresh_model,
            x.iloc[train_part],
            y.iloc[train_part],
            data["customer_id"].iloc[train_part],
            cfg.cv_folds,
        )
        importances = candidate.importances(x.iloc[split.validation], y.iloc[split.validation], cfg.seed)
        metrics = {
            **holdout,
            **{f"validation_{k}": v for k, v in validation.items()},
            "cv_f1_mean": cv_mean,
            "cv_f1_std": cv_std,
            "threshold": threshold,
        }
        params = {
            "algorithm": config.algorithm,
            **config.params,
            "seed": cfg.seed,
            "split": split.description,
            "horizon_days": cfg.horizon_days,
            "cv_folds": cfg.cv_folds,
            "rows_fit": len(split.fit),
            "rows_validation": len(split.validation),
            "rows_holdout": len(split.holdout),
        }
        tags = {
            "feature_table_hash": training.lineage["feature_table_hash"],
            "snapshot_range": f"{training.lineage['snapshot_first']}..{training.lineage['snapshot_last']}",
            "label_horizon_days": str(cfg.horizon_days),
            "candidate": name,
        }
        source = str(feature_table(settings).root)
        datasets = {
            "training": (
                data.iloc[train_part][["customer_id", "event_timestamp", *training.features, "churned"]],
                source,
            ),
            "holdout": (
                data.iloc[split.holdout][["customer_id", "event_timestamp", *training.features, "churned"]],
                source,
            ),
        }
        logged = log_candidate(
            experiment,
            candidate,
            params,
            metrics,
            importances,
            training.lineage,
            tags,
            datasets,
            x.iloc[split.holdout].head(20),
            threshold,
        )
        seconds = time.perf_counter() - started
        progress(
            f"{name}: holdout F1 {holdout['f1']:.3f}, ROC AUC {holdout['roc_auc']:.3f}, "
            f"CV F1 {cv_mean:.3f}±{cv_std:.3f} ({seconds:.1f}s)"
        )
        results.append(
            CandidateResult(
                name,
                config.algorithm,
                logged.run_id,
                logged.model_uri,
                threshold,
                holdout,
                validation,
                cv_mean,
                cv_std,
                importances,
                seconds,
                proba,
            )
        )
    return results


def train(settings: Settings, progress: Callable[[str], None] | None = None) -> TrainReport:
    """Train the candidates, gate the best, and register it as the challenger if it passes.

    Args:
        settings: The loaded settings.
        progress: Called with a line per stage.

    Returns:
        The report; `version` is the new model version when the gate passed.

    Raises:
        TrainingError: Training cannot run (no features, no complete horizon).
        GateFailedError: The challenger failed the gate; nothing registered, alert raised once.
    """
    say = progress or (lambda _: None)
    started = time.perf_counter()
    with workspace_lock(settings.workspace, "train"):
        training = build_training_set(settings)
        say(
            f"training set: {len(training.frame):,} labelled rows from {training.lineage['snapshots']} snapshots "
            f"({training.lineage['snapshot_first']} .. {training.lineage['snapshot_last']}), "
            f"churn rate {training.lineage['churn_rate']:.1%}"
        )
        split = split_rows(training.frame, settings)
        results = train_candidates(settings, training, split, say)
        metric = settings.training.selection_metric
        best = max(results, key=lambda r: (r.validation[metric], r.name))
        registry = model_registry(settings)
        holdout_labels = training.frame["churned"].to_numpy()[split.holdout]
        champion = _champion_predictions(registry, training, split)
        gate = evaluate_gate(
            settings.gate, holdout_labels, (best.holdout_proba, best.threshold), champion, seed=settings.training.seed
        )
        report = TrainReport(len(training.frame), results, best.name, gate)
        _record_gate(registry, best, gate)
        if not gate.passed:
            report.alerted = _alert_gate_failure(settings, training, best, gate)
            report.seconds = time.perf_counter() - started
            _log(settings, report, "gate failed")
            raise GateFailedError(f"challenger {best.name} failed the gate: {'; '.join(gate.reasons)}", report)
        report.version = _register(settings, registry, training, best)
        if registry.holder("champion") is None:
            registry.move("champion", report.version, "first model to pass the gate", best.holdout)
            report.promoted_to_champion = True
        report.seconds = time.perf_counter() - started
        _log(settings, report, "ok")
        return report


def _champion_predictions(
    registry: ModelRegistry, training: TrainingSet, split: Split
) -> tuple[np.ndarray, float] | None:
    from churnops.training.tracking import load_scorer

    if registry.holder("champion") is None:
        return None
    scorer = load_scorer(f"models:/{registry.model_name}@champion")
    holdout = training.frame.iloc[split.holdout]
    return scorer.predict_proba(holdout), scorer.threshold


def _record_gate(registry: ModelRegistry, best: CandidateResult, gate: GateResult) -> None:
    client = registry.client
    client.set_tag(best.run_id, "gate.passed", str(gate.passed).lower())
    client.set_tag(
        best.run_id,
        "gate.policy",
        json.dumps({k: v for k, v in gate.as_dict().items() if k in ("min_f1", "metric", "margin", "confidence")}),
    )
    client.set_tag(best.run_id, "gate.reasons", "; ".join(gate.reasons) or "none")
    for key in ("difference", "ci_low", "ci_high"):
        value = getattr(gate, key)
        if value is not None:
            client.log_metric(best.run_id, f"gate_{key}", float(value))


def _alert_gate_failure(settings: Settings, training: TrainingSet, best: CandidateResult, gate: GateResult) -> bool:
    candidates = json.dumps({k: v.model_dump() for k, v in settings.training.candidates.items()}, sort_keys=True)
    key = hashlib.sha256(
        f"gate|{training.lineage['feature_table_hash']}|{candidates}|{settings.gate.model_dump_json()}".encode()
    ).hexdigest()[:16]
    alert = Alert(
        key=f"gate-failed-{key}",
        title=f"Model quality gate failed for {settings.mlflow.model_name}: nothing was registered",
        details={
            "challenger": best.name,
            "run_id": best.run_id,
            "reasons": "; ".join(gate.reasons),
            "holdout_f1": round(best.holdout["f1"], 4),
            "feature_table_hash": training.lineage["feature_table_hash"],
        },
    )
    return raise_alert(settings.alerts, alert)


def _register(settings: Settings, registry: ModelRegistry, training: TrainingSet, best: CandidateResult) -> str:
    from churnops.features import feast_repo

    version = registry.register(
        best.model_uri,
        best.run_id,
        tags={
            "candidate": best.name,
            "threshold": f"{best.threshold:.6f}",
            "feature_table_hash": training.lineage["feature_table_hash"],
        },
    )
    service_name = f"{settings.mlflow.model_name}_v{version}"
    store = feast_repo.open_store(settings)
    view = store.get_feature_view(feast_repo.VIEW)
    store.apply([feast_repo.feature_service(service_name, view, training.features)])
    registry.client.set_model_version_tag(registry.model_name, version, "feature_service", service_name)
    registry.move("challenger", version, "passed the quality gate", best.holdout)
    return version


def _log(settings: Settings, report: TrainReport, status: str) -> None:
    append_run(
        settings.workspace,
        {
            "command": "train",
            "status": status,
            "date": datetime.now(UTC).date().isoformat(),
            "challenger": report.challenger,
            "version": report.version,
            "rows": report.rows,
            "gate": {k: v for k, v in report.gate.as_dict().items() if k != "reasons"},
            "reasons": report.gate.reasons,
        },
    )
