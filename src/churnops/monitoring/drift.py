"""Data drift and prediction drift of one day of the prediction log, with Evidently, and the
realized performance of the predictions whose labels have arrived (`performance`).

The reference is the feature snapshot of the champion's logical date (every customer the
champion was put in front of, with the features its training data ended with), scored by it.
Not its labelled training rows: their newest snapshot is at least a horizon older, and in a shop
whose customers age every cumulative feature (tenure, order counts, lifetime spend) has moved in
that time, so the check would cry drift on the first day. The champion's holdout stands in when
that snapshot is no longer in the feature table. The day's logged predictions of the
production variants (champion and challenger; staging and shadow answers are not production
traffic) are the current data.

Drift is judged by effect size, not by p-values that turn significant at any large n: every
column's distance is the normed Wasserstein distance (Evidently's choice for large samples, here
for every sample size), drifted above `monitoring.drift_threshold`; the data set drifts when at
least `monitoring.drift_share` of the features do. Under `monitoring.min_sample` predictions no
verdict is given. Both sides are sampled to at most `monitoring.sample_size` rows, so the
check's cost does not grow with traffic.

The newcomers (customers whose first order is at most `monitoring.newcomer_days` old) are
checked again on their own, over a window of days (`newcomer_check`): a new segment arrives
among them, where it is most of them, while among all customers it is too few to move anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops.settings import Settings

log = logging.getLogger(__name__)

PRODUCTION_VARIANTS = ("champion", "challenger")
PREDICTION = "probability"


class MonitoringError(RuntimeError):
    """Monitoring cannot do what was asked; the message says why and what to do."""


@dataclass
class Monitored:
    """What the monitor step found for one day of the prediction log."""

    day: str
    predictions: int = 0
    sampled: int = 0
    champion: str | None = None
    champion_answers: int = 0  # the day's answers by that version as champion (what drift judges)
    dataset_drift: bool | None = None
    drifted_share: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    distances: dict[str, float] = field(default_factory=dict)
    prediction_drift: float | None = None
    system: dict[str, Any] = field(default_factory=dict)
    realized: dict[str, Any] = field(default_factory=dict)  # `performance.Realized`, labels permitting
    newcomers: dict[str, Any] = field(default_factory=dict)  # the newcomers' own drift check (`newcomer_drift`)
    target_drift: dict[str, Any] = field(default_factory=dict)  # labelled churn rate against the champion's
    estimated: list[dict[str, Any]] = field(default_factory=list)  # CBPE per version and variant: estimates
    decision: dict[str, Any] = field(default_factory=dict)  # `decide.Decision`: alarms, alerts, retrain
    report: str = ""
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Monitored:
        """The inverse of `as_dict`."""
        return cls(**body)


def monitoring_dir(settings: Settings) -> Path:
    """Where reports and summaries go: `<workspace>/monitoring/<day>/`, and an index page."""
    return settings.paths.root / "monitoring"


def system_metrics(frame: pd.DataFrame, refusals: pd.DataFrame | None = None) -> dict[str, Any]:
    """Prediction counts (overall and per variant), throughput, the latency of the requests that
    made them (one figure per HTTP request), and the error rate: requests refused or failed over
    all requests (answered ones are those in the log, refused ones the server recorded beside it).
    """
    errors = 0 if refusals is None else len(refusals)
    by_status = {} if refusals is None else {str(k): int(v) for k, v in refusals["status"].value_counts().items()}
    if frame.empty:
        return {
            "predictions": 0,
            "requests": errors,
            "errors": errors,
            "errors_by_status": by_status,
            "error_rate": 1.0 if errors else None,
        }
    # An item's request_id is "<the HTTP request's id>-<its place in it>": one row per request.
    requests = frame.assign(request=frame["request_id"].str.rsplit("-", n=1).str[0]).drop_duplicates("request")
    span = (frame["ts"].max() - frame["ts"].min()).total_seconds()
    return {
        "predictions": len(frame),
        "requests": len(requests) + errors,
        "errors": errors,
        "errors_by_status": by_status,
        "error_rate": round(errors / (len(requests) + errors), 6),
        "per_variant": {str(k): int(v) for k, v in frame["variant"].value_counts().sort_index().items()},
        "first": frame["ts"].min().isoformat(),
        "last": frame["ts"].max().isoformat(),
        "predictions_per_second": round(len(frame) / span, 3) if span > 0 else None,
        "latency_p50_ms": round(float(np.percentile(requests["latency_ms"], 50)), 3),
        "latency_p99_ms": round(float(np.percentile(requests["latency_ms"], 99)), 3),
    }


def estimated_by_group(frame: pd.DataFrame, settings: Settings) -> list[dict[str, Any]]:
    """CBPE's estimated precision, recall and F1 per version and variant (`estimate`), each
    version's probabilities calibrated on its holdout (`calibration_of`)."""
    from churnops.monitoring.estimate import estimate_performance

    if frame.empty:
        return []
    return [
        {"version": str(version), "variant": str(variant)}
        | estimate_performance(
            group["probability"].to_numpy(),
            group["label"].to_numpy(),
            calibration_of(settings, str(version)),
        )
        for (version, variant), group in frame.groupby(["version", "variant"], sort=True)
    ]


