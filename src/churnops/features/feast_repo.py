"""The project's Feast feature repository, behind the small `FeatureStore` interface.

The repository lives in `<workspace>/feature_repo/`: `feature_store.yaml` (paths relative to
the folder, so a moved workspace keeps working) and `definitions.py`, Feast's own Python repo
file, written from the feature declarations. Applying loads that file and applies exactly
what it defines, so `feast plan` in the folder reports no changes after a run, and the `feast`
CLI works there. Offline store: Feast's `duckdb` store (its `file` store drops entity rows in
point-in-time joins). Online store: SQLite by default, Redis by configuration. Registry: a file
in the folder by default; `feast.registry` puts it in a database (Feast's SQL registry), where
a server with a workspace of its own finds each version's feature service.

Two feature views read the one feature table. `customer_time_features` holds what moves with
the clock alone (recency, customer age, the overdue ratio: `FeatureSpec.ages`), which changes
every day for every customer who ever ordered; it has the TTL, and a day's load stamps every
customer's row of it.
`customer_order_features` holds the rest, which changes only when a customer orders or an order
leaves a window; a day's load writes just those cells, so its timestamps say when a value last
changed, and it has no TTL (the time view's says how fresh a customer's features are). Kept in
one view, the daily few changed cells sat on every page of the online table beside the
time-relative ones, and a day's load rewrote it all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from churnops.features.definitions import AGEING_FEATURES, FeatureSpec
from churnops.features.table import FeatureTable
from churnops.settings import Settings

log = logging.getLogger(__name__)

ENTITY = "customer"
ORDER_VIEW = "customer_order_features"  # changes when a customer orders (or an order leaves a window)
TIME_VIEW = "customer_time_features"  # moves with the clock: rewritten every day
VIEWS = (ORDER_VIEW, TIME_VIEW)  # the online views
HISTORY_VIEW = "customer_feature_history"  # offline only: the training set's point-in-time join
LEGACY_VIEW = "customer_features"  # the one view of repositories applied before the split
ENTITY_KEY = "customer_id"  # the entity's join key
SOURCE = "customer_features_source"
CURRENT_SERVICE = "churn_features_current"
ONLINE_WRITE_BATCH = 50_000
DEFINITIONS_FILE = "definitions.py"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


REGISTRY_VARIABLE = "CHURNOPS_FEAST__REGISTRY"  # what feature_store.yaml names for a registry URL with a password
REDIS_VARIABLE = "CHURNOPS_FEAST__REDIS_CONNECTION_STRING"  # and for a Redis connection string with one


def repo_config(settings: Settings, secrets: bool = True) -> dict[str, Any]:
    """The content of feature_store.yaml for these settings.

    Args:
        settings: The loaded settings.
        secrets: Write a registry URL or Redis connection string that holds a password as it is
            (False: as `${CHURNOPS_FEAST__REGISTRY}` or `${CHURNOPS_FEAST__REDIS_CONNECTION_STRING}`,
            which Feast expands from the environment, for the file on disk).
    """
    online: dict[str, Any] = {"type": "sqlite", "path": "online_store.db"}
    if settings.feast.online_store == "redis":
        connection = settings.feast.redis_connection_string
        if not secrets and "password=" in connection.lower():  # Feast's form: host:port,password=...,ssl=true
            connection = f"${{{REDIS_VARIABLE}}}"
        online = {"type": "redis", "connection_string": connection}
    registry: str | dict[str, Any] = "registry.db"
    if settings.feast.registry:
        url = settings.feast.registry
        if not secrets and _has_password(url):
            url = f"${{{REGISTRY_VARIABLE}}}"
        # a server re-reads what it serves from the database (`allow_cache=False`); the rest may
        # see an apply a minute late
        registry = {
            "registry_type": "sql",
            "path": url,
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        }
    return {
        "project": settings.feast.project,
        "provider": "local",
        "registry": registry,
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
        # For `feast materialize` run by hand in the folder: ask the offline store (DuckDB SQL)
        # for the newest row per customer and write in batches, so memory stays bounded at 1M
        # customers. churnops itself writes the newest snapshot directly (`publish_newest`).
        "materialization": {"pull_latest_features": True, "online_write_batch_size": ONLINE_WRITE_BATCH},
    }


def _has_password(url: str) -> bool:
    """Whether a database URL holds a password (in its user part or its query)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not SQLAlchemy's form: Feast will say what is wrong with it
        return "password" in url.lower()
    return parsed.password is not None or any("password" in key.lower() for key in parsed.query)


