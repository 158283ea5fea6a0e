"""The gate and register steps: judge the challenger's run, then record it as a registry version.

`gate` reads the holdout rows the train step stored with the run, scores the champion on the
same rows, and returns its verdict (it never raises for a failing model, so an orchestrator can
branch on it); a failure alerts the team once. `register` turns a run that passed into a fully
recorded version with its Feast feature service and the alias `challenger` (and `champion` for
the first model), repairing what a killed run left half-recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from churnops.alerts import Alert, raise_alert
from churnops.registry.mlflow_registry import ModelRegistry, RegistryError
from churnops.runlog import append_run
from churnops.settings import Settings
from churnops.training.gate import GateResult, evaluate_gate

ARTIFACT_DIGEST = "artifact_sha256"  # of the model's files, checked by the server before it loads them
METRIC_SLUGS = {
    "F1 floor": "floor",
    "F1 lift over everyone-churns": "lift_f1",
    "ROC AUC lift over recency": "lift_auc",
    "vs champion": "champion",
}


@dataclass
class GateVerdict:
    """The gate step's result."""

    run_id: str
    passed: bool
    gate: GateResult
    champion_version: str | None
    alerted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return {**asdict(self), "gate": self.gate.as_dict()}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> GateVerdict:
        """The inverse of `as_dict`."""
        return cls(**{**body, "gate": GateResult.from_dict(body["gate"])})


@dataclass
class Registered:
    """The register step's result."""

    version: str
    run_id: str
    feature_service: str
    promoted_to_champion: bool = False
    reused: bool = False
    removed_incomplete: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Registered:
        """The inverse of `as_dict`."""
        return cls(**body)


def model_registry(settings: Settings) -> ModelRegistry:
    """The registry for the configured model (creates the embedded store if needed), for a
    writer holding the workspace lock: a registry rewind a crash cut short is finished first."""
    from churnops.pipelines.replay import finish_rewind
    from churnops.training.tracking import use_tracking

    finish_rewind(settings)
    use_tracking(settings)
    return ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.model_name, settings.paths.registry_audit)


def existing_registry(settings: Settings) -> ModelRegistry | None:
    """The registry if its store exists; None for an embedded store not created yet (so
    read-only commands create nothing). MLflow's global URIs point at its store from here on."""
    from churnops.training.tracking import embedded_store, point_mlflow_at

    store = embedded_store(settings)
    if store is not None and not store.exists():
        return None
    point_mlflow_at(settings)
    return ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.model_name, settings.paths.registry_audit)


def gate(
    settings: Settings,
    as_of: date,
    run_id: str,
    progress: Callable[[str], None] | None = None,
    alert: bool = True,
) -> GateVerdict:
    """Judge the challenger of a training run against the floor, the baselines and the champion.

    Args:
        settings: The loaded settings.
        as_of: The logical date (recorded with the verdict).
        run_id: The challenger's MLflow run (the train step's result).
        progress: Called with a line per stage.
        alert: Alert the team of a failure here (the daily steps leave it to their `notify` step).

    Returns:
        The verdict; `passed` False means nothing may be registered (the team was alerted once).
    """
    from churnops.training import tracking

    say = progress or (lambda _: None)
    with settings.paths.lock("churnops gate"):
        registry = model_registry(settings)
        run = tracking.run_data(run_id)
        holdout = tracking.load_holdout(run_id)
        threshold = float(run.data.metrics["threshold"])
        labels = holdout["churned"].to_numpy().astype(int)
        champion_version = registry.holder("champion")
        champion = None
        if champion_version is not None:
            champion_run = registry.client.get_model_version(registry.model_name, champion_version).run_id
            if champion_run == run_id:
                champion = (holdout["proba"].to_numpy(), threshold)
            else:
                scorer = tracking.load_scorer(f"models:/{registry.model_name}@champion")
                inputs = holdout
                missing = sorted(set(scorer.features) - set(holdout.columns))
                if missing:  # the challenger was trained without them (`training.exclude_features`)
                    completed = _with_features(settings, holdout, missing)
                    if completed is None:
                        raise RegistryError(
                            f"the champion (version {champion_version}) needs {', '.join(missing)}, which neither "
                            "this model's holdout nor the feature table's snapshots of its days hold; put them "
                            "back in the feature table (the `features` settings) to compare the two"
                        )
                    inputs = completed
                    say(f"the champion takes {', '.join(missing)}, which this model leaves out: from the feature table")
                champion = (scorer.predict_proba(inputs), scorer.threshold)
            say(f"comparing with the champion, version {champion_version}, on the same {len(labels):,} holdout rows")
        result = evaluate_gate(
            settings.gate,
            labels,
            (holdout["proba"].to_numpy(), threshold),
            holdout["recency"].to_numpy(dtype=np.float64),
            champion,
            seed=settings.training.seed,
        )
        verdict = GateVerdict(run_id, result.passed, result, champion_version)
        _record(run_id, settings, result)
        if not result.passed and alert:
            verdict.alerted = _alert(settings, run, verdict)
        append_run(
            settings.paths,
            {
                "command": "gate",
                "date": as_of.isoformat(),
                "status": "passed" if result.passed else "failed",
                "run_id": run_id,
                "reasons": result.reasons,
            },
        )
        return verdict