_CALIBRATIONS: dict[tuple[str, str], Any] = {}


def calibration_of(settings: Settings, version: str) -> Any:
    """The CBPE calibration of a registered version, fitted on the holdout stored with its run
    (its probabilities and labels); None when the version or its holdout cannot be found. A
    run's holdout never changes, so each is fitted once per process."""
    from churnops.monitoring.estimate import fit_calibration
    from churnops.pipelines.promotion import existing_registry
    from churnops.training import tracking

    tracking.use_tracking(settings)
    registry = existing_registry(settings)
    try:
        if registry is None:
            return None
        run_id = str(registry.client.get_model_version(registry.model_name, version).run_id)
        key = (settings.mlflow.tracking_uri, run_id)
        if key not in _CALIBRATIONS:
            holdout = tracking.load_holdout(run_id)
            _CALIBRATIONS[key] = fit_calibration(holdout["proba"].to_numpy(), holdout["churned"].to_numpy())
        return _CALIBRATIONS[key]
    except Exception as exc:  # an estimate without calibration is still an estimate; say why
        log.warning("no CBPE calibration for version %s (its holdout cannot be read): %s", version, exc)
        return None


def monitor_day(settings: Settings, day: date, decide: bool = True) -> Monitored:
    """Judge the drift of the predictions logged on `day` (UTC) against the champion's reference,
    and the newcomers of the window up to it against the reference's (`newcomer_check`).

    Writes `<workspace>/monitoring/<day>/report.html` (Evidently's) and `summary.json`, and
    rewrites the index page; rerunning a day replaces its files. With `decide`, the day's
    conditions also go into the history and the decision is taken (`decide_day`); the daily
    steps take it in a step of their own.
    """
    from churnops.monitoring.performance import realized_performance
    from churnops.pipelines.promotion import existing_registry
    from churnops.serving.prediction_log import read_predictions, read_refusals

    cfg = settings.monitoring
    result = Monitored(day=day.isoformat())
    result.realized = realized_performance(settings, day + timedelta(days=1)).as_dict()
    logged = read_predictions(settings.serving.prediction_log_url, day=day)
    current = logged[logged["variant"].isin(PRODUCTION_VARIANTS)] if not logged.empty else logged
    refusals = read_refusals(settings.serving.prediction_log_url, day)
    result.system = system_metrics(current, refusals[refusals["alias"] == "champion"])
    result.estimated = estimated_by_group(current, settings)
    result.predictions = len(current)
    registry = existing_registry(settings)
    result.champion = _champion_of_day(current, registry)
    # the champion's own answers: the reference is its, and a challenger's probabilities beside
    # them would make the prediction drift measure the difference between the two models
    judged = current[(current["variant"] == "champion") & (current["version"] == result.champion)]
    result.champion_answers = len(judged)
    if result.champion is not None and result.realized.get("groups"):
        result.target_drift = _target_drift(settings, registry, result.champion, result.realized["groups"])
    if result.champion is None:
        result.skipped = "no champion yet"
    elif len(judged) < cfg.min_sample:
        result.skipped = (
            f"{len(judged):,} production predictions of version {result.champion} logged on {day}: under "
            f"monitoring.min_sample ({cfg.min_sample:,}), too few to judge drift"
        )
    if result.skipped:
        if decide:
            _decide(settings, result, registry)
        _write(settings, result, None)
        return result
    assert registry is not None
    assert result.champion is not None
    rows, scorer = _reference_rows(settings, registry, result.champion)
    reference, features = _scored(rows, scorer, cfg), list(scorer.features)
    sample = judged.sample(min(len(judged), cfg.sample_size), random_state=cfg.seed)
    values = pd.DataFrame(list(sample["features"])).reindex(columns=features).astype("float64")
    values[PREDICTION] = sample["probability"].to_numpy(dtype="float64")
    result.sampled = len(values)
    check = check_drift(reference, values, features, cfg)
    snapshot = check.snapshot
    result.prediction_drift = check.prediction_drift
    result.distances = check.distances
    result.drifted_features = check.drifted_features
    result.drifted_share = check.drifted_share
    result.dataset_drift = check.dataset_drift
    newcomers = newcomer_check(settings, day, rows, scorer)
    newcomers_snapshot = newcomers.pop("snapshot", None)
    result.newcomers = newcomers
    if decide:
        _decide(settings, result, registry)
    _write(settings, result, snapshot, newcomers_snapshot)
    return result


