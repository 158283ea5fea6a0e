"""Current views of the raw tables, as later stages read them from the lake."""

from __future__ import annotations

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
