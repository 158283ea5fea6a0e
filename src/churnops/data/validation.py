"""Row-level validation of raw batches with pandera; bad rows go to quarantine with a reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pandera.pandas as pa

from churnops.data.contracts import TableContract
from churnops.data.mapping import TEXT

QUARANTINE_COLUMNS = ["source", "row_number", "file", "file_row", "reason", "source_row"]


class NamedReason(Protocol):
    """A file set aside whole: its name and why."""

    @property
    def name(self) -> str:
        """The file, relative to its source."""

    @property
    def reason(self) -> str:
        """Why it was set aside."""


class BatchRejectedError(RuntimeError):
    """A batch broke a batch-level rule; nothing of it is published."""


@dataclass(frozen=True)
class ValidationResult:
    """A batch split into accepted and quarantined rows: rows_read = accepted + quarantined."""

    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    rows_read: int

    @property
    def bad_share(self) -> float:
        """Share of the batch that went to quarantine."""
        return len(self.quarantined) / self.rows_read if self.rows_read else 0.0

    def reason_counts(self) -> dict[str, int]:
        """How many quarantined rows carry each reason (a row may carry several)."""
        return reason_counts(self.quarantined)


def reason_counts(quarantined: pd.DataFrame) -> dict[str, int]:
    """How many quarantine rows carry each reason (a row may carry several)."""
    if quarantined.empty:
        return {}
    reasons = quarantined["reason"].str.split("; ").explode()
    return {str(k): int(v) for k, v in reasons.value_counts().items()}


@dataclass(frozen=True)
class KeyFlags:
    """Per row of a whole batch, by position: its key repeats an earlier row's, or is in the lake.

    Computed once over the batch's keys, so a batch validated in chunks quarantines the same
    rows as one validated whole.
    """

    repeated: np.ndarray
    in_lake: np.ndarray

    def at(self, flags: np.ndarray, rows: pd.Index) -> pd.Series:
        """`flags` for the rows whose labels (batch positions) are `rows`, as a Series on them."""
        return pd.Series(flags[np.asarray(rows, dtype="int64")], index=rows)


KEY_HASH = "hash(k)"  # DuckDB SQL: the hash repeated keys are grouped by (tests make it collide)


def flag_keys(keys: pd.Series, existing_keys: Any = None) -> KeyFlags:
    """Flag the repeated keys of a batch (all but the first of each) and those already in the lake.

    DuckDB does both over Arrow columns: ten million string keys take about a second and a few
    hundred megabytes, where a pandas hash of Python strings takes many seconds and gigabytes.
    Repeats are exact: rows whose hashes collide are told apart by their keys.
    Nulls are never flagged (a null key is its own reason).

    Args:
        keys: The batch's parsed key column, in batch order.
        existing_keys: Keys already in the lake (an Arrow or NumPy array), or None.

    Returns:
        The flags, one per row of `keys`.
    """
    import pyarrow as arrow

    from churnops import duck

    rows = len(keys)
    repeated = np.zeros(rows, dtype=bool)
    in_lake = np.zeros(rows, dtype=bool)
    if rows == 0:
        return KeyFlags(repeated, in_lake)
    values = arrow.array(keys.array if isinstance(keys.dtype, pd.StringDtype) else keys, from_pandas=True)
    batch = arrow.table({"k": values, "i": arrow.array(np.arange(rows, dtype="int64"))})
    with duck.cursor() as con:
        con.register("batch", batch)
        # Partitioned by the keys' 64-bit hashes, not the keys: for 10M string keys 0.9 s and a
        # peak 190 MB lower than by the strings. The rows of a hash seen more than once are
        # then compared as keys, in pandas (none or a few, unless the batch repeats itself).
        later = con.sql(
            f"SELECT i FROM (SELECT {KEY_HASH} AS h, i FROM batch WHERE k IS NOT NULL) "
            "QUALIFY row_number() OVER (PARTITION BY h ORDER BY i) > 1"
        ).fetchnumpy()["i"]
        if len(later):
            con.register("later", arrow.table({"i": arrow.array(np.asarray(later, dtype="int64"))}))
            shared = con.sql(
                f"SELECT i, k FROM batch WHERE k IS NOT NULL AND {KEY_HASH} IN "
                f"(SELECT {KEY_HASH} FROM batch SEMI JOIN later USING (i)) ORDER BY i"
            ).df()
            found = shared["i"].to_numpy()[shared["k"].duplicated(keep="first").to_numpy()]
            repeated[np.asarray(found, dtype="int64")] = True
        if existing_keys is not None and len(existing_keys):
            lake = existing_keys
            if not isinstance(lake, arrow.ChunkedArray | arrow.Array):
                lake = arrow.array(lake)
            con.register("lake", arrow.table({"k": lake.cast(values.type) if lake.type != values.type else lake}))
            found = con.sql("SELECT i FROM batch SEMI JOIN lake USING (k)").fetchnumpy()["i"]
            in_lake[np.asarray(found, dtype="int64")] = True
    return KeyFlags(repeated, in_lake)


def id_index(ids: np.ndarray | pd.Index) -> pd.Index:
    """Distinct ids as an index, the form membership checks take: its hash table is built on the
    first lookup and kept, so chunk after chunk reuses it."""
    if isinstance(ids, pd.Index):
        return ids
    return pd.Index(np.unique(np.asarray(ids, dtype="int64")))


def _members(values: pd.Series, known: pd.Index) -> pd.Series:
    """Which values are in `known`; nulls count as members (their own check reports them)."""
    ids = values.to_numpy(dtype="int64", na_value=0)
    return pd.Series((known.get_indexer(pd.Index(ids)) >= 0) | values.isna().to_numpy(), index=values.index)


def raw_schema(
    contract: TableContract,
    known_customers: np.ndarray | pd.Index | None = None,
    flags: KeyFlags | None = None,
) -> pa.DataFrameSchema:
    """The pandera schema a parsed raw batch must satisfy, row by row.

    Args:
        contract: The raw table.
        known_customers: customer_ids an order may reference (pass them through `id_index`
            once when validating many chunks); None skips that check (no customers source is
            configured, so customers are derived from orders).
        flags: The batch's repeated keys and keys already in the lake (`flag_keys`); the rows
            being validated are labelled by their position in the batch.

    Returns:
        A schema whose check names are the quarantine reasons.
    """
    key = contract.key
    checks: dict[str, list[pa.Check]] = {name: [] for name in contract.columns}
    if flags is not None:
        keys = flags
        checks[key].append(
            pa.Check(lambda s: ~keys.at(keys.repeated, s.index), name=f"duplicate {key}", ignore_na=True)
        )
        if keys.in_lake.any():
            checks[key].append(
                pa.Check(lambda s: ~keys.at(keys.in_lake, s.index), name=f"{key} already in the lake", ignore_na=True)
            )
    if contract.name == "orders":
        checks["total_amount"].append(pa.Check(lambda s: s >= 0, name="negative total_amount", ignore_na=True))
        if known_customers is not None:
            known = id_index(known_customers)
            checks["customer_id"].append(
                pa.Check(lambda s: _members(s, known), name="unknown customer_id", ignore_na=True)
            )
    dtypes = {"int": "Int64", "string": TEXT, "timestamp": "datetime64[us]", "float": "float64"}
    columns = {
        name: pa.Column(
            dtypes[kind],
            checks=checks[name],
            nullable=name not in contract.required,
            required=name in contract.required,
        )
        for name, kind in contract.columns.items()
    }
    return pa.DataFrameSchema(columns, name=f"raw_{contract.name}", strict=False, coerce=False)


def validate_batch(
    parsed: pd.DataFrame,
    mapped: pd.DataFrame,
    raw: pd.DataFrame,
    contract: TableContract,
    source: str,
    known_customers: np.ndarray | pd.Index | None = None,
    existing_keys: Any = None,
    flags: KeyFlags | None = None,
) -> ValidationResult:
    """Split a parsed batch into accepted rows and quarantined rows with reasons.

    Rows are labelled by their position in the batch (a RangeIndex from 0, or from the chunk's
    first position when a batch is validated in chunks).

    Args:
        parsed: The batch in contract names and types (`mapping.parse_batch`).
        mapped: The batch in contract names with its raw values (`mapping.map_columns`), to
            tell a null value from an unparseable one.
        raw: The same batch as read, for the quarantine's copy of the source row.
        contract: The raw table.
        source: Source name, stored with each quarantined row.
        known_customers: See `raw_schema`.
        existing_keys: Keys already in the lake, when `flags` is not given.
        flags: The whole batch's key flags (`flag_keys`); computed from `parsed` when not given.

    Returns:
        The split; `accepted` keeps the contract dtypes.
    """
    if flags is None:
        flags = flag_keys(parsed[contract.key], existing_keys)
    schema = raw_schema(contract, known_customers, flags)
    reasons = pd.Series(dtype="object")
    try:
        schema.validate(parsed, lazy=True)
    except pa.errors.SchemaErrors as exc:
        reasons = _row_reasons(exc.failure_cases, parsed, mapped)
    bad_index = reasons.index
    accepted = parsed.drop(index=bad_index)
    quarantined = _quarantine_frame(raw, bad_index, reasons, source)
    result = ValidationResult(accepted=accepted, quarantined=quarantined, rows_read=len(parsed))
    if len(result.accepted) + len(result.quarantined) != result.rows_read:
        raise AssertionError("rows read != rows accepted + rows quarantined")
    return result


def _row_reasons(failures: pd.DataFrame, parsed: pd.DataFrame, mapped: pd.DataFrame) -> pd.Series:
    whole_column = failures[failures["index"].isna()]
    if not whole_column.empty:
        first = whole_column.iloc[0]
        raise BatchRejectedError(
            f"column {first['column']!r} failed {first['check']!r} as a whole "
            f"(got {first['failure_case']!r}); the parser should have produced the contract type"
        )
    rows = failures.assign(index=failures["index"].astype(parsed.index.dtype))
    labels: list[str] = []
    for column, check, index in zip(rows["column"], rows["check"], rows["index"], strict=True):
        if check == "not_nullable":
            labels.append(_null_reason(str(column), mapped.at[index, column]))
        else:
            labels.append(str(check))
    rows = rows.assign(reason=labels)
    return rows.groupby("index", sort=True)["reason"].agg(lambda r: "; ".join(dict.fromkeys(r)))


def _null_reason(column: str, raw_value: object) -> str:
    if raw_value is None or (isinstance(raw_value, float) and np.isnan(raw_value)):
        return f"null {column}"
    if raw_value is pd.NA or raw_value is pd.NaT or str(raw_value).strip() == "":
        return f"null {column}"
    return f"unparseable {column}"


def empty_quarantine() -> pd.DataFrame:
    """A quarantine frame with no rows, in the quarantine's columns and types."""
    return pd.DataFrame(
        {
            "source": pd.Series(dtype="string"),
            "row_number": pd.Series(dtype="int64"),
            "file": pd.Series(dtype="string"),
            "file_row": pd.Series(dtype="Int64"),
            "reason": pd.Series(dtype="string"),
            "source_row": pd.Series(dtype="string"),
        }
    )


