"""Training: labels -> purged time split -> point-in-time training set -> candidates in MLflow.

The `train` step ends with the MLflow run id of the challenger (the best candidate by
`training.selection_metric` on validation data); the `gate` and `register` steps
(`pipelines/promotion.py`) take it from there. Unchanged inputs (feature table, labels,
training settings, code) reuse the completed training of the same inputs instead of training
again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops.data.tables import order_span
from churnops.features.store import FeatureStore
from churnops.features.table import FeatureTable
from churnops.pipelines.features import feature_table, on_grid
from churnops.pipelines.ingest import NO_ORDERS, make_lake
from churnops.runlog import append_run
from churnops.settings import CandidateSettings, Settings
from churnops.training.candidates import Candidate, build_candidate, fit_pool
from churnops.training.gate import baseline_metrics, by_recency_scores
from churnops.training.labels import LabelGrid, label_customers, label_grid, label_rows
from churnops.training.metrics import choose_threshold, classification_metrics, cross_validated_proba, fold_scores

log = logging.getLogger(__name__)

PARTS = ("fit", "validation", "holdout")
HOLDOUT_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "brier")


class TrainingError(RuntimeError):
    """Training cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class Split:
    """Row positions of the three parts of the training set, and the snapshots each holds."""

    fit: np.ndarray
    validation: np.ndarray
    holdout: np.ndarray
    snapshots: dict[str, list[str]]
    description: str


@dataclass
class TrainingSet:
    """Labelled rows with their point-in-time features (fit rows, then validation, then holdout)."""

    frame: pd.DataFrame
    features: list[str]
    split: Split
    lineage: dict[str, Any]


@dataclass
class CandidateResult:
    """One trained, evaluated and logged candidate."""

    name: str
    algorithm: str
    run_id: str
    threshold: float
    holdout: dict[str, float]
    validation: dict[str, float]
    cv_f1_mean: float
    cv_f1_std: float
    seconds: float


@dataclass
class Trained:
    """The candidates of one training attempt: results, holdout probabilities, fitted models."""

    results: list[CandidateResult]
    holdout_proba: dict[str, np.ndarray]
    models: dict[str, Candidate]
    baselines: dict[str, float]


@dataclass
class TrainResult:
    """What the train step hands on: the challenger's run id and the evidence beside it."""

    run_id: str
    challenger: str
    candidates: list[CandidateResult]
    baselines: dict[str, float]
    rows: dict[str, int]
    churn_rate: float
    logical_date: str
    reused: bool = False
    seconds: float = 0.0
    snapshots: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able (an orchestrator passes it on)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> TrainResult:
        """The inverse of `as_dict`."""
        return cls(**{**body, "candidates": [CandidateResult(**c) for c in body["candidates"]]})


def logical_datetime(day: date) -> datetime:
    """00:00 (UTC, naive) of a logical date: everything strictly before it is known."""
    return datetime.combine(day, datetime.min.time())


def default_logical_date(settings: Settings) -> date:
    """The day after the last order in the raw lake.

    Raises:
        TrainingError: The lake holds no orders.
    """
    span = order_span(make_lake(settings).data_files("orders"))
    if span is None:
        raise TrainingError(NO_ORDERS)
    return span[1].date() + timedelta(days=1)


def purged_time_split(
    snapshots: list[pd.Timestamp], holdout: int, validation: int, horizon_days: int
) -> dict[str, list[pd.Timestamp]]:
    """Fit, validation and holdout snapshots with at least a horizon between the parts.

    The holdout is the latest `holdout` snapshots; validation the latest `validation` snapshots
    whose label window closes before the holdout starts; fit every snapshot whose window closes
    before validation starts. So no label of one part looks into a later part's time.

    Raises:
        TrainingError: Too little history for the three parts and their gaps.
    """
    horizon = pd.Timedelta(days=horizon_days)
    held = snapshots[-holdout:]
    if not held:
        raise TrainingError("no labelled snapshot to hold out")
    room = [s for s in snapshots if s + horizon <= held[0]]
    checked = room[-validation:]
    fit = [s for s in snapshots if checked and s + horizon <= checked[0]]
    if not checked or not fit:
        span = (snapshots[-1] - snapshots[0]).days if snapshots else 0
        raise TrainingError(
            f"a purged time split needs fit, validation and holdout snapshots {horizon_days} days apart; the "
            f"{len(snapshots)} labelled snapshots span {span} days. Ingest more history, shorten "
            "training.horizon_days, lower training.holdout_snapshots / validation_snapshots, "
            "or use training.split: random"
        )
    return {"fit": fit, "validation": checked, "holdout": held}


