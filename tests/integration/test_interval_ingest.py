"""A date ingests the orders of its data interval: its partitions do not depend on when, or in
which order, the dates ran."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnops.data.lake import RawLake
from churnops.data.sources import EventWindow, ReadState, within_interval
from churnops.pipelines.ingest import ingest, make_lake
from churnops.settings import Settings, load_settings

pytestmark = pytest.mark.integration

DAYS = [date(2024, 3, d) for d in (2, 3, 4, 5)]  # each reads the orders before its midnight
PER_DAY, DAILY = 600, 400  # a history file of four days' orders, a daily file of one day's
ORDERS = 4 * PER_DAY + DAILY - 1  # all but the row without a time, quarantined
COLUMNS = {"order_id": "order_ref", "customer_id": "customer", "order_date": "ordered_at", "total_amount": "amount"}


def _orders(first: int, days: int, per_day: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-03-01")
    seconds = np.sort(rng.integers(0, days * 86_400, days * per_day))
    return pd.DataFrame(
        {
            "order_ref": [f"o{first + i}" for i in range(len(seconds))],
            "customer": rng.integers(1, 50, len(seconds)).astype(str),
            "ordered_at": (start + pd.to_timedelta(seconds, unit="s")).strftime("%Y-%m-%dT%H:%M:%S"),
            "amount": rng.gamma(2.0, 20.0, len(seconds)).round(2).astype(str),
        }
    )


def _shop(tmp_path: Path, name: str, fmt: str, chunk_rows: int | None = None) -> Settings:
    """One file of four days of orders (2024-03-01 to 03-04) and a daily file of 03-03, in `fmt`."""
    folder = tmp_path / f"drop-{fmt}"
    if not folder.exists():
        folder.mkdir()
        whole = _orders(0, 4, PER_DAY, seed=1)
        daily = _orders(10_000, 1, DAILY, seed=2)
        daily["ordered_at"] = daily["ordered_at"].str.replace("2024-03-01", "2024-03-03")
        daily.loc[3, "ordered_at"] = "sometime"  # quarantined by the date that reads the file first
        for frame, stem in ((whole, "a-history"), (daily, "b-day")):
            if fmt == "csv":
                frame.to_csv(folder / f"{stem}.csv", index=False)
            else:
                typed = frame.assign(ordered_at=pd.to_datetime(frame["ordered_at"], errors="coerce"))
                typed.to_parquet(folder / f"{stem}.parquet", index=False)
    source = {
        "kind": "file",
        "name": "drop",
        "table": "orders",
        "path": str(folder / f"*.{fmt}"),
        "columns": COLUMNS,
    }
    ingest_limits: dict[str, Any] = {"max_volume_drop": None, "max_bad_share": 0.5}
    if chunk_rows:
        ingest_limits["chunk_rows"] = chunk_rows
    return load_settings(None, workspace=str(tmp_path / name), sources=[source], ingest=ingest_limits)


def _ingested(settings: Settings, days: list[date]) -> RawLake:
    """The lake after ingesting `days` in that order; every order is in it once."""
    for day in days:
        ingest(settings, day)
    lake = make_lake(settings)
    orders = lake.read("orders")
    assert orders["order_id"].is_unique
    assert len(orders) == ORDERS
    return lake


def _partitions(settings: Settings) -> dict[str, tuple[str, int]]:
    lake = make_lake(settings)
    return {m.ingest_date: (m.sha256, m.rows) for m in lake.manifests("orders")}


@pytest.mark.parametrize(("fmt", "chunk_rows"), [("csv", None), ("parquet", None), ("parquet", 1000)])
def test_each_date_holds_the_orders_of_its_interval(tmp_path: Path, fmt: str, chunk_rows: int | None) -> None:
    """Dates in order: each partition holds the orders before its midnight that no earlier date
    read, a file spanning days is read a day at a time (in one piece or many), and a row without
    a time is quarantined once, by the first date that reads its file."""
    lake = _ingested(_shop(tmp_path, "in-order", fmt, chunk_rows), DAYS)
    for manifest in lake.manifests("orders"):
        end = pd.Timestamp(manifest.ingest_date)
        dates = pd.concat([pd.read_parquet(lake.locate(p.data.path), columns=["order_date"]) for p in manifest.parts])[
            "order_date"
        ]
        assert dates.max() < end
        assert dates.min() >= end - pd.Timedelta(days=1)
    quarantine = lake.read("orders", quarantine=True)
    assert len(quarantine) == 1
    assert "order_date" in quarantine["reason"].iloc[0]
    mark = lake.manifest("orders", DAYS[1]).parts[0].watermark  # type: ignore[union-attr]
    assert mark["partial"] == {f"a-history.{fmt}": "2024-03-03T00:00:00"}
    assert mark["resumed"] == {f"a-history.{fmt}": "2024-03-02T00:00:00"}
    assert mark["waiting"] == 1  # the daily file of 03-03 waits for the next date
    assert f"b-day.{fmt}" in lake.manifest("orders", DAYS[2]).parts[0].watermark["files"]  # type: ignore[union-attr]


def test_a_middle_date_run_again_reads_its_own_range(tmp_path: Path) -> None:
    """A rerun of a date between two others reads exactly its rows again: from where the date
    before stopped to where the date after began."""
    settings = _shop(tmp_path, "ws", "csv")
    for day in DAYS:
        ingest(settings, day)
    before = _partitions(settings)
    ingest(settings, DAYS[1])
    assert _partitions(settings) == before


def test_dates_out_of_order_with_the_later_set_aside_equal_in_order(tmp_path: Path) -> None:
    """The newest date first, then, with its partition set aside as a run of an older date does
    (`pipelines.replay`), the older dates and the newest again: the partitions equal those of
    the dates in order, and the part set aside is kept with its file."""
    in_order = _shop(tmp_path, "in-order", "csv")
    for day in DAYS:
        ingest(in_order, day)
    shuffled = _shop(tmp_path, "shuffled", "csv")
    ingest(shuffled, DAYS[-1])
    lake = make_lake(shuffled)
    moved = lake.set_aside("orders", DAYS[-1], ["drop"], "an earlier date ran after it")
    assert len(moved) == 1
    assert _partitions(shuffled)[DAYS[-1].isoformat()][1] == 0  # no reader sees its rows
    for day in DAYS:
        ingest(shuffled, day)
    assert _partitions(shuffled) == _partitions(in_order)
    kept = lake.manifest("orders", DAYS[-1])
    assert kept is not None
    assert [a.part.data.sha256 for a in kept.set_aside] == [moved[0].data.sha256]
    assert Path(lake.locate(moved[0].data.path)).exists()


def test_without_the_set_aside_an_older_date_takes_nothing_twice(tmp_path: Path) -> None:
    """The newest date first and an older one after it, nothing set aside: the older date reads
    no row the newer one holds (no order twice in the lake)."""
    for order in ([DAYS[-1], DAYS[0]], [DAYS[0], DAYS[-1], DAYS[1]]):
        # the second: the newest date read the history file on from where the oldest stopped,
        # so the middle date has nothing of it left
        lake = _ingested(_shop(tmp_path, "-".join(d.isoformat() for d in order), "csv"), order)
        assert len(lake.read("orders", quarantine=True)) == 1  # the row without a time, nothing twice


def _window(until: str) -> ReadState:
    return ReadState(low=None, events=EventWindow("at", None, datetime.fromisoformat(until)))


@pytest.mark.parametrize(
    ("rows", "kept", "high", "held"),
    [
        # the watermark is the event time: the later rows wait
        ([(1, "2024-03-01T10:00"), (2, "2024-03-01T23:59"), (3, "2024-03-02T00:00")], [1, 2], 2, 1),
        # an id watermark with a later order before an earlier one: the read stops at the first
        # later order, and the earlier one after it waits with it (the next date reads both)
        ([(1, "2024-03-01T10:00"), (2, "2024-03-02T08:00"), (3, "2024-03-01T11:00")], [1], 1, 2),
        # a time that cannot be parsed stays (validation quarantines it)
        ([(1, "when?"), (2, "2024-03-01T11:00")], [1, 2], 2, 0),
        # everything is later: nothing is read and the watermark stays where it was
        ([(5, "2024-03-03T00:00")], [], None, 1),
        # a later row without a watermark cannot stop the read: it waits alone
        ([(1, "2024-03-01T10:00"), (None, "2024-03-02T08:00"), (3, "2024-03-01T11:00")], [1, 3], 3, 1),
    ],
)
def test_a_read_stops_before_the_first_order_of_a_later_interval(
    rows: list[tuple[int, str]], kept: list[int], high: Any, held: int
) -> None:
    """SQL and HTTP reads: rows are taken in watermark order up to the first row of a later
    interval, so the high mark never passes a row the next date must read."""
    frame = pd.DataFrame(rows, columns=["id", "at"])
    out, mark = within_interval(frame, {"high": 99}, "id", _window("2024-03-02"))
    assert list(out["id"]) == kept
    assert mark["high"] == (high if held else 99)
    assert mark.get("held_back", 0) == held


def test_a_snapshot_read_leaves_out_the_later_rows() -> None:
    """Without a watermark (a snapshot of the table), the rows of later intervals are left out."""
    frame = pd.DataFrame({"id": [1, 2, 3], "at": ["2024-03-01", "2024-03-02", "2024-03-01T05:00"]})
    out, mark = within_interval(frame, {}, None, _window("2024-03-02"))
    assert list(out["id"]) == [1, 3]
    assert mark == {"held_back": 1}


def test_reads_before_the_interval_bound_change_nothing() -> None:
    """A read whose rows are all before the interval's end is returned as it came."""
    frame = pd.DataFrame({"id": [1, 2], "at": ["2024-03-01", "2024-03-01T05:00"]})
    out, mark = within_interval(frame, {"high": 2}, "id", _window(str(datetime(2024, 3, 1) + timedelta(days=1))))
    assert out is frame
    assert mark == {"high": 2}


