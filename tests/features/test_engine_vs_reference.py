"""The DuckDB engine equals the reference pandas implementation, snapshot by snapshot."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnops.features.duckdb_engine import Staged, compute_features
from tests.features.reference import (
    assert_matches_reference,
    design_reference_features,
    reference_features,
    to_project,
)

WINDOWS = (7, 30, 90)


def random_shop(seed: int, customers: int = 300, orders: int = 3000) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01")
    created = start + pd.to_timedelta(rng.integers(0, 200 * 86400, customers), unit="s")
    cust = pd.DataFrame({"customer_id": np.arange(1, customers + 1, dtype=np.int64), "created_at": created})
    owner = rng.integers(1, customers + 1, orders)
    when = cust.set_index("customer_id").loc[owner, "created_at"].to_numpy() + pd.to_timedelta(
        rng.integers(0, 200 * 86400, orders), unit="s"
    )
    frame = pd.DataFrame(
        {
            "customer_id": owner.astype(np.int64),
            "order_date": pd.to_datetime(when).floor("h"),  # ties on purpose
            "total_amount": np.round(rng.lognormal(3, 1, orders), 2),
            "product_id": rng.integers(0, 40, orders).astype(str),
            "category": rng.integers(0, 6, orders).astype(str),
        }
    )
    return frame, cust


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_snapshots_equal_the_reference_at_each(seed: int) -> None:
    orders, customers = random_shop(seed)
    snapshots = list(pd.date_range("2024-02-01", "2024-09-01", freq="7D"))
    snapshots.append(orders["order_date"].iloc[5])  # exactly on an order's timestamp
    got = compute_features(orders, customers, snapshots, WINDOWS)
    for as_of in snapshots:
        one = got[got["event_timestamp"] == as_of].drop(columns="event_timestamp")
        assert_matches_reference(one, reference_features(orders, customers, pd.Timestamp(as_of), WINDOWS))


def test_one_snapshot_alone_equals_the_same_snapshot_among_many() -> None:
    """Bit for bit, so the content hash is the same too: whole-cent sums are exact either way."""
    orders, customers = random_shop(9)
    many = compute_features(orders, customers, list(pd.date_range("2024-03-01", "2024-08-01", freq="14D")), WINDOWS)
    as_of = pd.Timestamp("2024-05-24")
    alone = compute_features(orders, customers, [as_of], WINDOWS)
    pd.testing.assert_frame_equal(
        many[many["event_timestamp"] == as_of].reset_index(drop=True), alone.reset_index(drop=True), check_exact=True
    )


def _staged(orders: pd.DataFrame, customers: pd.DataFrame, snapshots: list[pd.Timestamp], staging: Path) -> Staged:
    """The snapshots written by the pipeline's path into `staging` (a new folder)."""
    from churnops.features.definitions import feature_names
    from churnops.features.duckdb_engine import connect_features, write_features

    con, optional = connect_features(orders, customers)
    names = feature_names(WINDOWS, {"customer_id", "order_date", "total_amount", *optional})
    staging.mkdir()
    try:
        return write_features(con, snapshots, WINDOWS, optional, names, staging, datetime(2024, 9, 1))
    finally:
        con.close()


def test_one_snapshot_has_the_same_content_hash_alone_and_among_many(tmp_path: Path) -> None:
    orders, customers = random_shop(11, customers=400, orders=6000)
    as_of = pd.Timestamp("2024-06-07")
    hashes = []
    for run, snapshots in enumerate([list(pd.date_range("2024-02-02", "2024-08-02", freq="7D")), [as_of]]):
        hashes.append(_staged(orders, customers, snapshots, tmp_path / f"run{run}")["2024-06-07"][2])
    assert hashes[0] == hashes[1]


def test_without_products_and_categories_those_features_are_absent() -> None:
    orders, customers = random_shop(4)
    got = compute_features(
        orders.drop(columns=["product_id", "category"]), customers, [pd.Timestamp("2024-06-01")], WINDOWS
    )
    assert "unique_products" not in got.columns
    assert "unique_categories" not in got.columns
    ref = reference_features(orders.drop(columns=["product_id", "category"]), customers, pd.Timestamp("2024-06-01"))
    assert_matches_reference(got.drop(columns="event_timestamp"), ref)