def _quarantine_frame(raw: pd.DataFrame, bad_index: pd.Index, reasons: pd.Series, source: str) -> pd.DataFrame:
    if len(bad_index) == 0:
        return empty_quarantine()
    as_json = raw.loc[bad_index].to_json(orient="records", lines=True, date_format="iso", default_handler=str)
    return pd.DataFrame(
        {
            "source": pd.Series([source] * len(bad_index), dtype="string"),
            "row_number": np.asarray(bad_index, dtype="int64"),
            "file": pd.Series([None] * len(bad_index), dtype="string"),
            "file_row": pd.Series([None] * len(bad_index), dtype="Int64"),
            "reason": reasons.to_numpy().astype(str),
            "source_row": as_json.splitlines(),
        }
    ).astype({"reason": "string", "source_row": "string"})


def bad_file_rows(source: str, bad_files: Sequence[NamedReason]) -> pd.DataFrame:
    """Quarantine rows for files set aside whole: row_number -1, the file's name as the file
    and as the source row."""
    return pd.DataFrame(
        {
            "source": pd.Series([source] * len(bad_files), dtype="string"),
            "row_number": pd.Series([-1] * len(bad_files), dtype="int64"),
            "file": pd.Series([f.name for f in bad_files], dtype="string"),
            "file_row": pd.Series([None] * len(bad_files), dtype="Int64"),
            "reason": pd.Series([f"file set aside: {f.reason}" for f in bad_files], dtype="string"),
            "source_row": pd.Series([json.dumps({"file": f.name}) for f in bad_files], dtype="string"),
        }
    )
