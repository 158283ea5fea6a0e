"""Current views of the raw tables, as later stages read them from the lake."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from churnops.data.lake import RawLake


def derive_customers(orders: pd.DataFrame) -> pd.DataFrame:
    """Customers implied by orders when no customers source exists: created_at = first order.

    Args:
        orders: Raw orders with customer_id and order_date.

    Returns:
        One row per customer: customer_id, created_at, status (null: unknown).
    """
    first = orders.groupby("customer_id", sort=True)["order_date"].min()
    return pd.DataFrame(
        {
            "customer_id": first.index.to_numpy().astype("int64"),
            "created_at": first.to_numpy(),
            "status": pd.Series([pd.NA] * len(first), dtype="string"),
        }
    )


def read_customers(lake: RawLake) -> pd.DataFrame:
    """The latest version of every customer, or customers derived from orders if none.

    Customers arrive as versions (an incremental source sends a row again when it changes);
    the last one ingested wins.
    """
    versions = lake.read("customers")
    if versions.empty:
        return derive_customers(lake.read("orders", ["customer_id", "order_date"]))
    return versions.drop_duplicates("customer_id", keep="last").reset_index(drop=True)


def parquet_scan(files: Sequence[str]) -> str:
    """A DuckDB `read_parquet([...])` expression over these files, quoted for SQL."""
    quoted = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    return f"read_parquet([{quoted}], union_by_name = true)"


def order_span(files: Sequence[str]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The first and last order time in the raw lake's order files, or None if there are none."""
    from churnops import duck

    if not files:
        return None
    con = duck.cursor()
    try:
        row = con.execute(f"SELECT MIN(order_date), MAX(order_date) FROM {parquet_scan(files)}").fetchone()
    finally:
        con.close()
    if not row or row[0] is None or row[1] is None:
        return None
    return pd.Timestamp(row[0]), pd.Timestamp(row[1])
