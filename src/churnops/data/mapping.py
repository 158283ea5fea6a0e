"""Map a source's own columns onto the contract and parse its values into contract types.

Parsing never drops a row: a value that cannot be parsed becomes null, and validation then
quarantines the row with the reason (see `validation.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from churnops.data.contracts import ColumnType, TableContract

# Text is held in Arrow: trimming and comparing run in Arrow's kernels, not one Python string at a
# time, and a million-row chunk of short ids takes tens of megabytes rather than hundreds.
TEXT = pd.StringDtype("pyarrow")


class MissingColumnError(ValueError):
    """A required contract column is absent from a source batch."""


def map_columns(raw: pd.DataFrame, contract: TableContract, columns: Mapping[str, str], source: str) -> pd.DataFrame:
    """Select and rename a source batch's columns to the contract's names.

    Args:
        raw: The batch as read, in the source's own column names.
        contract: The raw table it feeds.
        columns: Contract column -> source column; unmapped contract columns are looked up
            under their own name.
        source: Source name, for error messages.

    Returns:
        A frame with the contract columns the source has (optional ones may be missing),
        still holding the source's raw values, and the same index as `raw`.

    Raises:
        MissingColumnError: A required column is absent.
    """
    unknown = sorted(set(columns) - set(contract.columns))
    if unknown:
        raise MissingColumnError(
            f"source {source!r}: mapping names columns not in the {contract.name} contract: "
            f"{', '.join(unknown)} (contract: {', '.join(contract.columns)})"
        )
    picked: dict[str, pd.Series] = {}
    missing: list[str] = []
    for name in contract.columns:
        source_col = columns.get(name, name)
        if source_col in raw.columns:
            picked[name] = raw[source_col]
        elif name in contract.required:
            missing.append(f"{name} (looked for {source_col!r})")
    if missing:
        raise MissingColumnError(
            f"source {source!r}: required column(s) missing for table {contract.name}: "
            f"{', '.join(missing)}; the batch has: {', '.join(map(str, raw.columns)) or 'none'}"
        )
    return pd.DataFrame(picked, index=raw.index)


def parse_timestamps(values: pd.Series, fmt: str | None = None) -> pd.Series:
    """Parse to naive UTC timestamps; unparseable values become NaT.

    Args:
        values: Strings, numbers or timestamps.
        fmt: A strptime format, `epoch_s`, `epoch_ms`, or None for ISO 8601.

    Returns:
        A `datetime64[us]` series, timezone-aware inputs converted to UTC.
    """
    if fmt in ("epoch_s", "epoch_ms"):
        numbers = pd.to_numeric(values, errors="coerce")
        parsed = pd.to_datetime(numbers, unit="s" if fmt == "epoch_s" else "ms", errors="coerce")
    elif pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype(TEXT).str.strip()
        parsed = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=True)
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[us]")


def parse_integers(values: pd.Series) -> pd.Series:
    """Parse whole numbers to nullable Int64; fractions and text become null."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype("Int64")
    numbers = pd.to_numeric(values, errors="coerce")
    whole = numbers.where(np.isfinite(numbers) & (numbers == np.round(numbers)))
    return whole.astype("Int64")


def parse_floats(values: pd.Series, decimal: str = ".") -> pd.Series:
    """Parse to float64; text becomes NaN. With `decimal` ",", text numbers take a decimal
    comma, and one holding a "." (a thousands separator: 1.234,50 or 1.234) is NaN rather than
    a number a thousand times too small."""
    if decimal == "," and not pd.api.types.is_numeric_dtype(values):
        text = values.astype(TEXT).str.strip()
        values = text.str.replace(",", ".", regex=False).mask(text.str.contains(".", regex=False))
    return pd.to_numeric(values, errors="coerce").astype("float64")


def parse_strings(values: pd.Series) -> pd.Series:
    """Strip whitespace; empty strings become null. Integral floats lose their '.0'."""
    if pd.api.types.is_float_dtype(values):
        as_int = values.where(values == np.round(values)).astype("Int64")
        values = as_int.astype(TEXT).where(as_int.notna(), values.astype(TEXT))
    text = values.astype(TEXT).str.strip()
    return text.mask(text == "")


def parse_batch(
    mapped: pd.DataFrame, contract: TableContract, date_formats: Mapping[str, str], decimal: str = "."
) -> pd.DataFrame:
    """Parse every mapped column into its contract type.

    Args:
        mapped: Output of `map_columns`.
        contract: The raw table's contract.
        date_formats: Contract column -> format for `parse_timestamps`.
        decimal: The decimal mark of text numbers ("." or ",").

    Returns:
        A new frame with contract dtypes; unparseable values are null.
    """
    parsed = {
        name: parse_column(mapped[name], kind, date_formats.get(name), decimal)
        for name, kind in contract.columns.items()
        if name in mapped.columns
    }
    return pd.DataFrame(parsed, index=mapped.index)


def parse_column(values: pd.Series, kind: ColumnType, fmt: str | None = None, decimal: str = ".") -> pd.Series:
    """Parse one column into its contract type (`fmt` is a timestamp column's format,
    `decimal` a float column's decimal mark)."""
    if kind == "timestamp":
        return parse_timestamps(values, fmt)
    if kind == "int":
        return parse_integers(values)
    if kind == "float":
        return parse_floats(values, decimal)
    return parse_strings(values)