def _with_features(settings: Settings, holdout: pd.DataFrame, wanted: list[str]) -> pd.DataFrame | None:
    """The holdout rows with features the challenger left out, read from the feature table's
    snapshots at the rows' times; None when the table lacks one of them or a row's snapshot."""
    from churnops.pipelines.features import feature_table

    table = feature_table(settings)
    manifest = table.manifest()
    times = pd.to_datetime(holdout["event_timestamp"], utc=True)
    days = sorted(set(times.dt.strftime("%Y-%m-%d")))
    if not set(wanted) <= set(manifest.features) or not set(days) <= set(manifest.snapshots):
        return None
    held = pd.concat(
        [
            pd.read_parquet(table.path_of(manifest.snapshots[day]), columns=["customer_id", "event_timestamp", *wanted])
            for day in days
        ]
    )
    held["event_timestamp"] = pd.to_datetime(held["event_timestamp"], utc=True).astype(times.dtype)
    joined = holdout.assign(event_timestamp=times).merge(
        held, on=["customer_id", "event_timestamp"], how="left", validate="many_to_one", indicator=True
    )
    if (joined.pop("_merge") != "both").any():
        return None
    return joined


def _record(run_id: str, settings: Settings, result: GateResult) -> None:
    from churnops.training import tracking

    policy = settings.gate.model_dump()
    tracking.set_run_tags(
        run_id,
        {
            "gate.passed": str(result.passed).lower(),
            "gate.policy": json.dumps(policy, sort_keys=True),
            "gate.conditions": json.dumps([asdict(c) for c in result.conditions]),
            "gate.reasons": "; ".join(result.reasons) or "none",
        },
    )
    metrics = {}
    for condition in result.conditions:
        slug = METRIC_SLUGS.get(condition.name, condition.name)
        metrics[f"gate_{slug}"] = condition.observed
        metrics[f"gate_{slug}_ci_low"] = condition.ci_low
    tracking.log_run_metrics(run_id, metrics)


@dataclass
class GateNotice:
    """The notify step's result: the team was told of a failed gate (or had been already)."""

    run_id: str
    alerted: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> GateNotice:
        """The inverse of `as_dict`."""
        return cls(**body)


def notify_gate_failure(settings: Settings, as_of: date, verdict: GateVerdict) -> GateNotice:
    """Alert the team that the gate refused a challenger; the same failure alerts once.

    Args:
        settings: The loaded settings.
        as_of: The logical date (recorded in the run log).
        verdict: The gate's failing verdict.

    Returns:
        Whether an alert went out now (False: it had been sent for this failure before).
    """
    from churnops.training import tracking

    tracking.use_tracking(settings)  # a task of its own under Airflow: nothing set MLflow's URI in this process
    alerted = _alert(settings, tracking.run_data(verdict.run_id), verdict)
    append_run(
        settings.paths,
        {"command": "notify", "date": as_of.isoformat(), "status": "ok", "run_id": verdict.run_id, "alerted": alerted},
    )
    return GateNotice(verdict.run_id, alerted, list(verdict.gate.reasons))