def _champion_of_day(current: pd.DataFrame, registry: Any) -> str | None:
    """The version that answered the day as champion (the one with most answers: a day with a
    promotion has two), so a day is judged against its own model's reference however often it
    is checked again; the alias's holder now when it answered nothing, or is gone (a rewind)."""
    from churnops.registry.mlflow_registry import RegistryError

    if registry is None:
        return None
    answered = current.loc[current["variant"] == "champion", "version"].astype(str)
    if len(answered):
        version = str(answered.value_counts().idxmax())
        try:
            registry.version_tags(version)
            return version
        except RegistryError:
            pass
    holder: str | None = registry.holder("champion")
    return holder


NEWCOMER_FEATURE = "customer_age_days"
NEWCOMER_CHUNK = 20_000  # logged predictions parsed at a time while looking for newcomers


def newcomer_check(settings: Settings, day: date, rows: pd.DataFrame, scorer: Any) -> dict[str, Any]:
    """The drift of the newcomers alone: customers whose first order is at most
    `monitoring.newcomer_days` old, in the production predictions of the
    `monitoring.newcomer_window_days` days up to `day` (each customer's newest), against the
    newcomers of the champion's snapshot, by the same rule as the whole population.

    A new segment arrives among the newcomers: among all customers it is a few percent, which no
    distance on the whole population can see, while among the newcomers it is most of them. And
    newcomers do not age as a group, so a fixed reference stays fair for them.

    The window's predictions are parsed in a random order until `monitoring.sample_size`
    newcomers are found (`current` counts those found), so the cost does not grow with traffic.

    Returns:
        `{"dataset_drift": None, "skipped": why}` when it cannot judge; otherwise the verdict,
        share, drifted features, distances and sample sizes, and the Evidently snapshot under
        "snapshot" (taken out before the summary is written).
    """
    from churnops.serving.prediction_log import read_predictions

    cfg = settings.monitoring
    if cfg.newcomer_days == 0:
        return {"dataset_drift": None, "skipped": "off (monitoring.newcomer_days is 0)"}
    features = list(scorer.features)
    if NEWCOMER_FEATURE not in features:
        return {"dataset_drift": None, "skipped": f"the model has no {NEWCOMER_FEATURE} feature to tell newcomers by"}
    first = day - timedelta(days=cfg.newcomer_window_days - 1)
    logged = read_predictions(settings.serving.prediction_log_url, day=first, until=day + timedelta(days=1))
    out: dict[str, Any] = {"dataset_drift": None, "window": [first.isoformat(), day.isoformat()]}
    if not logged.empty:
        logged = logged[logged["variant"].isin(PRODUCTION_VARIANTS)]
        logged = logged.drop_duplicates("customer_id", keep="last") if logged["customer_id"].notna().all() else logged
    # In a random order, a chunk at a time until `sample_size` newcomers are found: the cost
    # stays flat however busy the window was.
    shuffled = logged.sample(frac=1.0, random_state=cfg.seed) if not logged.empty else logged
    found = [pd.DataFrame(columns=features, dtype="float64")]
    have = 0
    for start in range(0, len(shuffled), NEWCOMER_CHUNK):
        chunk = shuffled["features"].iloc[start : start + NEWCOMER_CHUNK]
        values = pd.DataFrame(list(chunk)).reindex(columns=features).astype("float64")
        found.append(values[values[NEWCOMER_FEATURE] <= cfg.newcomer_days])
        have += len(found[-1])
        if have >= cfg.sample_size:
            break
    current = pd.concat(found, ignore_index=True)
    reference_rows = rows[rows[NEWCOMER_FEATURE] <= cfg.newcomer_days]
    out |= {"current": len(current), "reference": len(reference_rows)}
    fewest = min(len(current), len(reference_rows))
    if fewest < cfg.newcomer_min_sample:
        side = "the window" if len(current) <= len(reference_rows) else "the champion's snapshot"
        out["skipped"] = (
            f"{fewest:,} newcomers in {side}: under monitoring.newcomer_min_sample ({cfg.newcomer_min_sample:,}), "
            "too few to judge their drift"
        )
        return out
    reference = _scored(reference_rows, scorer, cfg)
    current = current.assign(**{PREDICTION: scorer.predict_proba(current[features])})
    check = check_drift(reference, current, features, cfg)
    return out | {
        "dataset_drift": check.dataset_drift,
        "drifted_share": check.drifted_share,
        "drifted_features": check.drifted_features,
        "distances": check.distances,
        "prediction_drift": check.prediction_drift,
        "sampled": min(len(current), cfg.sample_size),
        "snapshot": check.snapshot,
    }


