"""Labels on hand-made histories: churned = no order in (snapshot, snapshot + horizon]."""

from __future__ import annotations

import pandas as pd
import pytest

from churnops.training.labels import label_customers

SNAP = pd.Timestamp("2024-03-01")


def _label(orders: list[tuple[int, str]], data_end: str = "2024-12-31", horizon: int = 90) -> dict[int, int]:
    frame = pd.DataFrame(
        {"customer_id": [c for c, _ in orders], "order_date": pd.to_datetime([d for _, d in orders], format="ISO8601")}
    )
    labels = label_customers(frame, [SNAP], horizon, pd.Timestamp(data_end).to_pydatetime())
    return dict(zip(labels["customer_id"], labels["churned"], strict=True))


@pytest.mark.parametrize(
    ("later_order", "churned"),
    [
        ("2024-03-15", 0),  # inside the horizon
        ("2024-05-30 00:00:00", 0),  # exactly on snapshot + 90 days: inside (the window is closed on the right)
        ("2024-05-30 00:00:01", 1),  # one second past the horizon
        ("2024-03-01 00:00:00", 1),  # exactly on the snapshot: neither a feature nor inside the window
        (None, 1),  # no later order at all
    ],
)
def test_boundaries(later_order: str | None, churned: int) -> None:
    orders = [(1, "2024-01-10")]
    if later_order:
        orders.append((1, later_order))
    assert _label(orders) == {1: churned}


def test_a_customer_without_an_order_before_the_snapshot_is_not_labelled() -> None:
    """Customer 2 first buys after the snapshot; customer 3 first buys exactly on it."""
    assert _label([(1, "2024-02-01"), (2, "2024-04-01"), (3, "2024-03-01")]) == {1: 1}


def test_an_unfinished_horizon_is_never_labelled() -> None:
    orders = [(1, "2024-02-01"), (1, "2024-05-01")]
    assert _label(orders, data_end="2024-05-29") == {}
    assert _label(orders, data_end="2024-05-30") == {1: 0}


def test_several_snapshots_each_look_at_their_own_window() -> None:
    frame = pd.DataFrame({"customer_id": [1, 1], "order_date": pd.to_datetime(["2024-01-05", "2024-02-20"])})
    snaps = [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-06-01")]
    labels = label_customers(frame, snaps, 30, pd.Timestamp("2024-12-31").to_pydatetime())
    assert labels["churned"].tolist() == [0, 1]
    assert labels["event_timestamp"].tolist() == snaps
