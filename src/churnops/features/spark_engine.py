"""The Spark engine: the same feature SQL on Spark, for data that outgrows one machine.

Spark SQL has no ASOF join, so an order's bucket (the first snapshot strictly after it) is the
first element of the sorted snapshot array that is greater than the order time. Everything
after the bucket assignment is the shared SQL of `sql.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from churnops.features.sql import SPARK, features_from_buckets_sql


def spark_session(master: str = "local[2]") -> Any:
    """A Spark session in UTC with Arrow transfers, for the feature engine."""
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(master)
        .appName("churnops-features")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )


def register_inputs(
    spark: Any,
    orders: Sequence[str] | pd.DataFrame,
    customers: pd.DataFrame,
    snapshots: Sequence[datetime],
    windows: tuple[int, ...],
) -> tuple[str, set[str]]:
    """Register the views the feature SQL reads; return the query and optional columns."""
    if isinstance(orders, pd.DataFrame):
        raw = spark.createDataFrame(orders)
    else:
        raw = spark.read.parquet(*[str(f) for f in orders])
    optional = [c for c in ("product_id", "category") if c in raw.columns]
    raw.createOrReplaceTempView("orders_input")
    spark.sql(
        "SELECT CAST(customer_id AS BIGINT) AS customer_id, CAST(order_date AS TIMESTAMP) AS order_date, "
        f"CAST(total_amount AS DOUBLE) AS total_amount{''.join(', ' + c for c in optional)} FROM orders_input"
    ).createOrReplaceTempView("orders")
    spark.createDataFrame(
        customers[["customer_id", "created_at"]].astype({"customer_id": "int64", "created_at": "datetime64[us]"})
    ).createOrReplaceTempView("customers_input")
    spark.sql(
        "SELECT CAST(customer_id AS BIGINT) AS customer_id, CAST(created_at AS TIMESTAMP) AS created_at "
        "FROM customers_input"
    ).createOrReplaceTempView("customers")
    times = sorted(set(pd.to_datetime(list(snapshots))))
    literal = ", ".join(f"TIMESTAMP '{t.isoformat(sep=' ')}'" for t in times)
    spark.sql(f"SELECT explode(array({literal})) AS as_of").createOrReplaceTempView("snapshots")
    spark.sql(
        f"SELECT * FROM (SELECT o.*, try_element_at(filter(array({literal}), s -> s > o.order_date), 1) AS as_of "
        "FROM orders AS o) WHERE as_of IS NOT NULL"
    ).createOrReplaceTempView("bucketed")
    for w in windows:
        edge = SPARK.minus_days.format(ts="s", days=int(w))
        spark.sql(
            "SELECT customer_id, total_amount, as_of FROM (SELECT o.customer_id, o.total_amount, "
            f"try_element_at(filter(array({literal}), s -> {edge} > o.order_date), 1) AS as_of "
            "FROM orders AS o) WHERE as_of IS NOT NULL"
        ).createOrReplaceTempView(f"window_bucketed_{w}")
    query = features_from_buckets_sql(SPARK, windows, "product_id" in optional, "category" in optional)
    return query, set(optional)


def compute_features_spark(
    orders: Sequence[str] | pd.DataFrame,
    customers: pd.DataFrame,
    snapshots: Sequence[datetime],
    windows: tuple[int, ...],
    spark: Any | None = None,
) -> pd.DataFrame:
    """All features for all snapshots as one pandas frame (tests and small data)."""
    session = spark or spark_session()
    query, _ = register_inputs(session, orders, customers, snapshots, windows)
    frame: pd.DataFrame = session.sql(f"{query} ORDER BY event_timestamp, customer_id").toPandas()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"]).astype("datetime64[us]")
    return frame


def write_features_spark(
    files: Sequence[str],
    customers: pd.DataFrame,
    snapshots: Sequence[datetime],
    windows: tuple[int, ...],
    staging: Path,
    created_at: datetime,
    master: str,
) -> tuple[dict[str, tuple[Path, int, str]], set[str]]:
    """Compute with Spark into Parquet partitioned by snapshot; hash like the DuckDB engine.

    Returns:
        snapshot -> (file, rows, content hash), and the order columns present.
    """
    from churnops import duck
    from churnops.features.definitions import feature_specs
    from churnops.features.duckdb_engine import hash_snapshots

    spark = spark_session(master)
    query, optional = register_inputs(spark, files, customers, snapshots, windows)
    columns = {"customer_id", "order_date", "total_amount", *optional}
    names = [s.name for s in feature_specs(windows, columns)]
    stamp = pd.Timestamp(created_at).tz_localize(None).isoformat(sep=" ")
    out = spark.sql(
        f"SELECT customer_id, event_timestamp, TIMESTAMP '{stamp}' AS created_timestamp, {', '.join(names)}, "
        f"date_format(event_timestamp, 'yyyy-MM-dd') AS snapshot FROM ({query})"
    )
    spark_dir = staging / "spark"
    out.repartition("snapshot").write.partitionBy("snapshot").parquet(str(spark_dir))
    con = duck.connect()
    try:
        staged = hash_snapshots(con, spark_dir, names)
    finally:
        con.close()
    return staged, columns
