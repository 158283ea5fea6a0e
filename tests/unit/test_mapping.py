"""Mapping a source's columns onto the contract and parsing its values."""

from __future__ import annotations

import pandas as pd
import pytest

from churnops.data.contracts import CUSTOMERS, ORDERS
from churnops.data.mapping import (
    MissingColumnError,
    map_columns,
    parse_batch,
    parse_integers,
    parse_strings,
    parse_timestamps,
)


def test_map_columns_renames_to_contract_names_and_keeps_index() -> None:
    """A source's own names are mapped; unmapped contract columns are found by their own name."""
    raw = pd.DataFrame(
        {
            "ref": ["a", "b"],
            "cust": ["1", "2"],
            "when": ["2024-01-01", "2024-01-02"],
            "total_amount": ["3", "4"],
        },
        index=[10, 11],
    )
    mapped = map_columns(raw, ORDERS, {"order_id": "ref", "customer_id": "cust", "order_date": "when"}, "s")
    assert list(mapped.columns) == ["order_id", "customer_id", "order_date", "total_amount"]
    assert list(mapped.index) == [10, 11]
    assert mapped["order_id"].tolist() == ["a", "b"]


def test_missing_required_column_names_the_column_and_source() -> None:
    """A batch without a required column is refused with a message that says which."""
    raw = pd.DataFrame({"order_id": ["a"], "customer_id": ["1"], "order_date": ["2024-01-01"]})
    with pytest.raises(MissingColumnError, match=r"shop.*total_amount.*looked for 'total_amount'"):
        map_columns(raw, ORDERS, {}, "shop")


def test_missing_optional_columns_are_simply_absent() -> None:
    """product_id and category are optional: a source without them still maps."""
    raw = pd.DataFrame({"order_id": ["a"], "customer_id": ["1"], "order_date": ["x"], "total_amount": ["1"]})
    assert "category" not in map_columns(raw, ORDERS, {}, "s").columns


def test_mapping_to_unknown_contract_column_is_refused() -> None:
    raw = pd.DataFrame({"customer_id": ["1"], "created_at": ["2024-01-01"]})
    with pytest.raises(MissingColumnError, match="not in the customers contract: email"):
        map_columns(raw, CUSTOMERS, {"email": "mail"}, "crm")


@pytest.mark.parametrize(
    ("values", "fmt", "expected"),
    [
        (
            ["2024-03-01T10:00:00", "2024-03-02 11:30:00"],
            None,
            ["2024-03-01 10:00:00", "2024-03-02 11:30:00"],
        ),
        (["2024-03-01T10:00:00+02:00"], None, ["2024-03-01 08:00:00"]),
        (["01/03/2024 10:00"], "%d/%m/%Y %H:%M", ["2024-03-01 10:00:00"]),
        (["1709287200"], "epoch_s", ["2024-03-01 10:00:00"]),
        ([1709287200000], "epoch_ms", ["2024-03-01 10:00:00"]),
    ],
)
def test_parse_timestamps_formats(values: list[object], fmt: str | None, expected: list[str]) -> None:
    """ISO 8601 (any offset, converted to UTC), strptime formats and epochs all parse."""
    parsed = parse_timestamps(pd.Series(values), fmt)
    assert parsed.tolist() == [pd.Timestamp(e) for e in expected]


def test_unparseable_timestamps_become_null_not_errors() -> None:
    parsed = parse_timestamps(pd.Series(["2024-01-01", "not a date", None, "2024-13-45"]))
    assert parsed.isna().tolist() == [False, True, True, True]


def test_parse_integers_rejects_fractions_and_text() -> None:
    parsed = parse_integers(pd.Series(["1", "2.0", "2.5", "x", None]))
    assert parsed.tolist()[:2] == [1, 2]
    assert parsed.isna().tolist() == [False, False, True, True, True]


def test_parse_strings_blank_is_null_and_integral_float_loses_decimal() -> None:
    assert parse_strings(pd.Series([" a ", "", None])).isna().tolist() == [False, True, True]
    assert parse_strings(pd.Series([12.0, 3.5])).tolist() == ["12", "3.5"]


def test_parse_batch_does_not_mutate_input() -> None:
    """Steps never change their inputs."""
    mapped = pd.DataFrame(
        {"order_id": ["1"], "customer_id": ["7"], "order_date": ["2024-01-01"], "total_amount": ["9.5"]}
    )
    before = mapped.copy()
    parsed = parse_batch(mapped, ORDERS, {})
    pd.testing.assert_frame_equal(mapped, before)
    assert parsed["customer_id"].dtype == "Int64"
    assert parsed["total_amount"].tolist() == [9.5]


def test_parse_floats_with_a_decimal_comma_refuses_thousands_separators() -> None:
    from churnops.data.mapping import parse_floats

    values = pd.Series(["12,50", " 7 ", "1.234,50", "1.234", "abc", None], dtype="object")
    got = parse_floats(values, decimal=",")
    assert got.iloc[:2].tolist() == [12.5, 7.0]
    assert got.iloc[2:].isna().all()
    assert parse_floats(pd.Series(["12.5", "12,5"]), decimal=".").iloc[0] == 12.5
    assert pd.isna(parse_floats(pd.Series(["12.5", "12,5"]), decimal=".").iloc[1])
    assert parse_floats(pd.Series([1.5, 2.0]), decimal=",").tolist() == [1.5, 2.0]  # numbers stay numbers