def test_a_part_set_aside_and_ingested_again_alike_is_not_kept_twice(tmp_path: Path) -> None:
    """A date whose part was set aside ingests the same rows again: the partition holds them once
    and the part set aside goes, its file with it; a part that differs would stay."""
    settings = _shop(tmp_path, "ws", "csv")
    ingest(settings, DAYS[0])
    lake = make_lake(settings)
    before = lake.manifest("orders", DAYS[0])
    assert before is not None
    (moved,) = lake.set_aside("orders", DAYS[0], ["drop"], "an earlier date ran after it")
    assert lake.set_aside("orders", DAYS[0], ["drop"], "again") == []  # nothing left to set aside
    ingest(settings, DAYS[0])
    after = lake.manifest("orders", DAYS[0])
    assert after is not None
    assert after.sha256 == before.sha256
    assert after.set_aside == []
    assert not Path(lake.locate(moved.data.path)).exists()


def test_the_default_date_counts_orders_waiting_past_the_last_partition(tmp_path: Path) -> None:
    """Without `--date`, the date is the day after the newest order, also when that order
    waits in a file a date already read part of."""
    from churnops.pipelines.ingest import default_ingest_date

    settings = _shop(tmp_path, "ws", "csv")
    ingest(settings, DAYS[0])
    assert default_ingest_date(settings) == date(2024, 3, 5)  # the history file's orders reach 03-04