def _random_split(labels: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, str]:
    """The design document's stratified random split of every labelled row, then sampled."""
    from sklearn.model_selection import train_test_split

    cfg = settings.training
    idx = np.arange(len(labels))
    rest, held = train_test_split(idx, test_size=cfg.test_size, stratify=labels["churned"], random_state=cfg.seed)
    fit, checked = train_test_split(
        rest, test_size=cfg.test_size, stratify=labels["churned"].iloc[rest], random_state=cfg.seed
    )
    part = np.empty(len(labels), dtype=object)
    part[fit], part[checked], part[held] = "fit", "validation", "holdout"
    sampled = _sample(labels.assign(part=part), settings)
    return sampled, f"stratified random {1 - cfg.test_size:.0%}/{cfg.test_size:.0%} (not purged)"


def _time_split(
    grid: LabelGrid, files: list[str], settings: Settings, known_until: datetime
) -> tuple[pd.DataFrame, str]:
    """The purged time split of the grid's snapshots, each part sampled, then labelled.

    Sampling picks positions in each part's (snapshot, customer) order before any row is
    labelled, so only the rows kept are labelled; they are the rows sampling every labelled
    row would keep (`_sample`).
    """
    cfg = settings.training
    parts = purged_time_split(grid.snapshots, cfg.holdout_snapshots, cfg.validation_snapshots, cfg.horizon_days)
    pieces = []
    for name in PARTS:
        members = parts[name]
        rows = sum(grid.size(s) for s in members)
        cap = cfg.max_rows if name == "fit" else cfg.max_eval_rows
        picks = None
        if cap and rows > cap:
            picks = np.sort(np.random.RandomState(cfg.seed).choice(rows, cap, replace=False))
        pieces.append(grid.rows(members, picks).assign(part=name))
    labelled = label_rows(files, pd.concat(pieces, ignore_index=True), cfg.horizon_days, known_until)
    described = ", ".join(f"{name} {_span(members)}" for name, members in parts.items())
    return labelled[["customer_id", "event_timestamp", "churned", "part"]], (
        f"purged time split ({cfg.horizon_days}-day gaps): {described}"
    )


def _span(snapshots: list[pd.Timestamp]) -> str:
    return f"{snapshots[0]:%Y-%m-%d}..{snapshots[-1]:%Y-%m-%d} ({len(snapshots)})"


