"""Which cells a day's load writes into the SQLite online store (`online_bulk.changed_cells`)."""

from __future__ import annotations

import pyarrow as pa

from churnops.features.online_bulk import changed_cells


def test_only_new_customers_and_changed_cells_are_marked_and_the_timestamp_feature_always() -> None:
    previous = pa.table(
        {
            "customer_id": pa.array([3, 1, 2], pa.int64()),
            "frequency": pa.array([5, 1, None], pa.int64()),
            "monetary": pa.array([0.0, 10.5, 7.0], pa.float64()),
            "unique_products": pa.array([2, 1, 1], pa.int64()),
        }
    )
    current = pa.table(
        {
            "customer_id": pa.array([1, 2, 3, 4], pa.int64()),
            "frequency": pa.array([1, 2, 5, 1], pa.int64()),  # 2: missing -> 2
            "monetary": pa.array([10.5, None, -0.0, 3.0], pa.float64()),  # 2: 7 -> missing; 3: 0.0 -> -0.0
            "unique_products": pa.array([1, 1, 2, 1], pa.int64()),  # unchanged, but Feast reads its timestamp
        }
    )
    names = ["frequency", "monetary", "unique_products"]
    changed = changed_cells(current, previous, "customer_id", names)
    assert changed["frequency"].tolist() == [False, True, False, True]
    assert changed["monetary"].tolist() == [False, True, True, True]  # -0.0 is other bytes than 0.0
    assert changed["unique_products"].tolist() == [True, True, True, True]
    # a view without a TTL: the timestamp feature is written only where it changed, like the rest
    unstamped = changed_cells(current, previous, "customer_id", names, stamp_every_customer=False)
    assert unstamped["unique_products"].tolist() == [False, False, False, True]
    assert unstamped["monetary"].tolist() == changed["monetary"].tolist()


def test_an_empty_previous_snapshot_marks_everything() -> None:
    previous = pa.table({"customer_id": pa.array([], pa.int64()), "x": pa.array([], pa.float64())})
    current = pa.table({"customer_id": pa.array([1, 2], pa.int64()), "x": pa.array([1.0, 2.0])})
    assert changed_cells(current, previous, "customer_id", ["x"])["x"].tolist() == [True, True]
