"""The default feature engine: DuckDB SQL over the raw lake's Parquet (or in-memory frames)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from churnops.data.tables import parquet_scan
from churnops.features.sql import DUCKDB, features_from_buckets_sql, single_snapshot_sql


def connect_features(
    orders: Sequence[str] | pd.DataFrame,
    customers: pd.DataFrame,
    snapshots: Sequence[datetime],
    windows: tuple[int, ...],
    threads: int | None = None,
    memory_limit: str | None = None,
) -> tuple[Any, str, set[str]]:
    """A DuckDB connection with the inputs registered, and the feature query to run on it.

    Args:
        orders: Parquet paths (the raw lake's committed files) or a frame in contract names.
        customers: customer_id and created_at of every known customer.
        snapshots: Snapshot times; features use orders strictly before each.
        windows: Trailing windows in days.
        threads: DuckDB threads (default: all cores).
        memory_limit: DuckDB memory limit, e.g. "4GB" (default: DuckDB's).

    Returns:
        The connection, the SELECT to run, and the optional order columns present.
    """
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    if isinstance(orders, pd.DataFrame):
        con.register("orders_input", orders)
        source = "orders_input"
    else:
        source = parquet_scan(orders)
    columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    has_product, has_category = "product_id" in columns, "category" in columns
    optional = [c for c in ("product_id", "category") if c in columns]
    picked = ", ".join(["customer_id", "order_date", "total_amount", *optional])
    con.execute(
        f"CREATE TEMP VIEW orders AS SELECT CAST(customer_id AS BIGINT) AS customer_id, "
        f"CAST(order_date AS TIMESTAMP) AS order_date, CAST(total_amount AS DOUBLE) AS total_amount"
        f"{''.join(', ' + c for c in optional)} FROM (SELECT {picked} FROM {source})"
    )
    con.register("customers_input", customers[["customer_id", "created_at"]])
    con.execute(
        "CREATE TEMP TABLE customers AS SELECT CAST(customer_id AS BIGINT) AS customer_id, "
        "CAST(created_at AS TIMESTAMP) AS created_at FROM customers_input"
    )
    snaps = pd.DataFrame({"as_of": pd.to_datetime(sorted(set(snapshots))).astype("datetime64[us]")})
    con.register("snapshots_input", snaps)
    con.execute(
        "CREATE TEMP TABLE snapshots AS SELECT CAST(as_of AS TIMESTAMP) AS as_of FROM snapshots_input ORDER BY 1"
    )
    if len(snaps) == 1:
        literal = f"TIMESTAMP '{snaps['as_of'].iloc[0].isoformat(sep=' ')}'"
        return con, single_snapshot_sql(DUCKDB, literal, windows, has_product, has_category), set(optional)
    con.execute(
        "CREATE TEMP VIEW bucketed AS SELECT o.*, s.as_of "
        "FROM orders AS o ASOF JOIN snapshots AS s ON o.order_date < s.as_of"
    )
    for w in windows:
        edge = DUCKDB.minus_days.format(ts="as_of", days=int(w))
        con.execute(
            f"CREATE TEMP VIEW window_bucketed_{w} AS SELECT o.customer_id, o.total_amount, s.as_of "
            f"FROM orders AS o ASOF JOIN (SELECT as_of, {edge} AS edge FROM snapshots) AS s ON o.order_date < s.edge"
        )
    query = features_from_buckets_sql(DUCKDB, windows, has_product, has_category)
    return con, query, set(optional)


def compute_features(
    orders: Sequence[str] | pd.DataFrame,
    customers: pd.DataFrame,
    snapshots: Sequence[datetime],
    windows: tuple[int, ...],
    sort: bool = True,
) -> pd.DataFrame:
    """All features for all snapshots as one frame (for tests and small data).

    Args:
        orders: Parquet paths or a frame in contract names.
        customers: customer_id and created_at.
        snapshots: Snapshot times.
        windows: Trailing windows in days.
        sort: Sort the rows by snapshot and customer.

    Returns:
        One row per (customer known at the snapshot, snapshot).
    """
    con, query, _ = connect_features(orders, customers, snapshots, windows)
    try:
        order = " ORDER BY event_timestamp, customer_id" if sort else ""
        frame = con.sql(f"{query}{order}").df()
    finally:
        con.close()
    return frame


def write_features(
    con: Any,
    query: str,
    feature_columns: list[str],
    staging: Path,
    created_at: datetime,
) -> dict[str, tuple[Path, int, str]]:
    """Stream the feature query into Parquet partitioned by snapshot, then hash each snapshot.

    Args:
        con: A connection from `connect_features`.
        query: The feature SELECT from `connect_features`.
        feature_columns: Feature columns to write, in order.
        staging: Empty folder to write into.
        created_at: The created_timestamp stamped on every row (Feast keeps the newest).

    Returns:
        snapshot (YYYY-MM-DD) -> (file, rows, order-independent content hash).
    """
    con.execute("SET TimeZone = 'UTC'")
    stamp = pd.Timestamp(created_at).tz_localize(None).isoformat()
    columns = ", ".join(feature_columns)
    con.execute(
        f"""COPY (
            SELECT customer_id,
                   CAST(event_timestamp AS TIMESTAMPTZ) AS event_timestamp,
                   CAST(TIMESTAMP '{stamp}' AS TIMESTAMPTZ) AS created_timestamp,
                   {columns},
                   strftime(event_timestamp, '%Y-%m-%d') AS snapshot
            FROM ({query})
        ) TO '{staging}' (FORMAT parquet, PARTITION_BY (snapshot), COMPRESSION zstd, FILENAME_PATTERN 'part_{{i}}')"""
    )
    return hash_snapshots(con, staging, feature_columns)


def hash_snapshots(con: Any, staging: Path, feature_columns: list[str]) -> dict[str, tuple[Path, int, str]]:
    """Row counts and order-independent content hashes of a snapshot-partitioned output.

    The hash covers the key and every feature value, not created_timestamp, so recomputing a
    snapshot from the same data gives the same hash. A snapshot written as several files is
    merged into one.

    Returns:
        snapshot (YYYY-MM-DD) -> (file, rows, content hash).
    """
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(feature_columns)
    hashed = con.execute(
        f"""SELECT snapshot, COUNT(*) AS rows,
                   CAST(SUM(CAST(hash(customer_id, CAST(event_timestamp AS TIMESTAMPTZ), {columns}) AS HUGEINT))
                        % 18446744073709551616 AS VARCHAR)
            FROM read_parquet('{staging}/*/*.parquet', hive_partitioning = true)
            GROUP BY snapshot"""
    ).fetchall()
    out: dict[str, tuple[Path, int, str]] = {}
    for snapshot, rows, digest in hashed:
        files = sorted((staging / f"snapshot={snapshot}").glob("*.parquet"))
        if len(files) != 1:
            merged = staging / f"merged-{snapshot}.parquet"
            sources = [str(f) for f in files]
            con.execute(
                f"COPY (SELECT * FROM read_parquet({sources})) TO '{merged}' (FORMAT parquet, COMPRESSION zstd)"
            )
            files = [merged]
        out[str(snapshot)] = (files[0], int(rows), hashlib.sha256(str(digest).encode()).hexdigest())
    return out