def definitions_source(
    settings: Settings,
    table: FeatureTable,
    specs: tuple[FeatureSpec, ...],
    services: dict[str, list[str] | None],
    stamps: tuple[datetime, datetime] | None = None,
) -> str:
    """Feast's Python repo file for the feature table and these feature services.

    Args:
        settings: For the TTL.
        table: The feature table the file source reads.
        specs: The features the table holds.
        services: service name -> the features it serves (None: all of them).
        stamps: When the source was created and last updated in the registry (default: now).

    Returns:
        The text of `definitions.py`.
    """
    now = datetime.now(UTC)
    created, updated = stamps or (now, now)

    def fields(view: str) -> str:
        return "\n".join(
            f"        Field(name={s.name!r}, dtype={'Int64' if s.dtype == 'int64' else 'Float64'}, "
            f"description={s.description!r}),"
            for s in specs
            if view in (HISTORY_VIEW, view_of(s.name))
        )

    lines = [
        '"""Feast definitions of the churnops feature table, written by churnops on every apply (edits are',
        'overwritten: change the feature declarations or the settings instead)."""',
        "",
        "from datetime import datetime, timedelta, timezone",
        "",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        "from feast.data_format import ParquetFormat",
        "from feast.types import Float64, Int64",
        "",
        f"customer = Entity(name={ENTITY!r}, join_keys=['customer_id'], value_type=ValueType.INT64, "
        "description='A shop customer.')",
        "",
        "source = FileSource(",
        f"    name={SOURCE!r},",
        f"    path={table.glob!r},",
        "    file_format=ParquetFormat(),",
        "    timestamp_field='event_timestamp',",
        "    created_timestamp_column='created_timestamp',",
        ")",
        "# Feast stamps a data source with the time it is constructed, and `feast plan` compares the",
        "# stamps: pinning them to the registry's keeps a plan of unchanged definitions empty.",
        f"source.created_timestamp = {_datetime_literal(created)}",
        f"source.last_updated_timestamp = {_datetime_literal(updated)}",
        "",
        "# Changes only when the customer orders or an order leaves a window: no TTL, since a value",
        "# stays the newest until it changes (the time view's TTL says how fresh the customer is).",
        f"{ORDER_VIEW} = FeatureView(",
        f"    name={ORDER_VIEW!r},",
        "    entities=[customer],",
        "    ttl=timedelta(0),",
        "    schema=[",
        fields(ORDER_VIEW),
        "    ],",
        "    source=source,",
        "    online=True,",
        "    description='Customer RFM, order-value, lifetime, gap, activity-window and diversity features.',",
        ")",
        "",
        "# Moves with the clock alone, for every customer, every day.",
        f"{TIME_VIEW} = FeatureView(",
        f"    name={TIME_VIEW!r},",
        "    entities=[customer],",
        f"    ttl=timedelta(days={int(settings.feast.ttl_days)}),",
        "    schema=[",
        fields(TIME_VIEW),
        "    ],",
        "    source=source,",
        "    online=True,",
        "    description='Days since the last and the first order, and how overdue the next order is.',",
        ")",
        "",
        "# Offline only, for point-in-time joins over the history (training sets): the table holds a",
        "# snapshot of every known customer every cadence_days, so looking back that far finds each",
        "# row's snapshot. Without a bound (the order view) a join reads every older snapshot of the",
        "# customer first: 44 s instead of 12 s for 700,000 rows over 105 snapshots of 943,396 customers.",
        f"{HISTORY_VIEW} = FeatureView(",
        f"    name={HISTORY_VIEW!r},",
        "    entities=[customer],",
        f"    ttl=timedelta(days={int(settings.features.cadence_days)}),",
        "    schema=[",
        fields(HISTORY_VIEW),
        "    ],",
        "    source=source,",
        "    online=False,",
        "    description='Every feature of the table, for point-in-time joins within the snapshot cadence.',",
        ")",
        "",
    ]
    for number, (name, features) in enumerate(sorted(services.items())):
        projections = [
            view if features is None else f"{view}[{[f for f in features if view_of(f) == view]!r}]"
            for view in VIEWS
            if features is None or any(view_of(f) == view for f in features)
        ]
        lines.append(f"service_{number} = FeatureService(name={name!r}, features=[{', '.join(projections)}])")
    return "\n".join(lines) + "\n"


