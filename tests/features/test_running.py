"""The running totals that carry many snapshots forward fold partial aggregates exactly."""

from __future__ import annotations

import numpy as np
import pytest

from churnops.features.definitions import feature_names
from churnops.features.running import DAY_US, RunningFeatures

# every feature but the distinct counts, with one 30-day window
NAMES = feature_names((30,), {"customer_id", "order_date", "total_amount"})


def step_of(orders: dict[int, list[tuple[int, float]]]) -> dict[str, np.ndarray]:
    """What `Stepping.orders_since` returns for {position: [(day, amount), ...]}."""
    pos = sorted(orders)
    amounts = [np.array([a for _, a in orders[p]]) for p in pos]
    days = [np.array([d for d, _ in orders[p]]) for p in pos]
    return {
        "pos": np.array(pos),
        "n": np.array([len(a) for a in amounts]),
        "total": np.array([a.sum() for a in amounts]),
        "mn": np.array([a.min() for a in amounts]),
        "mx": np.array([a.max() for a in amounts]),
        "first_at": np.array([d.min() * DAY_US for d in days]),
        "last_at": np.array([d.max() * DAY_US for d in days]),
        "m2": np.array([((a - a.mean()) ** 2).sum() for a in amounts]),
    }


def running(created_days: list[int]) -> RunningFeatures:
    ids = np.arange(101, 101 + len(created_days))
    return RunningFeatures(ids, np.array(created_days) * DAY_US, (30,), [], category_bits=False)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([(1, 10.0), (2, 30.0)], [(5, 20.0)]),
        ([(1, 1e6 + 0.1)], [(5, 1e6 + 0.2), (6, 1e6 + 0.3)]),
        ([(1, 7.0)], [(2, 7.0), (3, 7.0)]),
    ],
)
def test_two_steps_give_the_statistics_of_all_orders(first: list[tuple[int, float]], second) -> None:  # type: ignore[no-untyped-def]
    """Counts, sums, extremes and the sample standard deviation merge across steps."""
    totals = running([0])
    totals.add_orders(step_of({0: first}))
    totals.add_orders(step_of({0: second}))
    row = totals.table(10 * DAY_US, NAMES, 0).to_pylist()[0]
    amounts = np.array([a for _, a in first + second])
    assert row["frequency"] == len(amounts)
    assert row["monetary"] == pytest.approx(amounts.sum(), rel=1e-12)
    assert (row["min_order_value"], row["max_order_value"]) == (amounts.min(), amounts.max())
    assert row["std_order_value"] == pytest.approx(amounts.std(ddof=1), rel=1e-9, abs=1e-12)
    assert row["recency"] == 10 - max(d for d, _ in first + second)
    assert row["customer_lifetime_days"] == max(d for d, _ in first + second) - 1


def test_a_window_emptied_by_orders_leaving_is_exactly_zero() -> None:
    """0.1 + 0.2 entering and 0.3 leaving leaves 0.0, not the rounding between them."""
    totals = running([0])
    totals.add_orders(step_of({0: [(1, 0.1)]}))
    totals.add_orders(step_of({0: [(2, 0.2)]}))
    totals.remove_from_window(30, {"pos": np.array([0]), "n": np.array([2]), "total": np.array([0.3])})
    row = totals.table(40 * DAY_US, NAMES, 0).to_pylist()[0]
    assert row["orders_last_30d"] == 0
    assert row["spend_last_30d"] == 0.0
    assert row["frequency"] == 2


def test_customers_without_orders_get_zero_counts_and_null_statistics() -> None:
    """Only customers created before the snapshot are rows; no orders means 0 or null."""
    totals = running([0, 5, 50])
    totals.add_orders(step_of({0: [(1, 5.0)]}))
    rows = totals.table(10 * DAY_US, NAMES, 0).to_pylist()
    assert [r["customer_id"] for r in rows] == [101, 102]
    quiet = rows[1]
    assert (quiet["frequency"], quiet["monetary"], quiet["orders_last_30d"], quiet["spend_last_30d"]) == (
        0,
        0.0,
        0,
        0.0,
    )
    assert [quiet[name] for name in ("recency", "std_order_value", "avg_order_value")] == [None, None, None]
    assert rows[0]["std_order_value"] == 0.0
