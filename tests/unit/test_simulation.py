"""The simulated shop: deterministic, plausible, and with the drift scenarios it promises."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from churnops.data.simulation import simulate_business
from churnops.settings import DriftScenario, SimulationSettings

SMALL = {"customers": 2_000, "start": date(2024, 1, 1), "end": date(2024, 12, 31), "products": 300}


def test_same_seed_same_world_and_other_seed_other_world() -> None:
    a = simulate_business(SimulationSettings(**SMALL, seed=1))
    b = simulate_business(SimulationSettings(**SMALL, seed=1))
    c = simulate_business(SimulationSettings(**SMALL, seed=2))
    pd.testing.assert_frame_equal(a.orders, b.orders)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    assert not a.orders["total_amount"].equals(c.orders["total_amount"])


def test_world_is_consistent() -> None:
    """Orders fall inside the horizon, after signup, before churn; ids are unique; 50 categories."""
    w = simulate_business(SimulationSettings(**SMALL, seed=4))
    o, c = w.orders, w.customers.set_index("customer_id")
    assert o["order_id"].is_unique
    assert o["order_date"].is_monotonic_increasing
    assert o["order_date"].min() >= pd.Timestamp("2024-01-01")
    assert o["order_date"].max() < pd.Timestamp("2025-01-01")
    assert (o["order_date"] >= c.loc[o["customer_id"], "created_at"].to_numpy()).all()
    last = o.groupby("customer_id")["order_date"].max()
    churned = c["churn_at"].dropna()
    both = last.index.intersection(churned.index)
    assert (last[both] <= churned[both]).all()
    assert (o["total_amount"] > 0).all()
    assert w.products["category"].nunique() == 50
    assert 5 <= len(o) / len(c) <= 15
    assert 0.2 < c["churn_at"].notna().mean() < 0.9


def test_price_shift_raises_prices_from_its_day() -> None:
    """Orders before the day are untouched; after it they cost (1 + magnitude) times more."""
    base = simulate_business(SimulationSettings(**SMALL, seed=5))
    shifted = simulate_business(
        SimulationSettings(
            **SMALL,
            seed=5,
            scenarios=[DriftScenario(kind="price_shift", start=date(2024, 7, 1), magnitude=0.5)],
        )
    )
    cut = pd.Timestamp("2024-07-01")
    before = base.orders["order_date"] < cut
    assert shifted.orders.loc[before, "total_amount"].equals(base.orders.loc[before, "total_amount"])
    ratio = shifted.orders.loc[~before, "total_amount"].sum() / base.orders.loc[~before, "total_amount"].sum()
    assert ratio == pytest.approx(1.5, rel=0.01)


def test_new_segment_joins_after_its_day_and_buys_differently() -> None:
    w = simulate_business(
        SimulationSettings(
            **SMALL,
            seed=6,
            scenarios=[DriftScenario(kind="new_segment", start=date(2024, 6, 1), magnitude=0.5)],
        )
    )
    seg = w.customers[w.customers["segment"] == 1]
    assert len(seg) > 100
    assert (seg["created_at"] >= pd.Timestamp("2024-06-01")).all()
    orders = w.orders.merge(w.customers[["customer_id", "segment"]], on="customer_id")
    spend = orders.groupby("segment")["total_amount"].mean()
    assert spend[1] < 0.8 * spend[0]
    plain = simulate_business(SimulationSettings(**SMALL, seed=6))
    before = pd.Timestamp("2024-06-01")
    pd.testing.assert_frame_equal(
        plain.orders[plain.orders["order_date"] < before], w.orders[w.orders["order_date"] < before]
    )


def test_concept_drift_changes_who_churns() -> None:
    """After the change, churn follows spend level, which it did not before."""
    start = date(2024, 4, 1)
    plain = simulate_business(SimulationSettings(**SMALL, seed=8))
    drift = simulate_business(
        SimulationSettings(**SMALL, seed=8, scenarios=[DriftScenario(kind="concept_drift", start=start, magnitude=0.6)])
    )

    def churn_vs_spend(w) -> float:  # type: ignore[no-untyped-def]
        spend = w.orders[w.orders["order_date"] < pd.Timestamp(start)].groupby("customer_id")["total_amount"].mean()
        churned = w.customers.set_index("customer_id")["churn_at"].between(
            pd.Timestamp(start), pd.Timestamp("2024-09-01")
        )
        return float(spend.rank().corr(churned.reindex(spend.index).astype(float)))

    assert churn_vs_spend(drift) > churn_vs_spend(plain) + 0.06
    before = pd.Timestamp(start)
    pd.testing.assert_frame_equal(
        plain.orders[plain.orders["order_date"] < before], drift.orders[drift.orders["order_date"] < before]
    )