def view_of(feature: str) -> str:
    """The feature view a feature of the table is served from."""
    return TIME_VIEW if feature in AGEING_FEATURES else ORDER_VIEW


def _datetime_literal(moment: datetime) -> str:
    m = moment.astimezone(UTC)
    return (
        f"datetime({m.year}, {m.month}, {m.day}, {m.hour}, {m.minute}, {m.second}, {m.microsecond}, "
        "tzinfo=timezone.utc)"
    )


class FeastFeatureStore:
    """The workspace's Feast repository: apply, materialize the newest snapshot, join, serve."""

    def __init__(self, settings: Settings, table: FeatureTable | None = None) -> None:
        self.settings = settings
        self.table = table or FeatureTable(settings.paths.feature_table.resolve())
        self.repo = settings.paths.feature_repo.resolve()
        self._store: Any = None

    @property
    def online_db(self) -> Path:
        """The SQLite online store (when that is the configured one)."""
        return self.repo / "online_store.db"

    @property
    def store(self) -> Any:
        """Feast's FeatureStore for the repository (writes feature_store.yaml if it changed)."""
        if self._store is None:
            from feast import FeatureStore as Feast
            from feast.repo_config import RepoConfig

            self.repo.mkdir(parents=True, exist_ok=True)
            config_file = self.repo / "feature_store.yaml"
            text = yaml.safe_dump(repo_config(self.settings, secrets=False), sort_keys=False)
            if not config_file.exists() or config_file.read_text() != text:
                config_file.write_text(text)
            config = RepoConfig(**repo_config(self.settings))  # the file's, with the password it leaves out
            config.repo_path = self.repo
            self._store = Feast(repo_path=str(self.repo), config=config)
        return self._store

    def exists(self) -> bool:
        """Whether anything was applied yet (to the workspace's registry file, or to the project in
        the registry database)."""
        if not self.settings.feast.registry:
            return (self.repo / "registry.db").exists()
        # an unknown project lists nothing; a database out of reach raises (read as "nothing
        # applied", an apply would delete every model's feature service from the shared registry)
        return bool(self.store.registry.list_feature_views(self.settings.feast.project, allow_cache=False))

    def services(self) -> dict[str, list[str] | None]:
        """Registered feature services: name -> features (None: the whole view)."""
        if not self.exists():
            return {}
        out: dict[str, list[str] | None] = {}
        for service in self.store.list_feature_services():
            names = [f.name for projection in service.feature_view_projections for f in projection.features]
            out[service.name] = None if service.name == CURRENT_SERVICE else names
        return out

    def apply(self, specs: tuple[FeatureSpec, ...], services: dict[str, list[str] | None] | None = None) -> None:
        """Write `definitions.py` for the table, the current service and every model's service, and apply it.

        Args:
            specs: The table's features.
            services: Feature services to add (name -> features); existing ones are kept.
        """
        self._repoint_infra()
        wanted = {**self.services(), CURRENT_SERVICE: None, **(services or {})}
        known = {s.name for s in specs}
        wanted = {k: v for k, v in wanted.items() if v is None or set(v) <= known}
        self.repo.mkdir(parents=True, exist_ok=True)
        path = self.repo / DEFINITIONS_FILE
        _write_if_changed(path, definitions_source(self.settings, self.table, specs, wanted, self._source_stamps()))
        with quiet():
            self._apply_repo(path)
        # the registry re-stamps the source on apply; the file records the stamps it now holds
        _write_if_changed(path, definitions_source(self.settings, self.table, specs, wanted, self._source_stamps()))

    def _apply_repo(self, path: Path) -> None:
        """`feast apply` of the repo file: what it defines is added or updated, the rest deleted."""
        from feast import Entity, FeatureService, FeatureView, FileSource
        from feast.project import Project
        from feast.repo_contents import RepoContents
        from feast.repo_operations import apply_total_with_repo_instance

        objects = _repo_objects(path)
        project = self.settings.feast.project
        contents = RepoContents(
            projects=[Project(name=project)],
            data_sources=[o for o in objects if isinstance(o, FileSource)],
            entities=[o for o in objects if isinstance(o, Entity)],
            feature_views=[o for o in objects if isinstance(o, FeatureView)],
            feature_services=[o for o in objects if isinstance(o, FeatureService)],
            on_demand_feature_views=[],
            stream_feature_views=[],
            label_views=[],
            permissions=[],
        )
        store = self.store
        store.registry.apply_project(contents.projects[0], commit=True)
        apply_total_with_repo_instance(store, project, store.registry, contents, skip_source_validation=True)

    def add_service(self, name: str, features: list[str]) -> None:
        """Register a model version's feature service (the contract between its training and serving)."""
        self.apply(self._applied_specs(), {name: features})

    def _repoint_infra(self) -> None:
        """Point the registry's record of the SQLite online table at this workspace's file.

        Feast records the table's absolute path; in a moved or copied workspace an apply would
        otherwise tear down the table at the old path, in the original workspace.
        """
        if self.settings.feast.online_store != "sqlite" or not self.exists():
            return
        from feast.infra.infra_object import Infra

        registry = self.store.registry
        proto = registry.proto()
        target = str(self.online_db)
        stale = [o for o in proto.infra.infra_objects if o.HasField("sqlite_table") and o.sqlite_table.path != target]
        for infra_object in stale:
            infra_object.sqlite_table.path = target
        if stale:
            registry.update_infra(Infra.from_proto(proto.infra), self.settings.feast.project, commit=True)

    def repoint(self) -> None:
        """Re-apply the definitions when the registry still points at another folder (a moved or
        copied workspace), so reads never go to the old location."""
        if not self.exists():
            return
        self._repoint_infra()
        path = self._applied_view(ORDER_VIEW).batch_source.path
        if path != self.table.glob:
            log.info("the feature repository pointed at %s; re-applying for %s", path, self.table.glob)
            self.apply(self._applied_specs())

    def _source_stamps(self) -> tuple[datetime, datetime] | None:
        """When the view's registered file source was created and last updated, if registered."""
        if not self.exists():
            return None
        try:
            source = self._applied_view(ORDER_VIEW).batch_source
        except Exception:  # Feast raises its own not-found type per registry kind
            return None
        if source.created_timestamp is None or source.last_updated_timestamp is None:
            return None
        return _utc(source.created_timestamp), _utc(source.last_updated_timestamp)

    def _applied_specs(self) -> tuple[FeatureSpec, ...]:
        """The feature declarations of the applied view, in its order."""
        from churnops.features.definitions import feature_specs

        declared = {s.name: s for s in feature_specs(tuple(self.settings.features.windows))}
        fields = {f.name: f for name in VIEWS for f in self._applied_view(name).features}
        ordered = [name for name in declared if name in fields] + [name for name in fields if name not in declared]
        return tuple(
            declared.get(name)
            or FeatureSpec(
                name, "int64" if "Int64" in str(fields[name].dtype) else "float64", fields[name].description, True
            )
            for name in ordered
        )

    def _applied_view(self, name: str) -> Any:
        """A view as the registry holds it; a repository applied before the views were split
        holds one `customer_features` view, which stands in for both until the next apply."""
        try:
            return self.store.get_feature_view(name)
        except Exception:  # Feast raises its own not-found type per registry kind
            return self.store.get_feature_view(LEGACY_VIEW)

    def publish_newest(self, snapshot: datetime, progress: Callable[[int, int, str], None] | None = None) -> None:
        """Load one snapshot (the table's newest) into the online store, in batches.

        Every customer known at the newest snapshot has a row in it, so this leaves the online
        store holding each customer's newest values; older snapshots are never written, so a
        backfill cannot overwrite newer rows. The snapshot is written straight into the store's
        tables (`_publish_bulk`) where that applies, else batch by batch through Feast
        (`write_to_online_store`), each view in turn; the interval is then recorded as
        materialized, as `feast materialize` would.

        Args:
            snapshot: The snapshot time (its day names the table's partition).
            progress: Called with (rows written, rows in all, the view written: "" for all of
                them) after each batch.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        entry = self.table.manifest().snapshots[f"{snapshot:%Y-%m-%d}"]
        store = self.store
        views = [store.get_feature_view(name) for name in VIEWS]
        features = [f.name for view in views for f in view.features]
        columns = ["customer_id", "event_timestamp", "created_timestamp", *features]
        parquet = pq.ParquetFile(self.table.path_of(entry))
        total = parquet.metadata.num_rows
        if not self._publish_bulk(parquet, views, columns, total, progress, entry.content_hash):
            if self.settings.feast.online_store == "sqlite" and self.online_db.exists():
                from feast.infra.online_stores.sqlite import _table_id

                from churnops.features import online_bulk

                for view in views:
                    online_bulk.forget_online_state(self.online_db, _table_id(store.project, view))
            nullable_ints = {pa.int64(): pd.Int64Dtype()}.get  # nulls stay nulls, not NaN floats
            done = 0
            for batch in parquet.iter_batches(batch_size=ONLINE_WRITE_BATCH, columns=columns):
                frame = batch.to_pandas(types_mapper=nullable_ints)
                with quiet():
                    for view in views:
                        store.write_to_online_store(view.name, frame)
                done += batch.num_rows
                if progress:
                    progress(done, total, "")
        start = snapshot.replace(tzinfo=UTC) if snapshot.tzinfo is None else snapshot
        for view in views:
            store.registry.apply_materialization(view, store.project, start, start + timedelta(seconds=1), commit=True)

    def _publish_bulk(
        self,
        parquet: Any,
        views: list[Any],
        columns: list[str],
        total: int,
        progress: Callable[[int, int, str], None] | None,
        content_hash: str = "",
    ) -> bool:
        """Write the snapshot straight into the SQLite tables or the Redis hashes (`online_bulk`);
        False when that path does not apply (another store or Redis deployment, a table or
        encoding Feast changed, or rows that do not share one snapshot time), and Feast's own
        path is to be used.

        Into SQLite only what changed since the snapshot each table holds (`_held_snapshot`),
        when that is known: the order view's cells of the customers who ordered or left a
        window, the time view's cells that moved and every customer's timestamp there."""
        import pyarrow.compute as pc

        from churnops.features import online_bulk

        kind = self.settings.feast.online_store
        if kind not in ("sqlite", "redis") or not online_bulk.encodings_agree(ENTITY_KEY):
            return False
        snapshot = parquet.read(columns=columns)
        moments = []
        for name in ("event_timestamp", "created_timestamp"):
            column = snapshot.column(name)
            low, high = pc.min(column).as_py(), pc.max(column).as_py()
            if low is None or low != high:
                return False
            moments.append(_utc(low).replace(tzinfo=None))

        def report_for(view: str) -> Callable[[int], None] | None:
            return (lambda done: progress(done, total, view)) if progress else None

        if kind == "redis":
            return self._publish_redis(views, snapshot, moments[0], report_for(""))
        from feast.infra.online_stores.sqlite import _table_id

        tables = [_table_id(self.store.project, view) for view in views]
        vectors = bool(getattr(self.store.config.online_store, "vector_enabled", False))
        for table in tables:
            present = online_bulk.table_columns(self.online_db, table)
            if vectors or [c for c in present if c != "vector_value"] != online_bulk.COLUMNS:
                return False  # (vector_value stays NULL, as Feast leaves it without vector search)
        for view, table in zip(views, tables, strict=True):
            features = [f.name for f in view.features]
            online_bulk.write_online_rows(
                self.online_db,
                table,
                snapshot,
                ENTITY_KEY,
                features,
                _int_features(view),
                moments[0],
                moments[1],
                progress=report_for(view.name),
                previous=self._held_snapshot(table, [ENTITY_KEY, *features]),
                content_hash=content_hash or None,
                stamp_every_customer=bool(view.ttl),
            )
        return True

    def _held_snapshot(self, table: str, columns: list[str]) -> Any:
        """The snapshot the SQLite table holds in full, as the last bulk write recorded it (read
        from the feature table), or None when that is unknown: nothing recorded, a snapshot no
        longer in the table, or a row count that changed since (Feast recreated or wrote it)."""
        import pyarrow.parquet as pq

        from churnops.features import online_bulk

        state = online_bulk.online_state(self.online_db, table)
        if state is None:
            return None
        held, rows = state
        entries = [e for e in self.table.manifest().snapshots.values() if e.content_hash == held]
        if not entries:
            return None
        if online_bulk.table_rows(self.online_db, table) != rows:
            log.info("the online table's rows changed since the last load; writing every row")
            return None
        try:
            return pq.read_table(self.table.path_of(entries[0]), columns=columns)
        except Exception as exc:  # the file went, or lacks a feature added since: every row is written
            log.info("the snapshot the online table holds cannot be read (%s); writing every row", exc)
            return None

    def _publish_redis(
        self, views: list[Any], snapshot: Any, moment: datetime, progress: Callable[[int], None] | None
    ) -> bool:
        """The Redis half of `_publish_bulk`: a plain or Sentinel-found Redis through Feast's own
        client (a Redis Cluster routes keys by slot: Feast's path writes there)."""
        from feast.infra.online_stores.redis import RedisType, _versioned_fv_name

        from churnops.features import online_bulk

        config = self.store.config
        options = config.online_store
        if options.redis_type == RedisType.redis_cluster or config.entity_key_serialization_version != 3:
            return False
        groups = []
        for view in views:
            name = _versioned_fv_name(view, config)
            features = [f.name for f in view.features]
            if not online_bulk.redis_encodings_agree(ENTITY_KEY, self.store.project, name, features):
                return False
            groups.append(online_bulk.RedisView(name, features, _int_features(view)))
        client = self.store._get_provider().online_store._get_client(options)
        online_bulk.write_redis_rows(
            client,
            self.store.project,
            groups,
            snapshot,
            ENTITY_KEY,
            moment.replace(tzinfo=UTC),
            key_ttl_seconds=options.key_ttl_seconds,
            progress=progress,
        )
        return True

    def training_rows(self, entities: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """Point-in-time join of entity rows (customer_id, event_timestamp, ...) with the features.

        Through the offline history view, which finds a row's snapshot within the snapshot
        cadence: the times given must be the table's snapshot times or at most `cadence_days`
        after one (training and the integration check ask at snapshot times). A repository
        applied before that view existed is read through the online views until its next apply.
        """
        try:
            self.store.get_feature_view(HISTORY_VIEW)
            refs = [f"{HISTORY_VIEW}:{name}" for name in features]
        except Exception:  # Feast raises its own not-found type per registry kind
            refs = [f"{view_of(name)}:{name}" for name in features]
        with quiet():
            joined: pd.DataFrame = self.store.get_historical_features(entity_df=entities, features=refs).to_df()
        return joined


def _int_features(view: Any) -> set[str]:
    """The Int64 features of a registered view (the rest are Float64)."""
    return {f.name for f in view.features if "Int64" in str(f.dtype)}


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _repo_objects(path: Path) -> list[Any]:
    """The Feast objects a repo file defines, loaded as Feast would load them."""
    from feast import Entity, FeatureService, FeatureView, FileSource

    spec = importlib.util.spec_from_file_location("churnops_feature_repo", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, FileSource, FeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep Feast's own printing (coloured, with progress bars) off the terminal; log it instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        text = _ANSI.sub("", buffer.getvalue()).strip()
        if text:
            log.info("feast: %s", text)
