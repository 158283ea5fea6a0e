"""Churn labels: churned at a snapshot = no order in [snapshot, snapshot + horizon).

Features see orders strictly before the snapshot time, so an order exactly at the snapshot
time belongs to the label side: with date-only data (every order at 00:00) an order on the
snapshot day counts as "came back", and one on the day the horizon ends does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd

from churnops.data.tables import parquet_scan


def complete_snapshots(snapshots: Sequence[datetime], horizon_days: int, known_until: datetime) -> list[pd.Timestamp]:
    """The snapshots whose whole label window [s, s + horizon) closes by `known_until`.

    Args:
        snapshots: Candidate snapshot times.
        horizon_days: The label horizon.
        known_until: Everything strictly before this time is known (the logical date).

    Returns:
        The complete snapshots, sorted.
    """
    horizon = pd.Timedelta(days=horizon_days)
    return sorted({pd.Timestamp(s) for s in snapshots if pd.Timestamp(s) + horizon <= pd.Timestamp(known_until)})


def label_customers(
    orders: pd.DataFrame | Sequence[str],
    snapshots: Sequence[datetime],
    horizon_days: int,
    known_until: datetime,
) -> pd.DataFrame:
    """Label every customer with an order before a snapshot, for complete snapshots only.

    A snapshot is labelled only if its whole window has closed by `known_until`: an unfinished
    window would call every late buyer a churner. Orders at or after `known_until` are not
    read, so a label never depends on what was not yet known.

    Args:
        orders: Orders (customer_id, order_date) as a frame or Parquet paths.
        snapshots: Candidate snapshot times.
        horizon_days: The label horizon.
        known_until: Everything strictly before this time is known (the logical date).

    Returns:
        customer_id, event_timestamp (the snapshot) and churned (0/1), sorted.
    """
    from churnops import duck

    complete = complete_snapshots(snapshots, horizon_days, known_until)
    empty = pd.DataFrame(
        {
            "customer_id": pd.Series(dtype="int64"),
            "event_timestamp": pd.Series(dtype="datetime64[us]"),
            "churned": pd.Series(dtype="int8"),
        }
    )
    if not complete:
        return empty
    con = duck.cursor()
    try:
        if isinstance(orders, pd.DataFrame):
            con.register("orders_input", orders[["customer_id", "order_date"]])
            source = "orders_input"
        else:
            source = parquet_scan(orders)
        until = pd.Timestamp(known_until).isoformat(sep=" ")
        con.execute(
            "CREATE TEMP TABLE o AS SELECT * FROM (SELECT CAST(customer_id AS BIGINT) AS customer_id, "
            f"CAST(order_date AS TIMESTAMP) AS order_date FROM {source}) WHERE order_date < TIMESTAMP '{until}'"
        )
        con.register("snaps_input", pd.DataFrame({"as_of": pd.to_datetime(complete).astype("datetime64[us]")}))
        labels = con.execute(
            f"""
            WITH firsts AS (SELECT customer_id, MIN(order_date) AS first_order FROM o GROUP BY customer_id),
            grid AS (
                SELECT f.customer_id, CAST(s.as_of AS TIMESTAMP) AS as_of
                FROM firsts AS f JOIN snaps_input AS s ON f.first_order < CAST(s.as_of AS TIMESTAMP)
            ),
            nxt AS (
                SELECT g.customer_id, g.as_of, o.order_date AS next_order
                FROM grid AS g ASOF LEFT JOIN o ON g.customer_id = o.customer_id AND g.as_of <= o.order_date
            )
            SELECT customer_id, as_of AS event_timestamp,
                   CAST(CASE WHEN next_order IS NULL OR next_order >= as_of + INTERVAL ({int(horizon_days)}) DAY
                             THEN 1 ELSE 0 END AS TINYINT) AS churned
            FROM nxt ORDER BY event_timestamp, customer_id
            """
        ).fetchdf()
    finally:
        con.close()
    labels["event_timestamp"] = labels["event_timestamp"].astype("datetime64[us]")
    return labels
