"""Ingest reads a batch in chunks: the result is the one whole-batch validation gives, and a file
that breaks part-way through is set aside whole."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnops.data.contracts import ORDERS
from churnops.data.mapping import map_columns, parse_batch
from churnops.data.validation import validate_batch
from churnops.pipelines.ingest import ingest, make_lake
from churnops.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ROWS = 4_500


def _messy_orders(seed: int = 3) -> pd.DataFrame:
    """Orders with repeated ids far apart (across chunk bounds), nulls, bad numbers and padding."""
    rng = np.random.default_rng(seed)
    ids = [f"o{i}" for i in range(ROWS)]
    for later, earlier in [(1_500, 20), (3_999, 1_001), (4_400, 4_399), (2_222, 2_222 - 1_000)]:
        ids[later] = ids[earlier]
    ids[10] = None  # type: ignore[call-overload]
    ids[3_000] = "  o77  "  # a repeat once trimmed
    amounts = rng.gamma(2.0, 30.0, ROWS).round(2).astype(object)
    amounts[[5, 1_200, 4_000]] = -1.0
    customer = rng.integers(1, 300, ROWS).astype(object)
    customer[[7, 2_500]] = None
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 60 * 24 * 3600, ROWS), unit="s")
    return pd.DataFrame(
        {
            "order_id": ids,
            "customer_id": [None if c is None else str(c) for c in customer],
            "order_date": days.strftime("%Y-%m-%dT%H:%M:%S"),
            "total_amount": [str(a) for a in amounts],
            "category": rng.choice(["books", "toys", " games "], ROWS),
        }
    )


def _settings(tmp_path: Path, chunk_rows: int, path: str, fmt: str) -> Settings:
    source = {"kind": "file", "name": "drop", "table": "orders", "path": path, "format": fmt}
    return load_settings(
        None,
        workspace=str(tmp_path / f"ws-{chunk_rows}-{fmt}"),
        sources=[source],
        ingest={"chunk_rows": chunk_rows, "max_bad_share": 0.5},
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_chunks_accept_and_quarantine_what_the_whole_batch_does(tmp_path: Path, fmt: str) -> None:
    """Read 1,000 rows at a time, a batch gives the same rows, quarantine and reasons as one
    whole-batch validation (repeats across chunks included), and the same file bytes as reading
    it in one chunk."""
    orders = _messy_orders()
    path = tmp_path / f"orders.{fmt}"
    if fmt == "parquet":
        orders.to_parquet(path, index=False, row_group_size=700)
    else:
        orders.to_csv(path, index=False)
    mapped = map_columns(orders, ORDERS, {}, "drop")
    whole = validate_batch(parse_batch(mapped, ORDERS, {}), mapped, orders, ORDERS, "drop")
    assert len(whole.quarantined) > 10  # the oracle sees the mess

    lakes = {}
    for chunk_rows in (1_000, 100_000):
        settings = _settings(tmp_path, chunk_rows, str(path), fmt)
        (report,) = ingest(settings, date(2024, 3, 1))
        assert report.rows_read == ROWS
        assert report.rows_accepted == len(whole.accepted)
        assert report.reasons == whole.reason_counts()
        lakes[chunk_rows] = make_lake(settings)

    chunked = lakes[1_000]
    accepted = chunked.read("orders")
    expected = whole.accepted.reset_index(drop=True)
    pd.testing.assert_frame_equal(accepted[list(expected.columns)].astype(str), expected.astype(str), check_dtype=False)
    quarantine = chunked.read("orders", quarantine=True).sort_values("row_number").reset_index(drop=True)
    assert quarantine["row_number"].tolist() == whole.quarantined["row_number"].tolist()
    assert quarantine["reason"].tolist() == whole.quarantined["reason"].tolist()
    assert [json.loads(r)["order_id"] for r in quarantine["source_row"]] == [
        json.loads(r)["order_id"] for r in whole.quarantined["source_row"]
    ]
    assert "duplicate order_id" in whole.reason_counts()
    # the same rows read in one chunk or five make a file with the same content
    one, many = (lake.read("orders").reset_index(drop=True) for lake in (lakes[100_000], lakes[1_000]))
    pd.testing.assert_frame_equal(one, many)


def test_a_rerun_with_chunks_publishes_nothing_new(tmp_path: Path) -> None:
    """Chunked writes are deterministic: a rerun of the date finds the same bytes and keeps them."""
    orders = _messy_orders()
    mapped = map_columns(orders, ORDERS, {}, "drop")
    bad = validate_batch(parse_batch(mapped, ORDERS, {}), mapped, orders, ORDERS, "drop").quarantined
    path = tmp_path / "orders.parquet"
    orders.drop(index=bad["row_number"]).to_parquet(path, index=False)  # a clean batch: nothing quarantined
    settings = _settings(tmp_path, 1_000, str(path), "parquet")
    ingest(settings, date(2024, 3, 1))
    before = make_lake(settings).manifest("orders", date(2024, 3, 1))
    (again,) = ingest(settings, date(2024, 3, 1))
    after = make_lake(settings).manifest("orders", date(2024, 3, 1))
    assert before is not None
    assert after is not None
    assert again.status == "unchanged"
    assert after.parts[0].data.sha256 == before.parts[0].data.sha256


def _break_last_column_of_the_last_row_group(path: Path) -> None:
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(meta.num_row_groups - 1).column(meta.num_columns - 1)
    first = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    size = column.total_compressed_size
    payload = bytearray(path.read_bytes())
    payload[first + size // 2 : first + size] = b"\xff" * (size - size // 2)  # pages, not the footer
    path.write_bytes(bytes(payload))


def test_a_file_that_breaks_part_way_is_set_aside_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose ids read well but whose last column is broken late in the file is set aside
    whole with its reason (none of its earlier chunks is published), and the other file is read."""
    drop = tmp_path / "drop"
    drop.mkdir()
    good = _messy_orders(seed=4).iloc[:1_500].assign(order_id=lambda f: [f"g{i}" for i in range(len(f))])
    good.to_parquet(drop / "a-good.parquet", index=False)
    broken = _messy_orders(seed=5).assign(order_id=lambda f: [f"b{i}" for i in range(len(f))])
    broken.to_parquet(drop / "b-broken.parquet", index=False, row_group_size=1_000, compression="zstd")
    _break_last_column_of_the_last_row_group(drop / "b-broken.parquet")
    pq.read_table(drop / "b-broken.parquet", columns=["order_id"])  # the id column still reads
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(drop / "b-broken.parquet")

    settings = _settings(tmp_path, 1_000, str(drop / "*.parquet"), "parquet")
    with caplog.at_level("WARNING", logger="churnops.pipelines.ingest"):
        (report,) = ingest(settings, date(2024, 3, 1))
    assert "b-broken.parquet" in caplog.text  # found on the second read, after chunks of it were validated
    assert report.files_quarantined == 1
    accepted = make_lake(settings).read("orders")
    assert len(accepted) == report.rows_accepted
    assert accepted["order_id"].str.startswith("g").all()
    manifest = make_lake(settings).manifest("orders", date(2024, 3, 1))
    assert manifest is not None
    assert manifest.parts[0].watermark["bad_files"] == ["b-broken.parquet"]
    assert any(reason.startswith("file: cannot be read as parquet") for reason in report.reasons)