def _sample(labels: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Cap the fit part at `training.max_rows`, validation and holdout at `max_eval_rows` each.

    The rows drawn are those of `DataFrame.sample(cap, random_state=seed)` on each part, taken
    by position (the labels are in snapshot and customer order already, so are the draws).
    """
    cfg = settings.training
    part = pd.Categorical(labels["part"], categories=list(PARTS))
    chosen = []
    for code, name in enumerate(PARTS):
        rows = np.flatnonzero(part.codes == code)
        cap = cfg.max_rows if name == "fit" else cfg.max_eval_rows
        if cap and len(rows) > cap:
            rows = np.sort(rows[np.random.RandomState(cfg.seed).choice(len(rows), cap, replace=False)])
        chosen.append(rows)
    sampled = labels.iloc[np.concatenate(chosen)].reset_index(drop=True)
    return sampled.assign(part=sampled["part"].astype(object))


def build_training_set(
    settings: Settings,
    as_of: date,
    store: FeatureStore | None = None,
    table: FeatureTable | None = None,
) -> TrainingSet:
    """Labels for every snapshot whose window closes by `as_of`, split, sampled and joined
    point-in-time with the feature store.

    Args:
        settings: The loaded settings.
        as_of: The logical date: only orders and snapshots before it are used.
        store: Where features come from (default: the workspace's Feast store).
        table: The feature table (default: the workspace's).

    Raises:
        TrainingError: No features yet, no complete snapshot, or too little for the split.
    """
    from churnops.features.feast_repo import FeastFeatureStore

    table = table or feature_table(settings)
    manifest = table.manifest()
    if not manifest.snapshots:
        raise TrainingError("the feature table is empty; run `churnops features` first")
    files = make_lake(settings).data_files("orders")
    if not files:
        raise TrainingError(NO_ORDERS)
    horizon = settings.training.horizon_days
    known_until = logical_datetime(as_of)
    cfg = settings.features
    used = on_grid(list(manifest.snapshots), as_of, cfg.cadence_days, cfg.history_snapshots)
    snapshots = [datetime.fromisoformat(s) for s in used]
    grid = label_grid(files, snapshots, horizon, known_until)
    if not grid.snapshots and as_of.isoformat() not in manifest.snapshots:
        raise TrainingError(
            f"training for {as_of} uses the snapshots planned back from {as_of} every "
            f"{cfg.cadence_days} days, and the feature table has none with a complete label window; "
            f"run `churnops features --as-of {as_of}` first"
        )
    if not grid.snapshots:
        first = f"{snapshots[0]:%Y-%m-%d}" if snapshots else "none"
        raise TrainingError(
            f"no feature snapshot has a complete {horizon}-day horizon before {as_of}: the first snapshot is "
            f"{first}; ingest more history or shorten training.horizon_days"
        )
    if settings.training.split == "random":
        labels = label_customers(files, snapshots, horizon, known_until)
        labelled_rows = len(labels)
        sampled, description = _random_split(labels, settings)
    else:
        labelled_rows = sum(grid.size(s) for s in grid.snapshots)
        sampled, description = _time_split(grid, files, settings, known_until)
    entity = sampled.assign(event_timestamp=pd.to_datetime(sampled["event_timestamp"]).dt.tz_localize("UTC"))
    if store is None:
        feast = FeastFeatureStore(settings, table)
        feast.repoint()
        store = feast
    unknown = sorted(set(settings.training.exclude_features) - set(manifest.features))
    if unknown:
        raise TrainingError(
            f"training.exclude_features names features the table does not have: {', '.join(unknown)}; "
            f"it has: {', '.join(manifest.features)}"
        )
    features = [f for f in manifest.features if f not in settings.training.exclude_features]
    joined = store.training_rows(entity, list(manifest.features))  # recency stays: the baseline needs it
    order = {name: i for i, name in enumerate(PARTS)}
    joined = (
        joined.assign(_order=joined["part"].map(order))
        .sort_values(["_order", "event_timestamp", "customer_id"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    part = joined["part"].to_numpy()
    by_part = {
        name: sorted({f"{pd.Timestamp(t):%Y-%m-%d}" for t in joined.loc[part == name, "event_timestamp"].unique()})
        for name in PARTS
    }
    split = Split(
        np.flatnonzero(part == "fit"),
        np.flatnonzero(part == "validation"),
        np.flatnonzero(part == "holdout"),
        by_part,
        description,
    )
    lineage = {
        "feature_table_hash": manifest.content_hash_of(used),  # the snapshots this date trains on
        "raw_partitions": manifest.raw_partitions,
        "logical_date": as_of.isoformat(),
        "label_horizon_days": horizon,
        "label_window": "[snapshot, snapshot + horizon)",
        "split": description,
        "snapshots": by_part,
        "rows": {name: int((part == name).sum()) for name in PARTS},
        "labelled_rows": labelled_rows,
        "churn_rate": float(joined["churned"].mean()),
    }
    return TrainingSet(joined, features, split, lineage)


# Below these, what the models learn (and the gate's verdict on them) moves with the sample
FEW_FIT_ROWS = 5_000
FEW_FIT_CHURNERS = 200


def _warn_if_little(rows: int, churners: int, snapshots: int) -> None:
    """Say so when the models fit on so little that their scores are mostly noise."""
    if rows < FEW_FIT_ROWS or churners < FEW_FIT_CHURNERS:
        log.warning(
            "the models fit on only %s rows (%s churners, %d snapshot(s)): their scores and the gate's verdict "
            "move with the sample; more history, or a shorter features.cadence_days (more snapshots), gives more",
            f"{rows:,}",
            f"{churners:,}",
            snapshots,
        )


def input_key(settings: Settings, training: TrainingSet) -> str:
    """What training depends on: the feature table, the labelled rows, the settings and the code."""
    digest = hashlib.sha256()
    digest.update(training.lineage["feature_table_hash"].encode())
    rows = training.frame[["customer_id", "event_timestamp", "churned", "part"]]
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    digest.update(settings.training.model_dump_json().encode())
    digest.update(code_fingerprint().encode())
    return digest.hexdigest()[:32]


def code_fingerprint() -> str:
    """A hash of the churnops package's source files."""
    import churnops

    digest = hashlib.sha256()
    root = Path(churnops.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def train_candidates(
    settings: Settings,
    training: TrainingSet,
    experiment: str,
    extra_tags: dict[str, str],
    progress: Callable[[str], None],
) -> Trained:
    """Fit, evaluate, cross-validate and log every configured candidate as an MLflow run."""
    from churnops.training.tracking import log_candidate

    cfg = settings.training
    data, split = training.frame, training.split
    x = data[training.features].astype("float64")
    y = data["churned"].astype(int)
    y_hold = y.iloc[split.holdout].to_numpy()
    _warn_if_little(len(split.fit), int(y.iloc[split.fit].sum()), len(split.snapshots.get("fit", [])))
    baselines = baseline_metrics(y_hold, by_recency_scores(data["recency"].iloc[split.holdout].to_numpy()))
    trained = Trained([], {}, {}, baselines)
    for number, (name, config) in enumerate(cfg.candidates.items(), start=1):
        started = time.perf_counter()
        label = f"{name} ({number}/{len(cfg.candidates)})"
        progress(f"{label}: fitting on {len(split.fit):,} rows, then {cfg.cv_folds} cross-validation folds")
        # The final fit and the folds are independent: where the algorithm allows, they train
        # side by side, a thread each (`fit_pool`).
        candidate = build_candidate(name, config, cfg.seed)

        def fresh_model(name: str = name, config: CandidateSettings = config) -> Any:
            return build_candidate(name, config, cfg.seed).model

        def fold_done(done: int, auc: float, label: str = label) -> None:
            progress(f"{label}: cross-validation fold {done}/{cfg.cv_folds}, ROC AUC {auc:.3f}")

        with fit_pool(config.algorithm) as pool:
            final = pool.submit(candidate.fit, x.iloc[split.fit], y.iloc[split.fit]) if pool else None
            folds = cross_validated_proba(
                fresh_model,
                x.iloc[split.fit],
                y.iloc[split.fit],
                data["customer_id"].iloc[split.fit],
                cfg.cv_folds,
                fold_done,
                pool,
            )
            candidate = final.result() if final else candidate.fit(x.iloc[split.fit], y.iloc[split.fit])
        candidate.predict_with_every_core()
        validation_proba = candidate.predict_proba(x.iloc[split.validation])
        threshold = choose_threshold(y.iloc[split.validation].to_numpy(), validation_proba)
        cv = fold_scores(folds, threshold)
        cv_mean, cv_std = cv["cv_f1_mean"], cv["cv_f1_std"]
        validation = classification_metrics(y.iloc[split.validation].to_numpy(), validation_proba, threshold)
        proba = candidate.predict_proba(x.iloc[split.holdout])
        holdout = classification_metrics(y_hold, proba, threshold)
        importances = candidate.importances(x.iloc[split.validation], y.iloc[split.validation], cfg.seed)
        metrics = {
            **holdout,
            **{f"validation_{k}": v for k, v in validation.items()},
            **{f"baseline_{k}": v for k, v in baselines.items()},
            **cv,
            "threshold": threshold,
        }
        params = {
            "algorithm": config.algorithm,
            **config.params,
            "seed": cfg.seed,
            "split": cfg.split,
            "horizon_days": cfg.horizon_days,
            "cv_folds": cfg.cv_folds,
            "rows_fit": len(split.fit),
            "rows_validation": len(split.validation),
            "rows_holdout": len(split.holdout),
        }
        tags = {
            **extra_tags,
            "feature_table_hash": training.lineage["feature_table_hash"],
            "label_horizon_days": str(cfg.horizon_days),
            "candidate": name,
            **{f"split.{part}": _listing(snaps) for part, snaps in split.snapshots.items()},
        }
        source = str(feature_table(settings).root)
        columns = ["customer_id", "event_timestamp", *training.features, "churned"]
        datasets = {
            "training": (data.iloc[split.fit][columns], source),
            "holdout": (data.iloc[split.holdout][columns], source),
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
            f"{label}: holdout F1 {holdout['f1']:.3f}, ROC AUC {holdout['roc_auc']:.3f}, "
            f"CV F1 {cv_mean:.3f}±{cv_std:.3f} ({seconds:.1f}s)"
        )
        trained.results.append(
            CandidateResult(
                name, config.algorithm, logged.run_id, threshold, holdout, validation, cv_mean, cv_std, seconds
            )
        )
        trained.holdout_proba[name] = proba
        trained.models[name] = candidate
    return trained


def _listing(snapshots: list[str]) -> str:
    text = ",".join(snapshots)
    return text if len(text) <= 4000 else f"{snapshots[0]}..{snapshots[-1]} ({len(snapshots)} snapshots)"


def select(results: list[CandidateResult], metric: str) -> CandidateResult:
    """The training stage's own rule: the best candidate by the metric on validation data."""
    return max(results, key=lambda r: (r.validation[metric], r.name))


def train(settings: Settings, as_of: date | None = None, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train the candidates and pick the challenger (the `train` step).

    Args:
        settings: The loaded settings.
        as_of: The logical date (default: the day after the last order in the lake).
        progress: Called with a line per stage, candidate and fold.

    Returns:
        The challenger's run id with every candidate's metrics and the baselines.

    Raises:
        TrainingError: Training cannot run (no features, no complete horizon, too little history).
    """
    from churnops.training import tracking

    say = progress or (lambda _: None)
    started = time.perf_counter()
    with settings.paths.lock("churnops train"):
        day = as_of or default_logical_date(settings)
        training = build_training_set(settings, day)
        rows = training.lineage["rows"]
        say(
            f"training set as of {day}: {sum(rows.values()):,} labelled rows ({rows['fit']:,} fit, "
            f"{rows['validation']:,} validation, {rows['holdout']:,} holdout), churn rate "
            f"{training.lineage['churn_rate']:.1%}"
        )
        say(training.split.description)
        key = input_key(settings, training)
        experiment = tracking.use_tracking(settings)
        previous = tracking.completed_training(experiment, key)
        if previous:
            result = _from_runs(previous, training, day)
            say(f"inputs unchanged since the training of {result.logical_date}: reusing its runs")
        else:
            left = tracking.delete_unfinished_training(experiment, key)
            if left:
                say(f"deleted {len(left)} run(s) an interrupted training on these inputs left: {', '.join(left)}")
            result = _train_new(settings, training, experiment, key, day, say)
        result.seconds = time.perf_counter() - started
        append_run(
            settings.paths,
            {
                "command": "train",
                "date": day.isoformat(),
                "status": "reused" if result.reused else "ok",
                "run_id": result.run_id,
                "challenger": result.challenger,
            },
        )
        return result


def _train_new(
    settings: Settings, training: TrainingSet, experiment: str, key: str, day: date, say: Callable[[str], None]
) -> TrainResult:
    from churnops.training import tracking

    tags = {tracking.INPUT_KEY: key, "logical_date": day.isoformat()}
    trained = train_candidates(settings, training, experiment, tags, say)
    best = select(trained.results, settings.training.selection_metric)
    kept = ["customer_id", "event_timestamp", "churned", *dict.fromkeys([*training.features, "recency"])]
    holdout = training.frame.iloc[training.split.holdout][kept].assign(proba=trained.holdout_proba[best.name])
    tracking.log_holdout(best.run_id, holdout)
    tracking.set_run_tags(best.run_id, {tracking.SELECTED: "true"})
    for candidate in trained.results:  # written last: from here on the attempt is complete and reusable
        tracking.set_run_tags(candidate.run_id, {tracking.TRAINING_COMPLETE: "true"})
    return TrainResult(
        run_id=best.run_id,
        challenger=best.name,
        candidates=trained.results,
        baselines=trained.baselines,
        rows=training.lineage["rows"],
        churn_rate=training.lineage["churn_rate"],
        logical_date=day.isoformat(),
        snapshots=training.split.snapshots,
    )


def _from_runs(runs: list[Any], training: TrainingSet, day: date) -> TrainResult:
    """The result of a completed training attempt, rebuilt from its runs."""
    candidates = []
    chosen = None
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        holdout = {k: metrics[k] for k in HOLDOUT_METRICS if k in metrics}
        validation = {k.removeprefix("validation_"): v for k, v in metrics.items() if k.startswith("validation_")}
        candidate = CandidateResult(
            name=tags["candidate"],
            algorithm=run.data.params.get("algorithm", ""),
            run_id=run.info.run_id,
            threshold=metrics["threshold"],
            holdout=holdout,
            validation=validation,
            cv_f1_mean=metrics.get("cv_f1_mean", float("nan")),
            cv_f1_std=metrics.get("cv_f1_std", float("nan")),
            seconds=((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
        )
        candidates.append(candidate)
        if tags.get("churnops.selected") == "true":
            chosen = candidate
    if chosen is None:
        raise TrainingError("a completed training attempt has no selected run; remove it from MLflow")
    first = runs[0].data
    baselines = {k.removeprefix("baseline_"): v for k, v in first.metrics.items() if k.startswith("baseline_")}
    return TrainResult(
        run_id=chosen.run_id,
        challenger=chosen.name,
        candidates=candidates,
        baselines=baselines,
        rows=training.lineage["rows"],
        churn_rate=training.lineage["churn_rate"],
        logical_date=first.tags.get("logical_date", day.isoformat()),
        reused=True,
        snapshots=training.split.snapshots,
    )