def test_no_leakage_orders_after_the_snapshot_change_nothing() -> None:
    """Changing or adding orders at or after a snapshot changes no feature of that snapshot."""
    orders, customers = random_shop(5)
    as_of = pd.Timestamp("2024-05-01")
    before = compute_features(orders, customers, [as_of], WINDOWS)
    later = orders["order_date"] >= as_of
    changed = orders.copy()
    changed.loc[later, "total_amount"] = changed.loc[later, "total_amount"] * 7 + 1
    extra = changed[later].head(50).assign(order_date=as_of, product_id="new")
    changed = pd.concat([changed, extra], ignore_index=True)
    after = compute_features(changed, customers, [as_of], WINDOWS)
    pd.testing.assert_frame_equal(before, after)


order_rows = st.lists(
    st.tuples(
        st.integers(1, 4),  # customer
        st.integers(0, 40),  # day offset
        st.sampled_from([0, 3600, 86399]),  # second within the day
        st.floats(0, 1000, allow_nan=False).map(lambda x: round(x, 2)),
        st.sampled_from(["a", "b", "c"]),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=order_rows, snap_days=st.lists(st.integers(0, 45), min_size=1, max_size=4, unique=True))
def test_property_engine_equals_reference(rows: list[tuple[int, int, int, float, str]], snap_days: list[int]) -> None:
    """Empty histories, single orders, orders exactly on a snapshot, equal timestamps: all agree."""
    base = pd.Timestamp("2024-01-01")
    customers = pd.DataFrame(
        {
            "customer_id": np.array([1, 2, 3, 4, 5], dtype=np.int64),
            "created_at": [base - pd.Timedelta(days=1)] * 5,
        }
    )
    orders = pd.DataFrame(
        {
            "customer_id": np.array([r[0] for r in rows], dtype=np.int64),
            "order_date": pd.to_datetime([base + pd.Timedelta(days=r[1], seconds=r[2]) for r in rows]).astype(
                "datetime64[us]"
            ),
            "total_amount": np.array([r[3] for r in rows], dtype=np.float64),
            "product_id": [r[4] for r in rows],
            "category": [r[4].upper() for r in rows],
        }
    )
    snapshots = [base + pd.Timedelta(days=d) for d in snap_days]
    got = compute_features(orders, customers, snapshots, WINDOWS)
    for as_of in snapshots:
        one = got[got["event_timestamp"] == as_of].drop(columns="event_timestamp")
        assert_matches_reference(one, reference_features(orders, customers, as_of, WINDOWS))


def test_the_published_spelling_of_the_reference_equals_the_vectorised_oracle() -> None:
    """The benchmark's baseline (per-group lambda) computes the same values as the test oracle."""
    orders, customers = random_shop(6)
    as_of = pd.Timestamp("2024-06-01")
    vectorised = reference_features(orders, customers, as_of, WINDOWS)
    published = design_reference_features(orders, customers, as_of, WINDOWS)
    # the features beyond the design document are the oracle's alone
    assert_matches_reference(to_project(published), vectorised[published.columns])


@pytest.mark.parametrize("categories", [97, 256, 257, 2999])
def test_more_than_64_categories_are_counted_exactly(categories: int) -> None:
    """The 64-bit category mask gives way to a distinct count when there are more categories;
    codes are fetched in 8 bits up to 256 values and in 16 beyond, on every path."""
    from churnops.features.duckdb_engine import _code_type

    assert [_code_type(n) for n in (256, 257, 2**16, 2**16 + 1)] == ["UTINYINT", "USMALLINT", "USMALLINT", "UINTEGER"]
    orders, customers = random_shop(8)
    orders["category"] = (np.arange(len(orders)) % categories).astype(str)
    orders["product_id"] = (np.arange(len(orders)) * 7 % (categories + 1)).astype(str)
    as_of = pd.Timestamp("2024-06-01")
    snapshots = [pd.Timestamp("2024-04-01"), as_of]
    got = compute_features(orders, customers, [as_of], WINDOWS)
    many = compute_features(orders, customers, snapshots, WINDOWS)
    assert got["unique_categories"].max() > 5
    assert_matches_reference(got.drop(columns="event_timestamp"), reference_features(orders, customers, as_of, WINDOWS))
    pd.testing.assert_frame_equal(
        many[many["event_timestamp"] == as_of].reset_index(drop=True), got.reset_index(drop=True), check_exact=True
    )


@pytest.mark.parametrize("batch", [100, 2048, 1 << 20])
def test_the_orders_streamed_in_batches_are_the_rows_of_one_fetch(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """The fold's fetch streams Arrow batches into arrays sized for every order: the same rows
    in the same order as one Arrow table, missing codes masked, in batches of any size; and a
    query that returns more rows than there are orders grows the arrays rather than overflowing."""
    from churnops.features import duckdb_engine
    from churnops.features.duckdb_engine import _code_values, _orders_before, _streamed, connect_features

    monkeypatch.setattr(duckdb_engine, "PIECE", batch)
    orders, customers = random_shop(12, orders=5000)
    orders.loc[orders.index % 7 == 0, "product_id"] = None
    orders.loc[orders.index % 11 == 0, "category"] = None
    orders.loc[orders.index % 13 == 0, "customer_id"] = 10_000  # no such customer: not fetched
    con, _ = connect_features(orders, customers)
    literal = "TIMESTAMP '2024-06-01 00:00:00'"
    coded = {column: _code_values(con, column, literal) for column in ("product_id", "category")}
    got = _orders_before(con, literal, coded, in_time_order=True)
    expected = con.sql(
        f"""SELECT c.rowid AS pos, epoch_us(o.order_date) AS at, o.total_amount AS amount,
                   p.code AS product_id, k.code AS category
            FROM orders AS o JOIN customers AS c ON c.customer_id = o.customer_id
            LEFT JOIN codes_product_id AS p ON p.value = o.product_id
            LEFT JOIN codes_category AS k ON k.value = o.category
            WHERE o.order_date < {literal} ORDER BY o.order_date"""
    ).df()
    assert 1000 < len(expected) < len(orders)
    # ties in order_date may come in either order: compare the rows as a set, then the times in order
    np.testing.assert_array_equal(got["at"], expected["at"].to_numpy())
    rows = pd.DataFrame({name: np.ma.filled(values.astype("float64"), np.nan) for name, values in got.items()})
    by = list(rows.columns)
    pd.testing.assert_frame_equal(
        rows.sort_values(by).reset_index(drop=True),
        expected.astype("float64").sort_values(by).reset_index(drop=True),
    )
    assert np.ma.isMaskedArray(got["product_id"])
    assert np.ma.isMaskedArray(got["category"])
    assert got["product_id"].mask.sum() == expected["product_id"].isna().sum() > 0

    tripled = _streamed(con, "SELECT CAST(c.rowid AS UINTEGER) AS pos FROM orders AS o, customers AS c, range(3)")
    assert len(tripled["pos"]) == 3 * len(orders) * len(customers)


def test_amounts_that_are_not_whole_cents_take_the_two_pass_variance() -> None:
    """Sub-cent amounts and sums too large for exact float cents still match the reference."""
    orders, customers = random_shop(10)
    orders["total_amount"] = np.round(orders["total_amount"] * 1.0007, 5)
    # cents squared beyond 2^53: float sums of them would not be exact
    orders.loc[orders["customer_id"] == 7, "total_amount"] = 1e6 + 12345.67 * np.arange(
        (orders["customer_id"] == 7).sum()
    )
    as_of = pd.Timestamp("2024-06-01")
    got = compute_features(orders, customers, [as_of], WINDOWS)
    assert got.loc[got["customer_id"] == 7, "std_order_value"].iloc[0] > 0
    assert_matches_reference(got.drop(columns="event_timestamp"), reference_features(orders, customers, as_of, WINDOWS))


def test_distinct_counts_skip_missing_values_and_unknown_customers() -> None:
    """Null products count for nothing, and orders of customers not (yet) known are left out."""
    from churnops.features.duckdb_engine import connect_features, distinct_counts

    customers = pd.DataFrame({"customer_id": [5, 3, 9], "created_at": pd.to_datetime(["2024-01-01"] * 3)})
    orders = pd.DataFrame(
        {
            "customer_id": [3, 3, 3, 3, 5, 5, 42],
            "order_date": pd.to_datetime(["2024-02-01"] * 6 + ["2024-02-02"]),
            "total_amount": [1.0] * 7,
            "product_id": ["b", "a", "b", None, None, "c", "a"],
        }
    )
    orders.loc[3, "order_date"] = pd.Timestamp("2024-09-01")  # after the snapshot
    orders.loc[3, "product_id"] = "z"
    con, _ = connect_features(orders, customers)
    counts = distinct_counts(con, "product_id", "TIMESTAMP '2024-06-01'").to_pandas()
    con.close()
    assert dict(zip(counts["customer_id"], counts["n"], strict=True)) == {5: 1, 3: 2, 9: 0}


@pytest.mark.parametrize("huge", [False, True])
def test_one_snapshot_of_whole_cents_is_folded_from_one_fetch_the_same_in_any_row_order(
    huge: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One snapshot of whole cents is folded in numpy from the orders in whatever order they
    come: shuffled orders give the same bits, and the values are the reference's, with missing
    products and categories, orders of customers not known, a customer whose creation time is
    unknown, and (huge) squared cents beyond 2^53, whose deviations are summed apart."""
    from churnops.features import duckdb_engine

    orders, customers = random_shop(12)
    orders.loc[orders.index[::17], "product_id"] = None
    orders.loc[orders.index[::23], "category"] = None
    strangers = orders.iloc[:40].assign(customer_id=10_000)  # nobody the customers table knows
    orders = pd.concat([orders, strangers], ignore_index=True)
    customers.loc[customers["customer_id"] == 3, "created_at"] = pd.NaT
    as_of = pd.Timestamp("2024-06-01")
    busiest = int(orders.loc[orders["order_date"] < as_of, "customer_id"].value_counts().index[0])
    if huge:
        mine = orders["customer_id"] == busiest
        orders.loc[mine, "total_amount"] = np.round(1e6 + 12345.67 * np.arange(mine.sum()), 2)
    folded: list[int] = []
    real = duckdb_engine._folded_snapshot

    def spy(*args: object, **kwargs: object) -> object:
        rows = real(*args, **kwargs)  # type: ignore[arg-type]
        folded.append(rows.num_rows)
        return rows

    monkeypatch.setattr(duckdb_engine, "_folded_snapshot", spy)
    got = compute_features(orders, customers, [as_of], WINDOWS)
    shuffled = compute_features(orders.sample(frac=1.0, random_state=3), customers, [as_of], WINDOWS)
    assert folded == [len(got), len(got)]
    pd.testing.assert_frame_equal(got, shuffled, check_exact=True)
    assert 3 not in set(got["customer_id"])
    assert 10_000 not in set(got["customer_id"])
    if huge:
        assert got.loc[got["customer_id"] == busiest, "std_order_value"].iloc[0] > 1000
    known = customers.dropna(subset=["created_at"])
    assert_matches_reference(got.drop(columns="event_timestamp"), reference_features(orders, known, as_of, WINDOWS))


@pytest.mark.parametrize("piece", [1, 7, 500])
def test_work_in_pieces_of_rows_gives_the_bits_of_one_piece(piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folds build their keys and sums a piece of rows at a time (`running.PIECE`, a
    million by default): pieces of any size, the days of one customer split across them, give
    the bits of one piece, for one snapshot and for many, also for a customer whose squared
    cents reach 2^53 (found from sums over all the pieces)."""
    from churnops.features import running

    orders, customers = random_shop(14)
    orders.loc[orders.index[::17], "product_id"] = None
    busiest = int(orders.loc[orders["order_date"] < "2024-06-01", "customer_id"].value_counts().index[0])
    mine = orders["customer_id"] == busiest
    orders.loc[mine, "total_amount"] = np.round(1e6 + 12345.67 * np.arange(mine.sum()), 2)
    snapshots = list(pd.date_range("2024-03-01", "2024-09-01", freq="14D"))
    as_of = snapshots[7]
    one = compute_features(orders, customers, [as_of], WINDOWS)
    many = compute_features(orders, customers, snapshots, WINDOWS)
    assert len(orders) < running.PIECE  # one piece so far
    assert one.loc[one["customer_id"] == busiest, "std_order_value"].iloc[0] > 1000
    monkeypatch.setattr(running, "PIECE", piece)
    pd.testing.assert_frame_equal(compute_features(orders, customers, [as_of], WINDOWS), one, check_exact=True)
    pd.testing.assert_frame_equal(compute_features(orders, customers, snapshots, WINDOWS), many, check_exact=True)
    assert_matches_reference(one.drop(columns="event_timestamp"), reference_features(orders, customers, as_of, WINDOWS))
    for moment in snapshots[::6]:
        at = many[many["event_timestamp"] == moment].drop(columns="event_timestamp")
        assert_matches_reference(at, reference_features(orders, customers, moment, WINDOWS))


def test_amounts_not_in_whole_cents_take_the_sql_grouping_and_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float sums of other amounts depend on the order of the rows: one snapshot and many take
    the SQL paths, whose compensated sums do not, and never the numpy folds (one snapshot
    fetches its orders, sees they are not whole cents, and folds nothing)."""
    from churnops.features import duckdb_engine
    from churnops.features.running import RunningFeatures

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("folded")

    monkeypatch.setattr(RunningFeatures, "fold_all", refuse)
    monkeypatch.setattr(duckdb_engine, "_start_folding", refuse)
    orders, customers = random_shop(13)
    orders["total_amount"] = orders["total_amount"] + 0.001
    snapshots = list(pd.date_range("2024-03-01", "2024-09-01", freq="14D"))
    alone = compute_features(orders, customers, [snapshots[7]], WINDOWS)
    many = compute_features(orders, customers, snapshots, WINDOWS)
    for got, as_of in [(alone, snapshots[7]), *((many, s) for s in snapshots)]:
        one = got[got["event_timestamp"] == as_of].drop(columns="event_timestamp")
        assert_matches_reference(one, reference_features(orders, customers, as_of, WINDOWS))


@pytest.mark.parametrize("wide_orders", [None, 0], ids=["numpy steps", "sql steps"])
@pytest.mark.parametrize("huge", [False, True])
def test_many_snapshots_of_whole_cents_are_folded_in_numpy_and_equal_each_snapshot_alone(
    huge: bool, wide_orders: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole-cent amounts step through in numpy from one fetch of the orders, also when a
    customer's squared cents reach 2^53 (huge: their deviations are summed again at each
    snapshot, as one snapshot alone sums them), so every snapshot has the bits it has alone.
    Beyond `WIDE_ORDERS` such orders the SQL steps take over. Either way every snapshot matches
    the reference."""
    from churnops.features import duckdb_engine

    orders, customers = random_shop(11)
    busiest = int(orders.loc[orders["order_date"] < "2024-06-01", "customer_id"].value_counts().index[0])
    if huge:  # whole cents, squared beyond 2^53
        mine = orders["customer_id"] == busiest
        orders.loc[mine, "total_amount"] = np.round(1e6 + 12345.67 * np.arange(mine.sum()), 2)
    if wide_orders is not None:
        monkeypatch.setattr(duckdb_engine, "WIDE_ORDERS", wide_orders)
    folded: list[bool] = []
    stepped: list[object] = []
    real_folding, real_stepping = duckdb_engine._start_folding, duckdb_engine._start_stepping

    def folding(*args: object, **kwargs: object) -> object:
        started = real_folding(*args, **kwargs)  # type: ignore[arg-type]
        folded.append(started is not None)
        return started

    def stepping(*args: object, **kwargs: object) -> object:
        started = real_stepping(*args, **kwargs)  # type: ignore[arg-type]
        stepped.append(started)
        return started

    monkeypatch.setattr(duckdb_engine, "_start_folding", folding)
    monkeypatch.setattr(duckdb_engine, "_start_stepping", stepping)
    snapshots = list(pd.date_range("2024-03-01", "2024-09-01", freq="14D"))
    got = compute_features(orders, customers, snapshots, WINDOWS)
    in_sql = huge and wide_orders == 0
    assert folded == [not in_sql]
    assert len(stepped) == (1 if in_sql else 0)
    if huge:
        assert (got.loc[got["customer_id"] == busiest, "std_order_value"].dropna() > 0).any()
    for as_of in snapshots:
        one = got[got["event_timestamp"] == as_of].drop(columns="event_timestamp")
        assert_matches_reference(one, reference_features(orders, customers, pd.Timestamp(as_of), WINDOWS))
    if not in_sql:
        for as_of in snapshots[4::5]:
            alone = compute_features(orders, customers, [as_of], WINDOWS)
            pd.testing.assert_frame_equal(
                got[got["event_timestamp"] == as_of].reset_index(drop=True), alone, check_exact=True
            )


@pytest.mark.parametrize("cents", [True, False], ids=["whole cents", "other amounts"])
@pytest.mark.parametrize("count", [1, 6], ids=["one snapshot", "many"])
def test_a_rerun_writes_the_same_bytes_in_customer_id_order(tmp_path: Path, cents: bool, count: int) -> None:
    """Whichever path computes them, the rows are written in customer_id order, so computing
    the same snapshots again (customers given in another order) writes the same files."""
    import pyarrow.parquet as pq

    orders, customers = random_shop(14, customers=500, orders=5000)
    if not cents:
        orders["total_amount"] = orders["total_amount"] + 0.001
    snapshots = list(pd.date_range("2024-04-01", periods=count, freq="7D"))
    written = []
    for run, shuffled in enumerate([customers, customers.sample(frac=1.0, random_state=2)]):
        staged = _staged(orders, shuffled, snapshots, tmp_path / f"run{run}")
        written.append({day: path.read_bytes() for day, (path, _, _) in staged.items()})
        for path, _, _ in staged.values():
            ids = pq.read_table(path, columns=["customer_id"])["customer_id"].to_numpy()
            assert (np.diff(ids) > 0).all()
    assert written[0] == written[1]


# cents, a half cent, float sums, signs, the limit and beyond, NaN, infinities, the tiniest float
AMOUNTS = [0.29, 0.125, 0.1 + 0.2, 19.99, -3.07, 0.0, -0.0, 1e13 - 0.01, 1e13, 1e13 + 1, 1e15]
AMOUNTS += [np.nan, np.inf, -np.inf, 5e-324]


@pytest.mark.parametrize("amount", AMOUNTS)
def test_the_fetched_amounts_are_judged_whole_cents_as_sql_judges_them(amount: float) -> None:
    """A snapshot whose fetch holds every order judges whole cents from the fetched amounts in
    numpy; the verdict is the SQL one over the orders, value by value (rounding of halves,
    the limit, NaN, infinities). When the fetch misses orders (later ones, here a sub-cent one),
    the SQL verdict over all of them stands, so a snapshot alone takes the path it takes among
    many."""
    from churnops.features.duckdb_engine import _fetched_in_cents, _orders_before, connect_features, whole_cents

    customers = pd.DataFrame({"customer_id": [1, 2], "created_at": pd.to_datetime(["2024-01-01", "2024-01-01"])})
    orders = pd.DataFrame(
        {
            "customer_id": [1, 2, 1],
            "order_date": pd.to_datetime(["2024-02-01", "2024-02-03", "2024-02-05"]),
            "total_amount": [12.5, amount, 7.25],
        }
    )
    sql_con, _ = connect_features(orders, customers)
    expected = whole_cents(sql_con)
    con, _ = connect_features(orders, customers)
    fetched = _orders_before(con, "TIMESTAMP '2024-03-01 00:00:00'", {})
    assert len(fetched["amount"]) == 3
    assert _fetched_in_cents(con, fetched["amount"]) is expected
    assert whole_cents(con) is expected  # recorded for the connection
    assert expected is bool(np.isfinite(amount) and abs(amount) < 1e13 and round(amount * 100) / 100 == amount)

    later = pd.concat([orders, orders.iloc[[0]].assign(order_date=pd.Timestamp("2024-04-01"), total_amount=0.001)])
    con, _ = connect_features(later, customers)
    fetched = _orders_before(con, "TIMESTAMP '2024-03-01 00:00:00'", {})
    assert len(fetched["amount"]) == 3
    assert _fetched_in_cents(con, fetched["amount"]) is False


def test_a_missing_amount_is_skipped_by_the_sums_not_read_as_zero() -> None:
    """The lake refuses orders without an amount, but a frame may hold one: the SQL paths take
    such data, and their sums, minima and maxima skip the missing amount."""
    from churnops.features.duckdb_engine import connect_features, whole_cents

    customers = pd.DataFrame({"customer_id": [1], "created_at": pd.to_datetime(["2024-01-01"])})
    orders = pd.DataFrame(
        {
            "customer_id": [1, 1, 1],
            "order_date": pd.to_datetime(["2024-02-01", "2024-02-03", "2024-02-05"]),
            "total_amount": [5.0, None, 7.5],
        }
    )
    con, _ = connect_features(orders, customers)
    assert not whole_cents(con)
    con.close()
    for snapshots in ([pd.Timestamp("2024-03-01")], [pd.Timestamp("2024-02-04"), pd.Timestamp("2024-03-01")]):
        got = compute_features(orders, customers, snapshots, WINDOWS).iloc[-1]
        assert (got["min_order_value"], got["max_order_value"], got["monetary"]) == (5.0, 7.5, 12.5)