def test_a_batch_certain_to_fail_stops_early_and_publishes_nothing(tmp_path: Path) -> None:
    """Once the quarantined rows of the first chunks pass the bad-share limit (half the batch:
    after three chunks of 1,000 here), reading stops, the error says its count is a lower bound,
    and the lake stays empty."""
    from churnops.pipelines.ingest import IngestError

    orders = _messy_orders().assign(total_amount="-1")  # every row is bad
    path = tmp_path / "orders.parquet"
    orders.to_parquet(path, index=False)
    settings = _settings(tmp_path, 1_000, str(path), "parquet")
    with pytest.raises(IngestError, match=r"at least 3000 of 4500 rows are invalid.*negative total_amount"):
        ingest(settings, date(2024, 3, 1))
    assert make_lake(settings).manifest("orders", date(2024, 3, 1)) is None


def test_small_files_are_joined_into_whole_chunks_in_file_order(tmp_path: Path) -> None:
    """Thirty files of 100 rows read 1,000 at a time make three chunks, labelled 0..2999 in file
    order (a chunk per file would validate hundreds of tiny frames for a year of daily files)."""
    from churnops.data.sources import ReadState, read_source
    from churnops.settings import FileSource

    drop = tmp_path / "drop"
    drop.mkdir()
    for day in range(30):
        part = _messy_orders().iloc[day * 100 : (day + 1) * 100]
        part.to_csv(drop / f"orders-{day:02d}.csv", index=False)
    source = FileSource(kind="file", name="drop", table="orders", path=str(drop / "*.csv"))
    batch = read_source(source, ReadState())
    keys = batch.scan(1_000, ["order_id"], lambda chunk: chunk["order_id"])
    assert [len(k) for k in keys] == [1_000, 1_000, 1_000]
    chunks = list(batch.chunks(1_000))
    assert [len(c) for c in chunks] == [1_000, 1_000, 1_000]
    assert np.concatenate([c.index.to_numpy() for c in chunks]).tolist() == list(range(3_000))
    expected = _messy_orders()["order_id"].iloc[:3_000].fillna("<null>").tolist()
    assert pd.concat(chunks)["order_id"].fillna("<null>").tolist() == expected


def test_joined_files_keep_every_column_and_value_when_their_types_or_columns_differ(tmp_path: Path) -> None:
    """Small files are joined in Arrow; a file whose column has another type (Parquet keeps
    types) or that lacks a column still gives every row, with nulls where a file had no value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from churnops.data.sources import ReadState, read_source
    from churnops.settings import FileSource

    drop = tmp_path / "drop"
    drop.mkdir()
    pq.write_table(pa.table({"order_id": ["a", "b"], "amount": [1, 2], "note": ["x", None]}), drop / "1.parquet")
    pq.write_table(pa.table({"order_id": ["c"], "amount": ["3.5"]}), drop / "2.parquet")  # text, no note
    pq.write_table(pa.table({"order_id": ["d"], "amount": [4]}), drop / "3.parquet")
    source = FileSource(kind="file", name="drop", table="orders", path=str(drop / "*.parquet"))
    (chunk,) = read_source(source, ReadState()).chunks(1_000)
    assert chunk["order_id"].tolist() == ["a", "b", "c", "d"]
    assert [str(v) for v in chunk["amount"]] == ["1", "2", "3.5", "4"]
    assert chunk["note"].isna().tolist() == [False, True, True, True]
    (same,) = read_source(source.model_copy(update={"path": str(drop / "[13].parquet")}), ReadState()).chunks(1_000)
    assert same["amount"].tolist() == [1, 2, 4]  # types that agree are joined in Arrow and kept
