"""The running totals that carry many snapshots forward fold partial aggregates exactly."""

from __future__ import annotations

import numpy as np
import pytest

from churnops.features import running as running_module
from churnops.features.definitions import feature_names
from churnops.features.running import DAY_US, FirstOrders, RunningFeatures, first_occurrences

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


@pytest.mark.parametrize("piece", [None, 1, 7, 64], ids=["one piece", "pieces of 1", "pieces of 7", "pieces of 64"])
@pytest.mark.parametrize("offset", [0, 2**40, 2**60], ids=["packed sort", "packed wide keys", "stable argsort"])
def test_first_occurrences_marks_the_earliest_row_of_each_key(
    offset: int, piece: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sorting paths (keys packed with the row number when both fit 64 bits; larger keys)
    agree with a loop, whatever the pieces the packed keys are built and read in."""
    if piece:
        monkeypatch.setattr(running_module, "PIECE", piece)
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 50, 2_000).astype(np.uint64) + np.uint64(offset)
    seen: set[int] = set()
    expected = []
    for key in keys.tolist():
        expected.append(key not in seen)
        seen.add(key)
    got = first_occurrences(keys)
    assert got.tolist() == expected
    assert got.sum() == len(seen)
    assert not first_occurrences(np.array([], dtype=np.uint64)).any()


def test_first_orders_hand_out_each_pair_once_at_its_first_order() -> None:
    """A pair counts in the first snapshot after its first order, never again, and an order
    exactly at a snapshot counts only in the next one."""
    day = DAY_US
    positions = np.array([0, 1, 0, 0, 1, 2])
    at = np.array([1, 2, 3, 5, 5, 9]) * day
    codes = np.array([7, 7, 7, 8, 7, 0])
    firsts = FirstOrders(positions, at, codes, values=10)
    assert firsts.until(3 * day).tolist() == [0, 1]  # the order at day 3 repeats (0, 7)
    assert firsts.until(5 * day).tolist() == []  # orders exactly at day 5 wait
    assert firsts.until(6 * day).tolist() == [0]  # (0, 8) is new, (1, 7) is not
    assert firsts.until(10 * day).tolist() == [2]
    assert firsts.until(20 * day).tolist() == []


def test_exact_cents_std_is_exact_where_int64_would_overflow_and_keeps_the_fallback_elsewhere() -> None:
    """n * sum(c^2) beyond 2^62 is taken in Python integers; sums of squared cents at 2^53 or
    more (not exact as floats), single orders and no orders keep the fallback."""
    from fractions import Fraction

    from churnops.features.running import EXACT_LIMIT, exact_cents_std

    rng = np.random.default_rng(5)
    histories = [
        rng.integers(1, 10**5, 3),  # small
        np.full(1000, 94_000_000),  # n * sum(c^2) ~ 8.8e21: beyond int64, sum(c^2) ~ 8.8e18: no
        rng.integers(2_000_000, 2_900_000, 1100),  # sum(c^2) ~ 7e15 < 2^53, n * sum(c^2) ~ 8e18 > 2^62
        np.array([123]),  # one order
        np.array([], dtype=np.int64),  # none
    ]
    n = np.array([len(h) for h in histories], dtype=np.int64)
    cents = np.array([float(h.sum()) for h in histories])
    cents2 = np.array([float((h.astype(object) ** 2).sum()) for h in histories])
    fallback = np.full(len(histories), -1.0)
    got = exact_cents_std(n, cents, cents2, fallback)
    assert cents2[2] < EXACT_LIMIT
    assert n[2] * cents2[2] >= 2.0**62
    for i in (0, 2):
        values = [Fraction(int(c), 100) for c in histories[i]]
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        assert got[i] == pytest.approx(float(variance) ** 0.5, rel=1e-15)
    assert cents2[1] >= EXACT_LIMIT
    assert list(got[[1, 3, 4]]) == [-1.0, -1.0, -1.0]


@pytest.mark.parametrize("created_days", [[0, 1, 2], [0, 1, 40]], ids=["everyone known", "one not yet created"])
def test_a_shared_table_equals_a_copied_one_and_only_a_copy_outlives_the_next_step(created_days: list[int]) -> None:
    """One snapshot alone hands out the totals' own arrays (`share`); rows handed out without
    it are copies, which folding the next step's orders leaves as they were."""
    totals = RunningFeatures(
        np.arange(101, 104), np.array(created_days) * DAY_US, (30,), [], category_bits=False, cents=True
    )
    positions = np.array([0, 0, 1], dtype=np.intp)
    at = np.array([3, 5, 4]) * DAY_US
    amounts = np.array([10.0, 12.5, 7.25])
    totals.fold_all(positions, at, amounts, 20 * DAY_US)
    copied = totals.table(20 * DAY_US, NAMES, 0)
    shared = totals.table(20 * DAY_US, NAMES, 0, share=True)
    assert shared.equals(copied)
    assert copied.num_rows == sum(day < 20 for day in created_days)
    before = copied.to_pylist()
    more = np.array([99.0, 1.0])
    totals.add_rows(np.array([0, 1], dtype=np.intp), np.array([21, 22]) * DAY_US, more, more * 100)
    assert copied.to_pylist() == before
    assert totals.table(30 * DAY_US, NAMES, 0).column("frequency").to_pylist()[:2] == [3, 2]
