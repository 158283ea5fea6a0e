"""Lineage: from a model version (or one logged prediction) back to the raw partitions.

The chain is read from what each stage recorded: the prediction log row (version, variant, the
feature values used), the registry version's tags (run, feature service, model digest), the
MLflow run's `lineage.json` (the feature-table hash of the snapshots it trained on, the raw
partitions with their content hashes, the split), the alias audit log, and the raw lake's
current manifests, against which every recorded partition hash is checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from churnops.jsonl import read_lines
from churnops.settings import Settings


class LineageError(LookupError):
    """The version or prediction asked for is not recorded."""


@dataclass
class RawPartition:
    """A raw partition a model's features were built from, checked against the lake today."""

    table: str
    ingest_date: str
    sha256: str
    rows: int
    now: str  # "same" | "changed" | "gone"


@dataclass
class Lineage:
    """The recorded chain of one model version, and of a prediction when asked for one."""

    model: str
    version: str
    aliases: list[str]
    alias_moves: list[dict[str, Any]]
    run_id: str
    candidate: str
    logical_date: str
    holdout: dict[str, float]
    model_sha256: str
    feature_service: str
    feature_table_hash: str
    snapshots: dict[str, list[str]]
    raw_partitions: list[RawPartition]
    prediction: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


def model_lineage(settings: Settings, version: str) -> Lineage:
    """The chain of a registry version: aliases and their moves, the run, features, raw data.

    Raises:
        LineageError: No such version (or no registry yet).
    """
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    if registry is None:
        raise LineageError("no registry yet: nothing has been trained and registered in this workspace")
    found = {v["version"]: v for v in registry.versions()}
    if version not in found:
        known = ", ".join(sorted(found, key=int)) or "none"
        raise LineageError(f"{registry.model_name} has no version {version}; its versions: {known}")
    row = found[version]
    moves = [
        {"at": m.at, "alias": m.alias, "kind": m.kind, "actor": m.actor, "reason": m.reason}
        for m in registry.history()
        if m.version == version
    ]
    return _version_lineage(settings, registry, version, list(row["aliases"]), moves, row["run_id"], row["tags"])


def _removed_lineage(settings: Settings, registry: Any, removed: dict[str, Any]) -> Lineage:
    """The chain of a version a rewind removed (its number now names another model), from what
    the rewind kept of it: its run, its tags and the moves undone with it."""
    version = removed["version"]
    moves = [
        {"at": r["at"], "alias": r["alias"], "kind": r["kind"], "actor": r["actor"], "reason": r["reason"]}
        for r in read_lines(registry.rewound_log)
        if r.get("kind") != "removed"
        and r.get("version") == version
        and r.get("rewound_at") == removed.get("rewound_at")
    ]
    moves.append(
        {
            "at": removed.get("rewound_at", ""),
            "alias": "",
            "kind": "removed",
            "actor": "",
            "reason": f"removed by a rewind to before {removed['rewound_since']} (a date run before later ones)",
        }
    )
    return _version_lineage(
        settings, registry, f"{version} (removed)", [], moves, removed["run_id"], removed.get("tags", {})
    )


def _version_lineage(
    settings: Settings,
    registry: Any,
    version: str,
    aliases: list[str],
    moves: list[dict[str, Any]],
    run_id: str,
    tags: dict[str, str],
) -> Lineage:
    from churnops.pipelines.promotion import ARTIFACT_DIGEST

    recorded = _run_lineage(settings, registry, run_id)
    return Lineage(
        model=registry.model_name,
        version=version,
        aliases=aliases,
        alias_moves=moves,
        run_id=run_id,
        candidate=tags.get("candidate", ""),
        logical_date=tags.get("logical_date", recorded.get("logical_date", "")),
        holdout=json.loads(tags.get("holdout_metrics", "{}")),
        model_sha256=tags.get(ARTIFACT_DIGEST, ""),
        feature_service=tags.get("feature_service", ""),
        feature_table_hash=recorded.get("feature_table_hash", tags.get("feature_table_hash", "")),
        snapshots=recorded.get("snapshots", {}),
        raw_partitions=_check_partitions(settings, recorded.get("raw_partitions", [])),
    )


def prediction_lineage(settings: Settings, request_id: str) -> Lineage:
    """The chain of one logged prediction: the row, the snapshot its features came from, and
    its model version's chain.

    Raises:
        LineageError: No prediction has that request_id.
    """
    import sqlalchemy as sa

    from churnops.serving.prediction_log import find_prediction

    url = settings.serving.prediction_log_url
    database = sa.engine.make_url(url)
    if database.get_backend_name() == "sqlite" and not Path(database.database or "").exists():
        raise LineageError(f"no prediction log yet ({database.database}): nothing has been served in this workspace")
    try:
        row = find_prediction(url, request_id)
    except sa.exc.OperationalError as exc:
        raise LineageError(f"cannot read the prediction log ({database.render_as_string()}): {exc.orig}") from exc
    if row is None:
        raise LineageError(
            f"no logged prediction has request_id {request_id!r} (an item of a request is `<request>-<index>`)"
        )
    lineage = _served_lineage(settings, str(row["version"]), row["ts"])
    features = row["features"]
    lineage.prediction = {
        **lineage.prediction,
        "request_id": row["request_id"],
        "ts": str(row["ts"]),
        "customer_id": None if row["customer_id"] is None else int(row["customer_id"]),
        "variant": row["variant"],
        "probability": float(row["probability"]),
        "label": int(row["label"]),
        "features": features,
        "served_snapshot": _matching_snapshot(settings, row["customer_id"], features, row["ts"]),
    }
    return lineage


