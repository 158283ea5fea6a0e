"""The design document's reference implementation, kept as the oracle for the engines.

A pandas groupby per snapshot. It fills 0 where a customer has no orders before the snapshot
and for the standard deviation of a single order; the project's engines use nulls for the
non-count features of such customers (see churnops.features.definitions), so `to_project`
maps the reference onto that convention before comparing.

Two spellings of the same computation:
- `reference_features` vectorises every aggregate (the fast oracle the tests use);
- `design_reference_features` is written the way RFM code is usually published, with a
  per-group lambda for recency inside one named-aggregation `agg`. It is what the benchmark's
  baseline figure for "the reference" measures; a test shows both give the same values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def reference_features(
    orders: pd.DataFrame, customers: pd.DataFrame, as_of: pd.Timestamp, windows=(7, 30, 90)
) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    past = orders[orders["order_date"] < as_of]
    g = past.groupby("customer_id")
    features = pd.DataFrame(
        {
            "recency": (as_of - g["order_date"].max()).dt.days,
            "frequency": g.size(),
            "monetary": g["total_amount"].sum(),
            "avg_order_value": g["total_amount"].mean(),
            "max_order_value": g["total_amount"].max(),
            "min_order_value": g["total_amount"].min(),
            "std_order_value": g["total_amount"].std(),
            "customer_lifetime_days": (g["order_date"].max() - g["order_date"].min()).dt.days,
        }
    )
    features["avg_days_between_orders"] = features["customer_lifetime_days"] / features["frequency"].clip(lower=1)
    features = features.join(order_day_features(past, as_of, features["recency"]))
    for days in windows:
        recent = past[past["order_date"] >= as_of - pd.Timedelta(days=days)].groupby("customer_id")
        features[f"orders_last_{days}d"] = recent.size()
        features[f"spend_last_{days}d"] = recent["total_amount"].sum()
    if "product_id" in past:
        features["unique_products"] = g["product_id"].nunique()
    if "category" in past:
        features["unique_categories"] = g["category"].nunique()
    known = customers.loc[customers["created_at"] < as_of, "customer_id"]
    features = features.reindex(known.to_numpy()).fillna(0)
    features.index.name = "customer_id"
    return features.reset_index()


def design_reference_features(
    orders: pd.DataFrame, customers: pd.DataFrame, as_of: pd.Timestamp, windows=(7, 30, 90)
) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    past = orders[orders["order_date"] < as_of]
    aggregations = {
        "recency": ("order_date", lambda x: (as_of - x.max()).days),
        "frequency": ("order_date", "count"),
        "monetary": ("total_amount", "sum"),
        "avg_order_value": ("total_amount", "mean"),
        "max_order_value": ("total_amount", "max"),
        "min_order_value": ("total_amount", "min"),
        "std_order_value": ("total_amount", "std"),
        "first_order": ("order_date", "min"),
        "last_order": ("order_date", "max"),
    }
    if "product_id" in past:
        aggregations["unique_products"] = ("product_id", "nunique")
    if "category" in past:
        aggregations["unique_categories"] = ("category", "nunique")
    features = past.groupby("customer_id").agg(**aggregations)
    features["customer_lifetime_days"] = (features["last_order"] - features["first_order"]).dt.days
    features["avg_days_between_orders"] = features["customer_lifetime_days"] / features["frequency"].clip(lower=1)
    features = features.drop(columns=["first_order", "last_order"])
    for days in windows:
        recent = past[past["order_date"] >= as_of - pd.Timedelta(days=days)]
        activity = recent.groupby("customer_id").agg(
            **{f"orders_last_{days}d": ("order_date", "count"), f"spend_last_{days}d": ("total_amount", "sum")}
        )
        features = features.join(activity)
    known = customers.loc[customers["created_at"] < as_of, "customer_id"]
    features = features.reindex(known.to_numpy()).fillna(0)
    features.index.name = "customer_id"
    return features.reset_index()


def order_day_features(past: pd.DataFrame, as_of: pd.Timestamp, recency: pd.Series) -> pd.DataFrame:
    """Beyond the design document: customer age and the gaps between distinct order days."""
    days = past.assign(day=past["order_date"].dt.floor("D"))[["customer_id", "day"]].drop_duplicates()
    days = days.sort_values(["customer_id", "day"])
    gaps = days.groupby("customer_id")["day"].diff().dt.days
    by_customer = gaps.groupby(days["customer_id"])
    out = pd.DataFrame(
        {
            "customer_age_days": (as_of - past.groupby("customer_id")["order_date"].min()).dt.days,
            "order_days": days.groupby("customer_id").size(),
            "mean_gap_days": by_customer.mean(),
            "std_gap_days": by_customer.std(),
        }
    )
    out.loc[by_customer.count() == 1, "std_gap_days"] = 0.0
    out["overdue_ratio"] = recency / out["mean_gap_days"]
    return out


NULL_WHEN_FEWER_THAN_TWO_ORDER_DAYS = ["mean_gap_days", "std_gap_days", "overdue_ratio"]

NULL_WHEN_NO_ORDERS = [
    "recency",
    "avg_order_value",
    "max_order_value",
    "min_order_value",
    "std_order_value",
    "customer_lifetime_days",
    "avg_days_between_orders",
    "customer_age_days",
]


def to_project(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference under the project's convention: nulls where there were no orders."""
    out = reference.copy()
    none = out["frequency"] == 0
    for column in NULL_WHEN_NO_ORDERS:
        if column in out:
            out[column] = out[column].astype("float64").where(~none, np.nan)
    if "order_days" in out:
        single = out["order_days"] < 2
        for column in NULL_WHEN_FEWER_THAN_TWO_ORDER_DAYS:
            out[column] = out[column].astype("float64").where(~single, np.nan)
    return out


def assert_matches_reference(engine: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Same rows, same columns, floats within 1e-9 relative (nulls where the convention says)."""
    expected = to_project(reference).sort_values("customer_id").reset_index(drop=True)
    got = engine.sort_values("customer_id").reset_index(drop=True)
    assert got["customer_id"].tolist() == expected["customer_id"].astype("int64").tolist()
    for column in expected.columns:
        if column == "customer_id":
            continue
        a = got[column].astype("float64").to_numpy()
        b = expected[column].astype("float64").to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{column}: nulls differ"
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-9, err_msg=column)