def _alert(settings: Settings, run: Any, verdict: GateVerdict) -> bool:
    key = hashlib.sha256(
        f"gate|{verdict.run_id}|{settings.gate.model_dump_json()}|{verdict.champion_version}".encode()
    ).hexdigest()[:16]
    alert = Alert(
        key=f"gate-failed-{key}",
        title=f"Model quality gate failed for {settings.mlflow.model_name}: nothing was registered",
        details={
            "challenger": run.data.tags.get("candidate", ""),
            "run_id": verdict.run_id,
            "reasons": "; ".join(verdict.gate.reasons),
            "holdout_f1": round(verdict.gate.challenger_f1, 4),
            "feature_table_hash": run.data.tags.get("feature_table_hash", ""),
        },
    )
    return raise_alert(settings.alerts, alert)


def register(settings: Settings, as_of: date, run_id: str, progress: Callable[[str], None] | None = None) -> Registered:
    """Record a run that passed the gate as a complete version and point `challenger` at it.

    Idempotent: a run already registered keeps its version. A version a killed run left
    without its last tag is removed first.

    Raises:
        RegistryError: The run did not pass the gate.
    """
    from mlflow.models import Model

    from churnops.features.feast_repo import FeastFeatureStore
    from churnops.training import tracking

    say = progress or (lambda _: None)
    with settings.paths.lock("churnops register"):
        registry = model_registry(settings)
        removed = registry.remove_incomplete()
        if removed:
            say(f"removed half-recorded version(s) {', '.join(removed)} left by an interrupted run")
        run = tracking.run_data(run_id)
        if run.data.tags.get("gate.passed") != "true":
            raise RegistryError(f"run {run_id} has not passed the gate; nothing to register")
        version = registry.version_of_run(run_id)
        reused = version is not None
        model_uri = run.data.tags[tracking.MODEL_URI]
        holdout_metrics = {k: run.data.metrics[k] for k in ("f1", "precision", "recall", "roc_auc", "pr_auc")}
        if version is None:
            metadata = Model.load(model_uri).metadata or {}
            version = registry.register(
                model_uri,
                run_id,
                tags={
                    "candidate": run.data.tags.get("candidate", ""),
                    "threshold": f"{float(metadata['threshold']):.6f}",
                    "feature_table_hash": run.data.tags.get("feature_table_hash", ""),
                    "logical_date": as_of.isoformat(),
                    "holdout_metrics": json.dumps(holdout_metrics, sort_keys=True),
                },
            )
            service = f"{settings.mlflow.model_name}_v{version}"
            FeastFeatureStore(settings).add_service(service, list(metadata["features"]))
            registry.tag(version, "feature_service", service)
            digest = tracking.artifact_digest(f"models:/{registry.model_name}/{version}")
            registry.tag(version, ARTIFACT_DIGEST, digest)
            registry.mark_complete(version)  # the last tag: the version is usable from here on
        service = f"{settings.mlflow.model_name}_v{version}"
        if registry.holder("challenger") != version:
            registry.move(
                "challenger", version, "passed the quality gate", holdout_metrics, logical_date=as_of.isoformat()
            )
        promoted = False
        if registry.holder("champion") is None:
            registry.move(
                "champion", version, "first model to pass the gate", holdout_metrics, logical_date=as_of.isoformat()
            )
            promoted = True
        append_run(
            settings.paths,
            {"command": "register", "date": as_of.isoformat(), "status": "ok", "version": version, "run_id": run_id},
        )
        return Registered(version, run_id, service, promoted, reused, removed)
