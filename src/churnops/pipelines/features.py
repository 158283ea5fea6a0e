"""Features: raw lake -> snapshots of customer features -> validation -> table -> Feast."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from churnops.data.tables import order_span, read_customers
from churnops.features.definitions import FeatureSpec, feature_specs
from churnops.features.table import FeatureManifest, FeatureTable
from churnops.features.validation import validate_snapshot
from churnops.pipelines.ingest import NO_ORDERS, make_lake
from churnops.runlog import append_run
from churnops.settings import Settings

log = logging.getLogger(__name__)

# staged output: snapshot (YYYY-MM-DD) -> (file, rows, content hash)
Staged = dict[str, tuple[Path, int, str]]


class FeatureBuildError(RuntimeError):
    """Features cannot be built; the message says why and what to do."""


@dataclass
class FeatureReport:
    """What one `build_features` run did."""

    snapshots: list[str]
    rows: int
    content_hash: str
    engine: str
    seconds: dict[str, float] = field(default_factory=dict)
    online: str = ""  # what happened to the online store

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> FeatureReport:
        """The inverse of `as_dict`."""
        return cls(**body)


def feature_table(settings: Settings) -> FeatureTable:
    """The customer feature table in the workspace."""
    return FeatureTable(settings.paths.feature_table.resolve())


def plan_snapshots(first_order: date, as_of: date, cadence_days: int, max_history: int | None) -> list[date]:
    """Snapshot dates: `as_of`, then every `cadence_days` back while some order precedes them.

    A snapshot date D means "as of 00:00 on D": it sees orders strictly before D.
    """
    snapshots: list[date] = []
    day = as_of
    while day > first_order and (max_history is None or len(snapshots) < max_history + 1):
        snapshots.append(day)
        day -= timedelta(days=cadence_days)
    return sorted(snapshots) or [as_of]


def on_grid(snapshots: list[str], as_of: date, cadence_days: int, max_history: int | None) -> list[str]:
    """The snapshots among `snapshots` that `plan_snapshots` plans for `as_of`, oldest first.

    The table also holds other dates' grids (each logical date plans its own); training for a
    date uses only its own, so the result does not depend on which other dates ran before.
    """
    days = sorted(date.fromisoformat(s) for s in snapshots)
    chosen = [d for d in days if d <= as_of and (as_of - d).days % cadence_days == 0]
    if max_history is not None:
        chosen = chosen[-(max_history + 1) :]  # the newest, as plan_snapshots keeps them
    return [d.isoformat() for d in chosen]


def raw_lineage(settings: Settings) -> list[dict[str, Any]]:
    """The raw partitions (and content hashes) the features are built from (a partition whose
    parts are all set aside holds nothing they read)."""
    lake = make_lake(settings)
    return [
        {"table": m.table, "ingest_date": m.ingest_date, "sha256": m.sha256, "rows": m.rows}
        for table in ("orders", "customers")
        for m in lake.manifests(table)
        if m.parts
    ]


def build_features(
    settings: Settings,
    as_of: date | None = None,
    history: bool = True,
    publish_to_feast: bool = True,
    progress: Callable[[str], None] | None = None,
) -> FeatureReport:
    """Compute, validate and publish customer features for the planned snapshots.

    Args:
        settings: The loaded settings.
        as_of: The logical date: the latest snapshot (features as of 00:00 that day), also
            stamped as every row's created_timestamp; default the day after the last order in
            the raw lake.
        history: Also (re)compute the history snapshots at the configured cadence.
        publish_to_feast: Apply the Feast repository and materialize the online store.
        progress: Called with a line for each stage.

    Returns:
        The snapshots written, rows, the table's content hash and stage timings.

    Raises:
        FeatureBuildError: The raw lake has no orders.
        FeatureValidationError: A snapshot failed validation; nothing was published.
    """
    say = progress or (lambda _: None)
    lake = make_lake(settings)
    files = lake.data_files("orders")
    if not files:
        raise FeatureBuildError(NO_ORDERS)
    with settings.paths.lock("churnops features"):
        customers = read_customers(lake)[["customer_id", "created_at"]]
        span = order_span(files)
        if span is None:
            raise FeatureBuildError("the raw lake's orders are empty; nothing to compute features from")
        first_order, last_order = span[0].date(), span[1].date()
        latest = as_of or (last_order + timedelta(days=1))
        cfg = settings.features
        snapshots = (
            plan_snapshots(first_order, latest, cfg.cadence_days, cfg.history_snapshots) if history else [latest]
        )
        table = feature_table(settings)
        manifest, staged, specs, timings = compute_table(settings, files, customers, table, snapshots, latest, say)
        online = "not published (--no-feast)"
        if publish_to_feast:
            started = time.perf_counter()
            online = publish(settings, table, specs, sorted(staged), say)
            timings["feast"] = time.perf_counter() - started
            say(f"applied the Feast repository; {online}")
    report = FeatureReport(
        snapshots=sorted(staged),
        rows=sum(r for _, r, _ in staged.values()),
        content_hash=manifest.content_hash,
        engine=cfg.engine,
        seconds=timings,
        online=online,
    )
    append_run(
        settings.paths,
        {
            "command": "features",
            "date": latest.isoformat(),
            "status": "ok",
            "snapshots": len(staged),
            "rows": report.rows,
            "content_hash": report.content_hash,
        },
    )
    return report


def known_before(customers: pd.DataFrame) -> Callable[[pd.Timestamp], int]:
    """How many of these customers had signed up before a time (a snapshot's expected rows)."""
    created = pd.to_datetime(customers["created_at"])
    created = created.dt.tz_convert(None) if created.dt.tz is not None else created
    return lambda as_of: int((created < as_of).sum())


def compute_table(
    settings: Settings,
    files: list[str],
    customers: pd.DataFrame,
    table: FeatureTable,
    snapshots: list[date],
    logical_date: date,
    say: Callable[[str], None],
) -> tuple[FeatureManifest, Staged, tuple[FeatureSpec, ...], dict[str, float]]:
    """Compute, validate and commit snapshots into a feature table.

    Every row is stamped with the logical date as its created_timestamp. A failure leaves the
    table as it was and removes what it staged.

    Returns:
        The manifest now in force, what was staged, the features, and timings.
    """
    cfg = settings.features
    say(f"computing {len(snapshots)} snapshot(s) {snapshots[0]} .. {snapshots[-1]} with {cfg.engine}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    staging = table.staging_dir()
    windows = tuple(cfg.windows)

    def step(done: int, total: int) -> None:
        if total > 1 and (done == total or done % 10 == 0):
            say(f"  {done}/{total} snapshots validated and written")

    known = known_before(customers)

    def validate(as_of: pd.Timestamp, frame: pd.DataFrame, specs: tuple[FeatureSpec, ...]) -> None:
        validate_snapshot(frame, specs, f"{as_of:%Y-%m-%d}", expected_rows=known(as_of))

    try:
        stamped = datetime.combine(logical_date, datetime.min.time(), tzinfo=UTC)
        staged, specs, validated = _compute(
            settings, files, customers, snapshots, windows, staging, stamped, step, validate
        )
        timings["compute"] = time.perf_counter() - started
        if not validated:  # the engine wrote without validating: read each snapshot back
            started = time.perf_counter()
            for snapshot, (path, _rows, _hash) in sorted(staged.items()):
                validate(pd.Timestamp(snapshot), pd.read_parquet(path), specs)
            timings["validate"] = time.perf_counter() - started
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing of a failed run stays behind
        raise
    say(f"validated {len(staged)} snapshot(s)")
    manifest = table.commit(staged, raw_lineage(settings), [s.name for s in specs], cfg.engine)
    return manifest, staged, specs, timings


def _compute(
    settings: Settings,
    files: list[str],
    customers: pd.DataFrame,
    snapshots: list[date],
    windows: tuple[int, ...],
    staging: Path,
    created_at: datetime,
    progress: Callable[[int, int], None],
    validate: Callable[[pd.Timestamp, pd.DataFrame, tuple[FeatureSpec, ...]], None],
) -> tuple[dict[str, tuple[Path, int, str]], tuple[FeatureSpec, ...], bool]:
    """Compute and stage every snapshot with the configured engine.

    Returns:
        The staged snapshots, the feature columns, and whether each snapshot was validated
        on the way (DuckDB validates each before writing it; Spark's output is read back).
    """
    times = [datetime.combine(d, datetime.min.time()) for d in snapshots]
    cfg = settings.features
    if cfg.engine == "spark":
        from churnops.features.spark_engine import write_features_spark

        staged, columns = write_features_spark(files, customers, times, windows, staging, created_at, cfg.spark_master)
        return staged, feature_specs(windows, columns), False
    from churnops.features.duckdb_engine import connect_features, write_features

    con, optional = connect_features(files, customers, threads=cfg.duckdb_threads, memory_limit=cfg.duckdb_memory_limit)
    specs = feature_specs(windows, {"customer_id", "order_date", "total_amount", *optional})

    def check(as_of: pd.Timestamp, rows: pa.Table) -> None:
        validate(as_of, rows.to_pandas(), specs)

    try:
        staged = write_features(
            con, times, windows, optional, [s.name for s in specs], staging, created_at, progress, check
        )
    finally:
        con.close()
    return staged, specs, True


def publish(
    settings: Settings,
    table: FeatureTable,
    specs: tuple[FeatureSpec, ...],
    written: list[str],
    progress: Callable[[str], None] | None = None,
) -> str:
    """Apply the Feast repository and, if this run wrote the table's newest snapshot, load it
    into the online store.

    A backfill (only older snapshots written) leaves the online store alone: it holds each
    customer's newest snapshot, always.

    Returns:
        What happened to the online store, in words.
    """
    from churnops.features.feast_repo import FeastFeatureStore

    say = progress or (lambda _: None)
    store = FeastFeatureStore(settings, table)
    store.apply(specs)
    newest = max(table.manifest().snapshots)
    if newest not in written:
        return f"online store left alone: it holds the newer snapshot {newest}"
    moment = datetime.fromisoformat(newest).replace(tzinfo=UTC)

    def batches(done: int, total: int, view: str) -> None:
        say(f"  online store{f' ({view})' if view else ''}: {done:,} of {total:,} customers written")

    store.publish_newest(moment, batches)
    return f"online store holds snapshot {newest}"


ONLINE_SAMPLE = 200  # customers the validate step reads back from the online store


@dataclass
class FeaturesChecked:
    """What the validate step found: the newest snapshot as training and serving will read it."""

    snapshot: str
    rows: int
    content_hash: str
    online_sampled: int = 0
    online: str = ""  # what the online store was compared with, in words

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> FeaturesChecked:
        """The inverse of `as_dict`."""
        return cls(**body)


def check_features(settings: Settings, day: date, sample: int = ONLINE_SAMPLE) -> FeaturesChecked:
    """Validate what the servers and the training read, after the features step wrote it.

    The table's newest snapshot (the online store's) is read back from disk: its rows and value
    hash must be those the manifest recorded when the snapshot was validated and committed, and
    it must pass the feature schema again, a row for every customer known at that time. Every
    other snapshot the training for `day` reads (the grid planned back from it) must have its
    recorded rows and hash too. Then `sample` customers drawn from the newest snapshot (seeded
    by the date) are read through Feast's `get_online_features`: each must be there, and every
    value must equal the snapshot's (nulls included).

    Raises:
        FeatureBuildError: The table holds no snapshot yet.
        FeatureValidationError: Any of these checks failed; the message names which and how.
    """
    import numpy as np

    from churnops.features.duckdb_engine import snapshot_hashes
    from churnops.features.feast_repo import CURRENT_SERVICE, FeastFeatureStore
    from churnops.features.validation import FeatureValidationError

    table = feature_table(settings)
    manifest = table.manifest()
    if not manifest.snapshots:
        raise FeatureBuildError("the feature table holds no snapshot; run `churnops features` first")
    newest = max(manifest.snapshots)
    cfg = settings.features
    read = on_grid(list(manifest.snapshots), day, cfg.cadence_days, cfg.history_snapshots)
    checked_names = sorted({newest, *read})
    paths = {name: table.path_of(manifest.snapshots[name]) for name in checked_names}
    hashes = snapshot_hashes(list(paths.values()), manifest.features)
    for name in checked_names:
        entry = manifest.snapshots[name]
        rows, content_hash = hashes[paths[name]]
        if (rows, content_hash) != (entry.rows, entry.content_hash):
            raise FeatureValidationError(
                f"feature snapshot {name} on disk is not the one committed: {rows:,} rows with hash "
                f"{content_hash[:12]}, the manifest recorded {entry.rows:,} rows with hash "
                f"{entry.content_hash[:12]}; rerun `churnops features`"
            )
    entry = manifest.snapshots[newest]
    path = table.path_of(entry)
    declared = {s.name: s for s in feature_specs(tuple(settings.features.windows))}
    specs = tuple(declared[name] for name in manifest.features if name in declared)
    frame = pd.read_parquet(path)
    known = known_before(read_customers(make_lake(settings)))
    validate_snapshot(frame, specs, newest, expected_rows=known(pd.Timestamp(newest)))

    checked = FeaturesChecked(newest, entry.rows, entry.content_hash)
    if frame.empty or sample <= 0:
        checked.online = "no customers to compare" if frame.empty else "online store not compared (sample 0)"
        return checked
    rng = np.random.default_rng([settings.simulation.seed, day.toordinal()])
    chosen = rng.choice(frame["customer_id"].to_numpy(), size=min(sample, len(frame)), replace=False)
    store = FeastFeatureStore(settings, table).store
    online = store.get_online_features(
        features=store.get_feature_service(CURRENT_SERVICE),
        entity_rows=[{"customer_id": int(i)} for i in chosen],
    ).to_df()
    names = list(manifest.features)
    lacking = sorted(set(names) - set(online.columns))
    if lacking:
        raise FeatureValidationError(
            f"the online store's feature service {CURRENT_SERVICE} lacks {', '.join(lacking)} of feature snapshot "
            f"{newest}; rerun `churnops features` to apply the repository and load it again"
        )
    offline = frame.set_index("customer_id").loc[chosen, names].astype("float64").to_numpy()
    served = online.set_index("customer_id").loc[chosen, names].astype("float64").to_numpy()
    absent = np.isnan(served).all(axis=1) & ~np.isnan(offline).all(axis=1)
    if absent.any():
        raise FeatureValidationError(
            f"{int(absent.sum())} of {len(chosen)} sampled customers of feature snapshot {newest} are not in the "
            f"online store (e.g. customer {chosen[absent][0]}); rerun `churnops features` to load it again"
        )
    equal = (offline == served) | (np.isnan(offline) & np.isnan(served))
    if not equal.all():
        bad_rows, bad_cols = np.nonzero(~equal)
        examples = [
            f"customer {chosen[r]} {names[c]}: online {served[r, c]!r}, snapshot {offline[r, c]!r}"
            for r, c in list(zip(bad_rows, bad_cols, strict=True))[:3]
        ]
        raise FeatureValidationError(
            f"the online store disagrees with feature snapshot {newest} for "
            f"{len(set(bad_rows.tolist()))} of {len(chosen)} sampled customers (e.g. {'; '.join(examples)}); "
            "rerun `churnops features` to load it again"
        )
    checked.online_sampled = len(chosen)
    checked.online = f"{len(chosen)} sampled customers read back from the online store equal snapshot {newest}"
    return checked