def decide_day(settings: Settings, day: date) -> Any:
    """Take the decision on a monitored day from its summary: record its conditions in the
    history, derive alarms (hysteresis) and a retrain (cooldown), send new alerts, and keep
    the decision in the summary. Rerunning it for the day decides the same.

    Returns:
        The `decide.Decision`.

    Raises:
        MonitoringError: The day was not monitored.
    """
    from churnops.data.lake import write_local_atomic
    from churnops.monitoring.decide import Decision
    from churnops.pipelines.promotion import existing_registry

    path = monitoring_dir(settings) / day.isoformat() / "summary.json"
    if not path.exists():
        raise MonitoringError(f"{day} was not monitored (no {path}); run `churnops monitor --day {day}` first")
    result = Monitored.from_dict(json.loads(path.read_text()))
    _decide(settings, result, existing_registry(settings))
    write_local_atomic(str(path), json.dumps(result.as_dict(), indent=2).encode())
    return Decision(**result.decision)


@dataclass
class DriftCheck:
    """One drift check's verdict and the Evidently snapshot behind it."""

    snapshot: Any
    distances: dict[str, float]
    prediction_drift: float | None
    drifted_features: list[str]
    drifted_share: float
    dataset_drift: bool


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, features: list[str], cfg: Any) -> DriftCheck:
    """The drift rule: both sides sampled to at most `cfg.sample_size` rows, Evidently's data drift
    preset with the normed Wasserstein distance; a feature drifts at `cfg.drift_threshold`, the
    data set at `cfg.drift_share` of the features. A `probability` column on both sides is the
    prediction drift, beside the features."""
    columns = [*features, PREDICTION] if PREDICTION in reference and PREDICTION in current else list(features)
    reference = reference.sample(min(len(reference), cfg.sample_size), random_state=cfg.seed)
    current = current.sample(min(len(current), cfg.sample_size), random_state=cfg.seed)
    snapshot = _evidently(reference, current, columns, cfg.drift_threshold, cfg.drift_share)
    distances = _distances(snapshot)
    prediction = distances.pop(PREDICTION, None)
    drifted = sorted(c for c, d in distances.items() if d >= cfg.drift_threshold)
    share = len(drifted) / len(features)
    return DriftCheck(snapshot, distances, prediction, drifted, share, share >= cfg.drift_share)