def test_a_file_that_breaks_part_way_is_set_aside_once(tmp_path: Path) -> None:
    """A Parquet file whose second row group is broken (all its orders of a later date): the
    first date sets it aside whole, with one quarantine row, and no later date reads it again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = _shop(tmp_path, "ws", "parquet", chunk_rows=1000)
    broken = _orders(50_000, 1, 5000, seed=3)
    broken["ordered_at"] = pd.to_datetime(broken["ordered_at"]) + pd.Timedelta(days=8)
    path = Path(settings.source("drop").path).parent / "c-broken.parquet"  # type: ignore[union-attr]
    pq.write_table(pa.Table.from_pandas(broken, preserve_index=False), path, row_group_size=2500, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    payload = bytearray(path.read_bytes())
    payload[offset : offset + 200] = b"\xff" * 200
    path.write_bytes(bytes(payload))
    reports = [ingest(settings, day)[0] for day in DAYS]
    assert [r.files_quarantined for r in reports] == [1, 0, 0, 0]
    # what waits is the readable files' later rows, none of the broken file's
    assert reports[0].rows_later == 4 * PER_DAY + DAILY - reports[0].rows_read
    quarantine = make_lake(settings).read("orders", quarantine=True)
    assert (quarantine["row_number"] == -1).sum() == 1  # the file, once
    assert len(quarantine) == 2  # and the row without a time


def test_an_older_sql_date_after_a_later_one_that_read_from_the_start_takes_nothing(tmp_path: Path) -> None:
    """An incremental SQL source read first for a later date (from its start), then for an
    older one: the older date has nothing of its own left and reads nothing (no order twice,
    nothing quarantined)."""
    import sqlite3

    database = tmp_path / "shop.db"
    frame = _orders(0, 4, 50, seed=4)
    frame.insert(0, "id", range(len(frame)))
    with sqlite3.connect(database) as connection:
        frame.to_sql("orders", connection, index=False)
    source = {
        "kind": "sql",
        "name": "db",
        "table": "orders",
        "url": f"sqlite:///{database}",
        "source_table": "orders",
        "watermark": "id",
        "columns": COLUMNS,
    }
    settings = load_settings(None, workspace=str(tmp_path / "ws"), sources=[source], ingest={"max_volume_drop": None})
    ingest(settings, DAYS[-1])
    (older,) = ingest(settings, DAYS[0])
    assert older.rows_read == 0
    assert older.rows_quarantined == 0
    lake = make_lake(settings)
    assert lake.read("orders")["order_id"].is_unique
    assert len(lake.read("orders")) == len(frame)


def test_the_ingest_command_says_how_many_rows_wait(tmp_path: Path) -> None:
    """`churnops ingest` names the rows it left for later dates."""
    import yaml
    from typer.testing import CliRunner

    from churnops.cli import app

    settings = _shop(tmp_path, "ws", "csv")
    config = tmp_path / "churnops.yaml"
    source = settings.source("drop")
    assert source is not None
    config.write_text(
        yaml.safe_dump(
            {
                "workspace": str(settings.workspace),
                "sources": [source.model_dump(mode="json", exclude_none=True)],
                "ingest": {"max_volume_drop": None, "max_bad_share": 0.5},
            }
        )
    )
    result = CliRunner().invoke(app, ["ingest", "-c", str(config), "--date", DAYS[0].isoformat()])
    assert result.exit_code == 0, result.output
    waiting = 4 * PER_DAY + DAILY - make_lake(settings).manifest("orders", DAYS[0]).parts[0].rows_read  # type: ignore[union-attr]
    assert f"{waiting:,} row(s) of drop are from {DAYS[0]} on: a later date reads them" in result.output
