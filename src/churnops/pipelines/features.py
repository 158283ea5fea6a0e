"""Features: raw lake -> snapshots of customer features -> validation -> table -> Feast."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from churnops.data.tables import order_span, read_customers
from churnops.features.definitions import FeatureSpec, feature_specs
from churnops.features.table import FeatureTable
from churnops.features.validation import validate_snapshot
from churnops.pipelines.ingest import make_lake
from churnops.runlog import append_run, workspace_lock
from churnops.settings import Settings

log = logging.getLogger(__name__)


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


def feature_table(settings: Settings) -> FeatureTable:
    """The customer feature table in the workspace."""
    return FeatureTable((settings.workspace / "features" / "customer_features").resolve())


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


def raw_lineage(settings: Settings) -> list[dict[str, Any]]:
    """The raw partitions (and content hashes) the features are built from."""
    lake = make_lake(settings)
    return [
        {"table": m.table, "ingest_date": m.ingest_date, "sha256": m.sha256, "rows": m.rows}
        for table in ("orders", "customers")
        for m in lake.manifests(table)
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
        as_of: The latest snapshot date (features as of 00:00 that day); default the day
            after the last order in the raw lake.
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
        raise FeatureBuildError("the raw lake holds no orders; run `churnops ingest` first")
    timings: dict[str, float] = {}
    with workspace_lock(settings.workspace, "features"):
        started = time.perf_counter()
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
        say(f"computing {len(snapshots)} snapshot(s) {snapshots[0]} .. {snapshots[-1]} with {cfg.engine}")
        table = feature_table(settings)
        staging = table.staging_dir()
        windows = tuple(cfg.windows)

        def step(done: int, total: int) -> None:
            if total > 1 and (done == total or done % 10 == 0):
                say(f"  {done}/{total} snapshots validated and written")

        created = pd.to_datetime(customers["created_at"])
        created = created.dt.tz_convert(None) if created.dt.tz is not None else created

        def validate(as_of: pd.Timestamp, frame: pd.DataFrame, specs: tuple[FeatureSpec, ...]) -> None:
            known = int((created < as_of).sum())
            validate_snapshot(frame, specs, f"{as_of:%Y-%m-%d}", expected_rows=known)

        try:
            staged, specs, validated = _compute(settings, files, customers, snapshots, windows, staging, step, validate)
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
        if publish_to_feast:
            started = time.perf_counter()
            publish(settings, table, specs, [datetime.combine(d, datetime.min.time()) for d in snapshots])
            timings["feast"] = time.perf_counter() - started
            say("applied the Feast repository and materialized the online store")
    report = FeatureReport(
        snapshots=sorted(staged),
        rows=sum(r for _, r, _ in staged.values()),
        content_hash=manifest.content_hash,
        engine=cfg.engine,
        seconds=timings,
    )
    append_run(
        settings.workspace,
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


def _compute(
    settings: Settings,
    files: list[str],
    customers: pd.DataFrame,
    snapshots: list[date],
    windows: tuple[int, ...],
    staging: Path,
    progress: Callable[[int, int], None],
    validate: Callable[[pd.Timestamp, pd.DataFrame, tuple[FeatureSpec, ...]], None],
) -> tuple[dict[str, tuple[Path, int, str]], tuple[FeatureSpec, ...], bool]:
    """Compute and stage every snapshot with the configured engine.

    Returns:
        The staged snapshots, the feature columns, and whether each snapshot was validated
        on the way (DuckDB validates each before writing it; Spark's output is read back).
    """
    times = [datetime.combine(d, datetime.min.time()) for d in snapshots]
    created_at = datetime.now(UTC)
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


def publish(settings: Settings, table: FeatureTable, specs: tuple[FeatureSpec, ...], snapshots: list[datetime]) -> None:
    """Apply the Feast repository and materialize the snapshots just written."""
    from churnops.features import feast_repo

    store = feast_repo.open_store(settings)
    objects = feast_repo.definitions(settings, table.glob, specs)
    current = feast_repo.feature_service(feast_repo.CURRENT_SERVICE, objects["view"])
    feast_repo.apply_repo(store, [objects["entity"], objects["view"], current])
    start = min(snapshots).replace(tzinfo=UTC)
    end = (max(snapshots) + timedelta(seconds=1)).replace(tzinfo=UTC)
    feast_repo.materialize(store, end=end, start=start)