def _decide(settings: Settings, result: Monitored, registry: Any) -> None:
    """Record the day's conditions and decide: alarms (with hysteresis), alerts, a retrain. The
    champion goes into the history only when it answered the day: the alias's holder of a quiet
    day is today's, and would restart the streaks of the model that did answer."""
    from churnops.monitoring.decide import conditions, record_and_decide

    champion_day = None
    if registry is not None and result.champion is not None:
        tags = dict(registry.client.get_model_version(registry.model_name, result.champion).tags)
        champion_day = date.fromisoformat(tags["logical_date"]) if tags.get("logical_date") else None
    holds = conditions(settings, result, champion_day)
    judged = result.champion if result.champion_answers else None
    result.decision = record_and_decide(settings, date.fromisoformat(result.day), holds, judged).as_dict()


def _target_drift(settings: Settings, registry: Any, version: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The churn rate of the labelled predictions against the champion's holdout's, as Cohen's h
    (the effect size of a difference of proportions: 0.2 is small, 0.5 medium)."""
    from churnops.training import tracking

    tracking.use_tracking(settings)
    run_id = registry.client.get_model_version(registry.model_name, version).run_id
    reference = float(tracking.load_holdout(str(run_id))["churned"].mean())
    labelled = sum(g["predictions"] for g in groups)
    current = sum(g["churn_rate"] * g["predictions"] for g in groups) / labelled
    h = 2 * np.arcsin(np.sqrt(current)) - 2 * np.arcsin(np.sqrt(reference))
    return {
        "labelled": labelled,
        "churn_rate": round(current, 4),
        "reference_churn_rate": round(reference, 4),
        "cohens_h": round(float(h), 4),
        "drifted": bool(abs(h) > settings.monitoring.target_drift_threshold),
    }


def _reference_rows(settings: Settings, registry: Any, version: str) -> tuple[pd.DataFrame, Any]:
    """The features of the day the champion was trained for (every customer with an order, as
    the server scores), or its holdout when that snapshot is no longer in the feature table; and
    the champion's scorer."""
    from churnops.features.definitions import ORDER_COUNT
    from churnops.pipelines.features import feature_table
    from churnops.training import tracking

    tracking.use_tracking(settings)
    record = registry.client.get_model_version(registry.model_name, version)
    scorer = tracking.load_scorer(f"models:/{registry.model_name}/{version}")
    table = feature_table(settings)
    manifest = table.manifest()
    snapshot = manifest.snapshots.get(dict(record.tags).get("logical_date", ""))
    if snapshot is not None:
        counted = [ORDER_COUNT] if ORDER_COUNT in manifest.features and ORDER_COUNT not in scorer.features else []
        rows = pd.read_parquet(table.path_of(snapshot), columns=[*scorer.features, *counted])
    else:
        rows = tracking.load_holdout(str(record.run_id))
    if ORDER_COUNT in rows:  # the server answers customers without an order with a status, not a score
        rows = rows[rows[ORDER_COUNT] > 0]
    return rows[list(scorer.features)], scorer


def _scored(rows: pd.DataFrame, scorer: Any, cfg: Any) -> pd.DataFrame:
    """Rows sampled to `cfg.sample_size`, as floats, with the scorer's probabilities."""
    rows = rows.sample(min(len(rows), cfg.sample_size), random_state=cfg.seed)
    reference = rows[scorer.features].astype("float64").reset_index(drop=True)
    reference[PREDICTION] = scorer.predict_proba(reference)
    return reference


def _evidently(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], threshold: float, share: float
) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=columns)
    report = Report([DataDriftPreset(columns=columns, method="wasserstein", threshold=threshold, drift_share=share)])
    return report.run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )


def _distances(snapshot: Any) -> dict[str, float]:
    """Each column's drift distance from the report."""
    out: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            value = metric["value"]
            out[config["column"]] = float(value) if value is not None else float("nan")
    return out


def _write(settings: Settings, result: Monitored, snapshot: Any, newcomers_snapshot: Any = None) -> None:
    from churnops.data.lake import write_local_atomic

    folder = monitoring_dir(settings) / result.day
    folder.mkdir(parents=True, exist_ok=True)
    for name, report in (("report.html", snapshot), ("newcomers.html", newcomers_snapshot)):
        html = folder / name
        if report is not None:
            tmp = folder / f".{name}.tmp"
            report.save_html(str(tmp))
            tmp.replace(html)
        else:
            html.unlink(missing_ok=True)
    if snapshot is not None:
        result.report = str(folder / "report.html")
    if newcomers_snapshot is not None:
        result.newcomers["report"] = str(folder / "newcomers.html")
    write_local_atomic(str(folder / "summary.json"), json.dumps(result.as_dict(), indent=2).encode())
    _index(settings)


def _index(settings: Settings) -> None:
    """`monitoring/index.html`: one row per monitored day, newest first, linking its report."""
    from html import escape

    from churnops.data.lake import write_local_atomic

    root = monitoring_dir(settings)
    rows = []
    for summary in sorted(root.glob("*/summary.json"), reverse=True):
        body = json.loads(summary.read_text())
        verdict = (
            escape(body["skipped"])
            if body["skipped"]
            else ("DRIFT" if body["dataset_drift"] else "no drift")
            + f" ({len(body['drifted_features'])} of {len(body['distances'])} features)"
        )
        link = f'<a href="{escape(body["day"])}/report.html">report</a>' if body.get("report") else ""
        pred = "" if body["prediction_drift"] is None else f"{body['prediction_drift']:.3f}"
        newcomers = body.get("newcomers") or {}
        if newcomers.get("dataset_drift") is None:
            cohort = escape(newcomers.get("skipped", ""))
        else:
            cohort = (
                ("DRIFT" if newcomers["dataset_drift"] else "no drift")
                + f" ({len(newcomers['drifted_features'])} of {len(newcomers['distances'])} features, "
                f'{newcomers["current"]:,} newcomers) <a href="{escape(body["day"])}/newcomers.html">report</a>'
            )
        rows.append(
            f"<tr><td>{escape(body['day'])}</td><td>{body['predictions']:,}</td><td>{verdict}</td>"
            f"<td>{pred}</td><td>{cohort}</td><td>{link}</td></tr>"
        )
    page = (
        "<!doctype html><meta charset=utf-8><title>churnops monitoring</title>"
        "<h1>churnops monitoring</h1><table border=1 cellpadding=4>"
        "<tr><th>day</th><th>predictions</th><th>data drift</th><th>prediction drift</th><th>newcomers</th>"
        "<th></th></tr>" + "".join(rows) + "</table>"
    )
    write_local_atomic(str(root / "index.html"), page.encode())


def default_monitor_day(day: date) -> date:
    """The step for logical date D monitors the day before it (the last whole day of traffic)."""
    return day - timedelta(days=1)
