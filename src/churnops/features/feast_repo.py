"""The project's Feast feature repository: entity, source, feature view and feature services.

Definitions are built from the settings and the feature declarations, so there is one list of
features. The repository lives in `<workspace>/feature_repo/` (its `feature_store.yaml` is
written there, so the `feast` CLI works in that folder too). Offline store: Feast's `duckdb`
store (its `file` store drops entity rows in point-in-time joins). Online store: SQLite by
default, Redis by configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from churnops.features.definitions import FeatureSpec
from churnops.settings import Settings

ENTITY = "customer"
VIEW = "customer_features"
CURRENT_SERVICE = "churn_features_current"
ONLINE_WRITE_BATCH = 50_000


@dataclass(frozen=True)
class FeastPaths:
    """Where the feature repository and its stores live."""

    repo: Path
    registry: Path
    online_db: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> FeastPaths:
        """Paths under the workspace."""
        repo = (settings.workspace / "feature_repo").resolve()
        return cls(repo=repo, registry=repo / "registry.db", online_db=repo / "online_store.db")


def repo_config(settings: Settings) -> dict[str, Any]:
    """The content of feature_store.yaml for these settings."""
    paths = FeastPaths.from_settings(settings)
    online: dict[str, Any] = {"type": "sqlite", "path": str(paths.online_db)}
    if settings.feast.online_store == "redis":
        online = {"type": "redis", "connection_string": settings.feast.redis_connection_string}
    return {
        "project": settings.feast.project,
        "provider": "local",
        "registry": str(paths.registry),
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
        # Materialization asks the offline store (DuckDB SQL) for the newest row per customer
        # instead of loading every snapshot in the window and de-duplicating in memory, and
        # converts and writes the rows in batches, so memory stays bounded at 1M customers.
        "materialization": {"pull_latest_features": True, "online_write_batch_size": ONLINE_WRITE_BATCH},
    }


def open_store(settings: Settings) -> Any:
    """A FeatureStore for the workspace's repository (writes feature_store.yaml)."""
    from feast import FeatureStore

    paths = FeastPaths.from_settings(settings)
    paths.repo.mkdir(parents=True, exist_ok=True)
    config_file = paths.repo / "feature_store.yaml"
    text = yaml.safe_dump(repo_config(settings), sort_keys=False)
    if not config_file.exists() or config_file.read_text() != text:
        config_file.write_text(text)
    return FeatureStore(repo_path=str(paths.repo))


def definitions(settings: Settings, source_glob: str, specs: tuple[FeatureSpec, ...]) -> dict[str, Any]:
    """Entity, file source and feature view over the feature table.

    Args:
        settings: For the TTL.
        source_glob: Glob over the feature table's Parquet files.
        specs: The features the table holds.

    Returns:
        `entity`, `source` and `view`.
    """
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.data_format import ParquetFormat
    from feast.types import Float64, Int64

    entity = Entity(name=ENTITY, join_keys=["customer_id"], value_type=ValueType.INT64, description="A shop customer.")
    source = FileSource(
        name="customer_features_source",
        path=source_glob,
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )
    view = FeatureView(
        name=VIEW,
        entities=[entity],
        ttl=timedelta(days=settings.feast.ttl_days),
        schema=[
            Field(name=s.name, dtype=Int64 if s.dtype == "int64" else Float64, description=s.description) for s in specs
        ],
        source=source,
        online=True,
        description="Customer RFM, order-value, lifetime, activity-window and diversity features.",
    )
    return {"entity": entity, "source": source, "view": view}


def feature_service(name: str, view: Any, features: list[str] | None = None) -> Any:
    """A feature service: the contract between one model version's training and serving."""
    from feast import FeatureService

    projection = view if features is None else view[features]
    return FeatureService(name=name, features=[projection])


def apply_repo(store: Any, objects: list[Any]) -> None:
    """The `feast apply` equivalent for these objects."""
    store.apply(objects)


def materialize(store: Any, end: datetime, start: datetime | None = None) -> None:
    """Load the newest feature rows up to `end` into the online store.

    Incremental by default (from the last materialization); with `start`, that window.
    """
    if start is None:
        store.materialize_incremental(end_date=end, feature_views=[VIEW])
    else:
        store.materialize(start_date=start, end_date=end, feature_views=[VIEW])