def _served_lineage(settings: Settings, version: str, ts: Any) -> Lineage:
    """The chain of the version that served at `ts` under this number: a rewind (a date run
    before later ones) may have removed it since, and the number now names another model."""
    import pandas as pd

    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    removed_as = registry.removed_as(version) if registry is not None else []
    wall_clock = served_on_the_wall_clock(settings)
    if registry is not None and removed_as and wall_clock:
        served = pd.Timestamp(ts)
        served = served.tz_localize("UTC") if served.tzinfo is None else served
        for removed in sorted(removed_as, key=lambda r: r.get("rewound_at", "")):
            if "rewound_at" in removed and pd.Timestamp(removed["rewound_at"]) > served:
                return _removed_lineage(settings, registry, removed)  # the first rewind after it removed it
    lineage = model_lineage(settings, version)
    if removed_as and not wall_clock:
        # the servers' clock is the logical date's: the log cannot tell which version served
        lineage.prediction["may_have_been"] = [
            {k: r.get(k) for k in ("version", "run_id", "logical_date", "rewound_since", "rewound_at")}
            for r in removed_as
        ]
    return lineage


def served_on_the_wall_clock(settings: Settings) -> bool:
    """Whether the servers stamp predictions with the wall clock (so a prediction's time tells
    whether it came before a rewind): not with `serving.as_of` or the simulated shop's calendar."""
    from datetime import date

    from churnops.serving.deploy import serving_as_of

    return serving_as_of(settings, date.min) is None  # the servers' clock, for any day


def _run_lineage(settings: Settings, registry: Any, run_id: str) -> dict[str, Any]:
    """The run's `lineage.json` ({} for a run logged without one: the chain stops at the run).

    In a workspace moved since a writing command last ran, MLflow's store still names the old
    folder (the next writing command rebases it); the file is then read where it is now, without
    changing the store, since this command only reads.

    Raises:
        LineageError: The run's artifacts are nowhere to be found.
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="churnops-lineage-") as folder:
        try:
            path = registry.client.download_artifacts(run_id, "lineage.json", folder)
        except (MlflowException, OSError):
            return _moved_run_lineage(settings, registry, run_id)
        with open(path, encoding="utf-8") as handle:
            body: dict[str, Any] = json.load(handle)
    return body


def _moved_run_lineage(settings: Settings, registry: Any, run_id: str) -> dict[str, Any]:
    """`lineage.json` of a run whose recorded artifact folder is under the workspace's former
    location; {} when the run's artifacts are where MLflow says (it was logged without one)."""
    from urllib.parse import unquote, urlparse

    uri = str(registry.client.get_run(run_id).info.artifact_uri)
    if not uri.startswith(("file:", "/")):
        return {}  # a tracking server's store: not the workspace's to read
    artifacts = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    if artifacts.exists():
        return {}
    former, current = settings.paths.recorded_root(), settings.paths.root.resolve()
    if former is None or not artifacts.is_relative_to(former):
        raise LineageError(f"run {run_id}'s artifacts are not at {artifacts}, where MLflow recorded them")
    moved = current / artifacts.relative_to(former) / "lineage.json"
    if not moved.exists():
        return {}
    body: dict[str, Any] = json.loads(moved.read_text(encoding="utf-8"))
    return body


def _check_partitions(settings: Settings, recorded: list[dict[str, Any]]) -> list[RawPartition]:
    from churnops.pipelines.ingest import make_lake

    lake = make_lake(settings)
    now: dict[tuple[str, str], str] = {}
    for table in sorted({p["table"] for p in recorded}):
        for manifest in lake.manifests(table):
            now[(table, manifest.ingest_date)] = manifest.sha256
    out = []
    for p in recorded:
        current = now.get((p["table"], p["ingest_date"]))
        state = "gone" if current is None else ("same" if current == p["sha256"] else "changed")
        out.append(RawPartition(p["table"], p["ingest_date"], p["sha256"], int(p["rows"]), state))
    return out


def _matching_snapshot(settings: Settings, customer_id: Any, features: dict[str, Any], ts: Any) -> str:
    """The newest feature snapshot, no later than the prediction, whose row for the customer holds
    exactly the logged values ("" when none does: the features came with the request, or the
    snapshot has been replaced since)."""
    from churnops import duck
    from churnops.pipelines.features import feature_table

    if customer_id is None or not features:
        return ""
    table = feature_table(settings)
    manifest = table.manifest()
    files = table.files()
    names = [n for n in features if n in manifest.features]
    if not files or not names:
        return ""
    columns = ", ".join(f'"{n}"' for n in names)
    rows = (
        duck.connect()
        .execute(
            f"SELECT event_timestamp, {columns} FROM read_parquet(?) WHERE customer_id = ? "
            "ORDER BY event_timestamp DESC",
            [files, int(customer_id)],
        )
        .fetchall()
    )
    served_by = str(ts)[:10]
    for event_timestamp, *values in rows:
        when = f"{event_timestamp:%Y-%m-%d}"
        if when > served_by:
            continue
        if all(_same(features[n], v) for n, v in zip(names, values, strict=True)):
            return when
    return ""


def _same(logged: Any, stored: Any) -> bool:
    """A logged value (None for missing) against a stored one (None or NaN for missing)."""
    gone = stored is None or (isinstance(stored, float) and math.isnan(stored))
    if logged is None or gone:
        return logged is None and gone
    return math.isclose(float(logged), float(stored), rel_tol=1e-9, abs_tol=1e-9)
