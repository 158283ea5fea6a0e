"""Labels on hand-made histories: churned = no order in [snapshot, snapshot + horizon)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnops.training.labels import complete_snapshots, label_customers, label_grid, label_rows

SNAP = pd.Timestamp("2024-03-01")


def _label(orders: list[tuple[int, str]], known_until: str = "2024-12-31", horizon: int = 90) -> dict[int, int]:
    frame = pd.DataFrame(
        {"customer_id": [c for c, _ in orders], "order_date": pd.to_datetime([d for _, d in orders], format="ISO8601")}
    )
    labels = label_customers(frame, [SNAP], horizon, pd.Timestamp(known_until).to_pydatetime())
    return dict(zip(labels["customer_id"], labels["churned"], strict=True))


@pytest.mark.parametrize(
    ("later_order", "churned"),
    [
        ("2024-03-15", 0),  # inside the horizon
        ("2024-03-01", 0),  # date-only, on the snapshot day: the label side, so the customer came back
        ("2024-03-01 00:00:00", 0),  # exactly at the snapshot time: not a feature, so a label
        ("2024-02-29", 1),  # the day before the snapshot: a feature, not inside the window
        ("2024-05-29", 0),  # date-only, the last day inside [snapshot, snapshot + 90 days)
        ("2024-05-29 23:59:59", 0),  # the last second inside
        ("2024-05-30", 1),  # exactly snapshot + 90 days: the window is open on the right
        (None, 1),  # no later order at all
    ],
)
def test_boundaries(later_order: str | None, churned: int) -> None:
    orders = [(1, "2024-01-10")]
    if later_order:
        orders.append((1, later_order))
    assert _label(orders) == {1: churned}


def test_date_only_orders_on_and_next_to_snapshot_days_each_count_once() -> None:
    """Weekly snapshots over date-only orders: every order is a feature of later snapshots and a
    label of the snapshot on its own day, never lost between the two."""
    frame = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 2, 2],
            "order_date": pd.to_datetime(["2024-01-01", "2024-01-08", "2024-01-09", "2024-01-07", "2024-01-15"]),
        }
    )
    snaps = [pd.Timestamp("2024-01-08"), pd.Timestamp("2024-01-15"), pd.Timestamp("2024-01-22")]
    labels = label_customers(frame, snaps, 7, pd.Timestamp("2024-02-01").to_pydatetime())
    got = {(int(r.customer_id), str(r.event_timestamp.date())): int(r.churned) for r in labels.itertuples()}
    assert got == {
        (1, "2024-01-08"): 0,  # orders on 01-08 (the snapshot day) and 01-09
        (2, "2024-01-08"): 1,  # next order on 01-15 = 01-08 + 7 days: outside [01-08, 01-15)
        (1, "2024-01-15"): 1,  # nothing in [01-15, 01-22)
        (2, "2024-01-15"): 0,  # the order on 01-15 itself
        (1, "2024-01-22"): 1,
        (2, "2024-01-22"): 1,
    }


def test_a_customer_without_an_order_before_the_snapshot_is_not_labelled() -> None:
    """Customer 2 first buys after the snapshot; customer 3 first buys exactly on it."""
    assert _label([(1, "2024-02-01"), (2, "2024-04-01"), (3, "2024-03-01")]) == {1: 1}


def test_an_unfinished_horizon_is_never_labelled() -> None:
    orders = [(1, "2024-02-01"), (1, "2024-05-01")]
    assert _label(orders, known_until="2024-05-29") == {}
    assert _label(orders, known_until="2024-05-30") == {1: 0}


def test_orders_at_or_after_the_logical_date_are_not_read() -> None:
    """A label never depends on what was not known yet: an order on the logical date itself is
    ignored, even though it falls inside a window that closes at that date."""
    frame = pd.DataFrame({"customer_id": [1, 1], "order_date": pd.to_datetime(["2024-01-05", "2024-01-31"])})
    until = pd.Timestamp("2024-01-31").to_pydatetime()
    labels = label_customers(frame, [pd.Timestamp("2024-01-10")], 21, until)
    assert labels["churned"].tolist() == [1]


def test_several_snapshots_each_look_at_their_own_window() -> None:
    frame = pd.DataFrame({"customer_id": [1, 1], "order_date": pd.to_datetime(["2024-01-05", "2024-02-20"])})
    snaps = [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-06-01")]
    labels = label_customers(frame, snaps, 30, pd.Timestamp("2024-12-31").to_pydatetime())
    assert labels["churned"].tolist() == [0, 1]
    assert labels["event_timestamp"].tolist() == snaps


def test_complete_snapshots_close_their_window_by_the_logical_date() -> None:
    snaps = [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-08"), pd.Timestamp("2024-01-15")]
    assert complete_snapshots(snaps, 7, pd.Timestamp("2024-01-15").to_pydatetime()) == snaps[:2]


def test_the_grid_and_its_picked_rows_label_as_every_row_does() -> None:
    """`label_grid` holds the rows `label_customers` labels, in its order; any picked positions
    of a few snapshots, labelled alone by `label_rows`, equal those rows of the full labelling."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(1, 300, 4000),
            "order_date": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24, 4000), unit="h"),
        }
    )
    snaps = list(pd.date_range("2023-12-25", "2025-02-01", freq="7D"))  # the first before any order
    until = pd.Timestamp("2024-12-01").to_pydatetime()
    every = label_customers(frame, snaps, 30, until)
    grid = label_grid(frame, snaps, 30, until)
    assert grid.snapshots == sorted(pd.Timestamp(t) for t in every["event_timestamp"].unique())
    assert grid.snapshots[0] == pd.Timestamp("2024-01-08")
    assert grid.snapshots[-1] + pd.Timedelta(days=30) <= until
    assert sum(grid.size(s) for s in grid.snapshots) == len(every)
    all_rows = grid.rows(grid.snapshots)
    pd.testing.assert_frame_equal(all_rows, every[["customer_id", "event_timestamp"]])
    some = grid.snapshots[5:12]
    part = every[every["event_timestamp"].isin(some)].reset_index(drop=True)
    picks = np.sort(rng.choice(len(part), 200, replace=False))
    picked = label_rows(frame, grid.rows(some, picks), 30, until)
    pd.testing.assert_frame_equal(picked, part.iloc[picks].reset_index(drop=True))
    assert 0 < picked["churned"].sum() < len(picked)
