"""Row-level validation: every bad row is quarantined with its reason, nothing is lost."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churnops.data.contracts import CUSTOMERS, ORDERS, PRODUCTS
from churnops.data.mapping import map_columns, parse_batch
from churnops.data.validation import validate_batch


def _orders(rows: list[dict[str, object]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    raw = pd.DataFrame(rows)
    mapped = map_columns(raw, ORDERS, {}, "test")
    return parse_batch(mapped, ORDERS, {}), mapped, raw


GOOD = {"order_id": "o1", "customer_id": "1", "order_date": "2024-01-01T10:00:00", "total_amount": "10.5"}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"order_id": None}, "null order_id"),
        ({"customer_id": None}, "null customer_id"),
        ({"customer_id": "abc"}, "unparseable customer_id"),
        ({"order_date": "yesterday"}, "unparseable order_date"),
        ({"order_date": ""}, "null order_date"),
        ({"total_amount": "-3"}, "negative total_amount"),
        ({"total_amount": "ten"}, "unparseable total_amount"),
        ({"customer_id": "99"}, "unknown customer_id"),
        ({"order_id": "o1"}, "duplicate order_id"),
        ({"order_id": "old"}, "order_id already in the lake"),
    ],
)
def test_each_bad_row_is_quarantined_with_its_reason(bad: dict[str, object], reason: str) -> None:
    """One bad row among good ones lands in quarantine with the reason and the source row."""
    rows = [GOOD, {**GOOD, "order_id": "o2"}, {**GOOD, "order_id": "o3", **bad}]
    parsed, mapped, raw = _orders(rows)
    result = validate_batch(
        parsed,
        mapped,
        raw,
        ORDERS,
        "test",
        known_customers=np.array([1, 2]),
        existing_keys=np.array(["old"], dtype=object),
    )
    assert result.rows_read == 3
    assert len(result.accepted) + len(result.quarantined) == 3
    assert len(result.quarantined) == 1
    row = result.quarantined.iloc[0]
    assert reason in row["reason"]
    assert row["row_number"] == 2
    assert json.loads(row["source_row"])["order_id"] == rows[2]["order_id"]
    assert result.reason_counts() == {reason: 1}


def test_a_row_with_several_problems_lists_them_all() -> None:
    parsed, mapped, raw = _orders([{**GOOD, "customer_id": None, "total_amount": "-1"}])
    result = validate_batch(parsed, mapped, raw, ORDERS, "t")
    assert set(result.quarantined.iloc[0]["reason"].split("; ")) == {
        "null customer_id",
        "negative total_amount",
    }


def test_clean_batch_passes_whole() -> None:
    parsed, mapped, raw = _orders([GOOD, {**GOOD, "order_id": "o2"}])
    result = validate_batch(parsed, mapped, raw, ORDERS, "t", known_customers=np.array([1]))
    assert len(result.accepted) == 2
    assert result.quarantined.empty
    assert result.bad_share == 0.0


def test_without_known_customers_unknown_ids_pass() -> None:
    """With no customers source, customers are derived from orders, so none is 'unknown'."""
    parsed, mapped, raw = _orders([{**GOOD, "customer_id": "12345"}])
    assert len(validate_batch(parsed, mapped, raw, ORDERS, "t", known_customers=None).accepted) == 1


def test_duplicate_keeps_the_first_occurrence() -> None:
    parsed, mapped, raw = _orders([GOOD, {**GOOD, "total_amount": "99"}])
    result = validate_batch(parsed, mapped, raw, ORDERS, "t")
    assert result.accepted["total_amount"].tolist() == [10.5]


@pytest.mark.parametrize(
    ("contract", "rows", "expected_bad"),
    [
        (
            CUSTOMERS,
            [
                {"customer_id": "1", "created_at": "2024-01-01"},
                {"customer_id": "1", "created_at": "2024-01-02"},
            ],
            1,
        ),
        (CUSTOMERS, [{"customer_id": "1", "created_at": None}], 1),
        (PRODUCTS, [{"product_id": "p", "category": None}], 1),
        (PRODUCTS, [{"product_id": "p", "category": "c"}], 0),
    ],
)
def test_dimension_tables(contract, rows, expected_bad) -> None:  # type: ignore[no-untyped-def]
    raw = pd.DataFrame(rows)
    mapped = map_columns(raw, contract, {}, "t")
    result = validate_batch(parse_batch(mapped, contract, {}), mapped, raw, contract, "t")
    assert len(result.quarantined) == expected_bad


@pytest.mark.parametrize("key_hash", ["hash(k)", "hash(k) % 3"])
def test_repeated_keys_are_exact_even_when_their_hashes_collide(key_hash: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeats are grouped by hash, then told apart by key: with a hash of three values nearly
    every key collides, and the flags are still pandas' `duplicated` (first kept, nulls never)."""
    from churnops.data import validation

    monkeypatch.setattr(validation, "KEY_HASH", key_hash)
    rng = np.random.default_rng(4)
    keys = pd.Series([f"o{k}" for k in rng.integers(0, 400, 1000)], dtype=pd.StringDtype("pyarrow"))
    keys[rng.choice(1000, 50, replace=False)] = None
    flags = validation.flag_keys(keys, np.array(["o1", "o2", "o3"], dtype=object))
    expected = keys.duplicated(keep="first").to_numpy() & keys.notna().to_numpy()
    assert expected.sum() > 400
    np.testing.assert_array_equal(flags.repeated, expected)
    np.testing.assert_array_equal(flags.in_lake, keys.isin(["o1", "o2", "o3"]).to_numpy())
