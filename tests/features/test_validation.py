"""Feature validation refuses broken snapshots with a message that says what broke."""

from __future__ import annotations

import pandas as pd
import pytest

from churnops.features.definitions import feature_specs
from churnops.features.validation import FeatureValidationError, validate_snapshot

SPECS = feature_specs((7, 30, 90))


def _good() -> pd.DataFrame:
    ts = pd.Timestamp("2024-05-01", tz="UTC")
    row = {
        "customer_id": 1,
        "event_timestamp": ts,
        "created_timestamp": ts,
        "recency": 3,
        "frequency": 2,
        "monetary": 30.0,
        "avg_order_value": 15.0,
        "max_order_value": 20.0,
        "min_order_value": 10.0,
        "std_order_value": 7.07,
        "customer_lifetime_days": 10,
        "avg_days_between_orders": 5.0,
        "customer_age_days": 13,
        "order_days": 2,
        "mean_gap_days": 10.0,
        "std_gap_days": 0.0,
        "overdue_ratio": 0.3,
        "unique_products": 2,
        "unique_categories": 1,
        "orders_last_7d": 1,
        "spend_last_7d": 20.0,
        "orders_last_30d": 2,
        "spend_last_30d": 30.0,
        "orders_last_90d": 2,
        "spend_last_90d": 30.0,
    }
    empty = {
        **row,
        "customer_id": 2,
        "recency": None,
        "frequency": 0,
        "monetary": 0.0,
        "avg_order_value": None,
        "max_order_value": None,
        "min_order_value": None,
        "std_order_value": None,
        "customer_lifetime_days": None,
        "avg_days_between_orders": None,
        "customer_age_days": None,
        "order_days": 0,
        "mean_gap_days": None,
        "std_gap_days": None,
        "overdue_ratio": None,
        "unique_products": 0,
        "unique_categories": 0,
        "orders_last_7d": 0,
        "spend_last_7d": 0.0,
        "orders_last_30d": 0,
        "spend_last_30d": 0.0,
        "orders_last_90d": 0,
        "spend_last_90d": 0.0,
    }
    frame = pd.DataFrame([row, empty])
    for spec in SPECS:
        if spec.zero_when_no_orders:
            frame[spec.name] = frame[spec.name].astype(spec.dtype)
        else:
            frame[spec.name] = frame[spec.name].astype("float64")
    return frame


def test_a_good_snapshot_passes() -> None:
    validate_snapshot(_good(), SPECS, "2024-05-01", expected_rows=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(recency=[-1.0, None]), "recency >= 0"),
        (lambda f: f.assign(frequency=[-2, 0]), "frequency >= 0"),
        (lambda f: f.assign(max_order_value=[12.0, None]), "max >= mean"),
        (lambda f: f.assign(min_order_value=[16.0, None]), "mean >= min"),
        (lambda f: f.assign(orders_last_30d=[5, 0]), "orders_last_30d <= frequency"),
        (lambda f: f.assign(order_days=[3, 0]), "order days between 1 and frequency"),
        (lambda f: f.assign(order_days=[2, 1]), "order days between 1 and frequency"),
        (lambda f: pd.concat([f, f.head(1)], ignore_index=True), "one row per customer and snapshot"),
        (lambda f: f.head(1), "one row per known customer (2)"),
        (lambda f: f.assign(customer_id=[1, None]), "customer_id"),
    ],
)
def test_broken_snapshots_are_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FeatureValidationError, match="2024-05-01") as info:
        validate_snapshot(change(_good()), SPECS, "2024-05-01", expected_rows=2)
    assert message in str(info.value)


def test_a_row_wise_failure_is_reported_once_with_the_customer() -> None:
    """A check over whole rows names the failing customer once, not every column of the row."""
    with pytest.raises(FeatureValidationError) as info:
        validate_snapshot(_good().assign(max_order_value=[12.0, None]), SPECS, "2024-05-01", expected_rows=2)
    lines = str(info.value).splitlines()
    assert lines[1:] == ["  customer_id: max >= mean: 1 failing (e.g. [1])"]
