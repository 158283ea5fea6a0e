"""Files as users bring them: aligned columns, CRLF, odd suffixes, no order id, and bad files."""

from __future__ import annotations

import gzip
import json
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from churnops.pipelines.ingest import IngestError, default_ingest_date, ingest, make_lake
from churnops.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ALIGNED = "  customer        day      amount\r\n" + "".join(
    f"{c:>10} {d:>10} {a:>11.2f}\r\n"
    for c, d, a in [(1, "2024-01-03", 12.5), (2, "2024-01-03", 7.0), (1, "2024-01-09", 30.25), (3, "2024-01-10", 1.0)]
)


def _settings(tmp_path: Path, **source: Any) -> Settings:
    body = {
        "kind": "file",
        "name": "log",
        "table": "orders",
        "path": str(tmp_path / "drop" / "*"),
        "format": "csv",
        "csv_delimiter": "whitespace",
        "derive_order_id": True,
        "columns": {"customer_id": "customer", "order_date": "day", "total_amount": "amount"},
        "date_formats": {"order_date": "%Y-%m-%d"},
        **source,
    }
    return load_settings(None, workspace=str(tmp_path / "ws"), sources=[body], ingest={"max_volume_drop": 0.5})


def _drop(tmp_path: Path, name: str, content: bytes | str) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_aligned_crlf_files_with_any_suffix_and_no_order_id_ingest(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(tmp_path, "export.TXT", ALIGNED)
    (report,) = ingest(settings, date(2024, 1, 11))
    assert report.status == "published"
    assert report.rows_accepted == 4
    orders = make_lake(settings).read("orders").sort_values(["order_date", "customer_id"])
    assert orders["order_id"].tolist() == ["export.TXT#1", "export.TXT#2", "export.TXT#3", "export.TXT#4"]
    assert orders["total_amount"].tolist() == [12.5, 7.0, 30.25, 1.0]
    assert orders["order_date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-01-03",
        "2024-01-03",
        "2024-01-09",
        "2024-01-10",
    ]


def test_derived_ids_are_stable_so_reruns_duplicate_nothing_and_duplicates_are_caught(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(tmp_path, "a.txt", ALIGNED)
    ingest(settings, date(2024, 1, 11))
    first = make_lake(settings).read("orders")["order_id"].sort_values().tolist()
    ingest(settings, date(2024, 1, 11))  # a rerun of the date: same ids, replaced
    again = make_lake(settings).read("orders")["order_id"].sort_values().tolist()
    assert again == first
    # the same file re-read under another date in snapshot mode: every row is already in the lake
    snap = settings.model_copy(update={"sources": [settings.sources[0].model_copy(update={"mode": "snapshot"})]})
    limits = {"max_bad_share": 1.0, "max_volume_drop": None}
    snap = snap.model_copy(update={"ingest": snap.ingest.model_copy(update=limits)})
    (report,) = ingest(snap, date(2024, 1, 12))
    assert report.rows_quarantined == 4
    assert report.reasons == {"order_id already in the lake": 4}


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("header.txt", "customer day amount\r\n", "no rows (header only)"),
        ("binary.txt", b"\x00\x01\x02PK\x03\x04" * 50, "binary content"),
        ("broken.csv.gz", b"\x1f\x8b\x08\x00garbage-not-gzip", "cannot be read as csv"),
        ("wrong.txt", "client when total\r\n1 2024-01-03 4.5\r\n", "missing required column(s) customer_id"),
    ],
)
def test_one_bad_file_is_set_aside_whole_and_the_others_ingest(
    tmp_path: Path, name: str, content: bytes | str, reason: str
) -> None:
    settings = _settings(tmp_path)
    _drop(tmp_path, "good.txt", ALIGNED)
    _drop(tmp_path, name, content)
    (report,) = ingest(settings, date(2024, 1, 11))
    assert report.status == "published"
    assert report.rows_accepted == 4
    assert report.files_quarantined == 1
    lake = make_lake(settings)
    quarantine = lake.read("orders", quarantine=True)
    assert len(quarantine) == 1
    row = quarantine.iloc[0]
    assert json.loads(row["source_row"]) == {"file": name}
    assert row["row_number"] == -1
    assert reason in row["reason"]
    manifest = lake.manifest("orders", date(2024, 1, 11))
    assert manifest is not None
    assert manifest.parts[0].watermark["bad_files"] == [name]
    # nothing is read twice: the bad file is recorded as seen, the next day reads nothing new
    (later,) = ingest(settings, date(2024, 1, 12))
    assert later.status == "no new data"


def test_a_field_longer_than_the_reader_s_block_sets_the_file_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnops.data import sources

    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 1 << 20)  # the test writes 3 MB, not 48
    settings = _settings(
        tmp_path, csv_delimiter=",", columns={"customer_id": "c", "order_date": "d", "total_amount": "a"}
    )
    _drop(tmp_path, "good.csv", "c,d,a\r\n1,2024-01-03,4.5\r\n")
    _drop(tmp_path, "huge.csv", "c,d,a\r\n1,2024-01-03," + "9" * (3 << 20) + "\r\n2,2024-01-04,5\r\n")
    (report,) = ingest(settings, date(2024, 1, 11))
    assert report.rows_accepted == 1
    assert report.files_quarantined == 1
    reason = make_lake(settings).read("orders", quarantine=True)["reason"].iloc[0]
    assert "longer than the reader's block" in reason


def test_decimal_commas_with_semicolons_ingest_and_thousands_separators_are_quarantined(tmp_path: Path) -> None:
    """A `;`-separated export with decimal commas (dates day first): amounts read as numbers,
    and one holding a `.` is quarantined, not read a thousand times too small."""
    settings = _settings(
        tmp_path,
        csv_delimiter=";",
        csv_decimal=",",
        columns={"customer_id": "Kunde", "order_date": "Datum", "total_amount": "Betrag"},
        date_formats={"order_date": "%d.%m.%Y"},
    )
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_bad_share": 0.5})})
    _drop(tmp_path, "export.csv", "Kunde;Datum;Betrag\n1;03.01.2024;12,50\n2;03.01.2024;7\n3;09.01.2024;1.234,50\n")
    (report,) = ingest(settings, date(2024, 1, 11))
    assert (report.rows_accepted, report.rows_quarantined) == (2, 1)
    assert report.reasons == {"unparseable total_amount": 1}
    orders = make_lake(settings).read("orders").sort_values("customer_id")
    assert orders["total_amount"].tolist() == [12.5, 7.0]
    default = _settings(tmp_path / "point", csv_delimiter=";", columns=settings.sources[0].columns)
    assert default.sources[0].csv_decimal == "."  # the default reads 12,50 as text: unparseable


def test_gzip_files_are_read_by_their_suffix(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(tmp_path, "day.txt.gz", gzip.compress(ALIGNED.encode()))
    (report,) = ingest(settings, date(2024, 1, 11))
    assert report.rows_accepted == 4


def test_tsv_files_are_read_with_a_tab_by_their_suffix(tmp_path: Path) -> None:
    """No `format` and no `csv_delimiter`: `.tsv` (and `.tsv.gz`) files are CSV split at tabs,
    a `.csv` file beside them at commas; a delimiter that is set wins over the suffix."""
    columns = {"customer_id": "c", "order_date": "d", "total_amount": "a"}
    settings = _settings(tmp_path, format=None, csv_delimiter=None, columns=columns)
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_bad_share": 0.5})})
    assert settings.sources[0].csv_delimiter is None
    _drop(tmp_path, "a.tsv", "c\td\ta\n1\t2024-01-03\t4,5\n2\t2024-01-04\t5\n")  # a comma in a value
    _drop(tmp_path, "b.TSV.gz", gzip.compress(b"c\td\ta\n3\t2024-01-05\t6.25\n"))
    _drop(tmp_path, "c.csv", "c,d,a\n4,2024-01-06,7\n")
    (report,) = ingest(settings, date(2024, 1, 11))
    assert (report.rows_accepted, report.rows_quarantined, report.files_quarantined) == (3, 1, 0)
    assert report.reasons == {"unparseable total_amount": 1}  # 4,5 is one tab-separated value
    orders = make_lake(settings).read("orders").sort_values("customer_id")
    assert orders["customer_id"].tolist() == [2, 3, 4]
    assert orders["total_amount"].tolist() == [5.0, 6.25, 7.0]

    semicolons = _settings(tmp_path / "set", format=None, csv_delimiter=";", columns=columns)
    (tmp_path / "set").mkdir()
    _drop(tmp_path / "set", "a.tsv", "c;d;a\n5;2024-01-03;8\n")
    (report,) = ingest(semicolons, date(2024, 1, 11))
    assert report.rows_accepted == 1


def test_a_day_without_a_new_file_is_no_new_data_not_a_volume_drop(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(tmp_path, "day1.txt", ALIGNED)
    assert ingest(settings, date(2024, 1, 11))[0].status == "published"
    (quiet,) = ingest(settings, date(2024, 1, 12))
    assert quiet.status == "no new data"
    assert make_lake(settings).manifest("orders", date(2024, 1, 12)) is None


def test_status_shows_event_dates_beside_ingest_dates(tmp_path: Path) -> None:
    from churnops.pipelines.status import workspace_status

    settings = _settings(tmp_path)
    _drop(tmp_path, "day1.txt", ALIGNED)
    ingest(settings, date(2024, 2, 1))
    (orders,) = [t for t in workspace_status(settings).tables if t.table == "orders"]
    assert (orders.first_date, orders.last_date) == ("2024-02-01", "2024-02-01")
    assert (orders.first_event, orders.last_event) == ("2024-01-03", "2024-01-10")


def test_an_unchanged_snapshot_source_leaves_no_orphan_file(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        sources=[
            {
                "kind": "file",
                "name": "catalog",
                "table": "products",
                "path": str(tmp_path / "p.csv"),
                "mode": "snapshot",
            }
        ],
    )
    pd.DataFrame({"product_id": ["a", "b"], "category": ["x", "y"]}).to_csv(tmp_path / "p.csv", index=False)
    assert ingest(settings, date(2024, 1, 1))[0].status == "published"
    for day in (2, 3, 4):
        assert ingest(settings, date(2024, 1, day))[0].status == "unchanged"
    files = list((tmp_path / "ws" / "lake").rglob("*.parquet"))
    assert len(files) == 1


def _aligned(*rows: tuple[object, str, float]) -> str:
    return "customer day amount\n" + "".join(f"{c} {d} {a}\n" for c, d, a in rows)


def test_a_quarantined_row_names_its_file_and_its_row_in_it(tmp_path: Path) -> None:
    """Rows are counted from 1 after the header in each file, also in a file read a date at a time."""
    settings = _settings(tmp_path)
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_bad_share": 0.9})})
    _drop(tmp_path, "a.txt", _aligned((1, "2024-01-03", 5.0), (2, "2024-01-03", 6.0), (3, "2024-01-04", -1.0)))
    # b.txt: its second row is a later date's, so this date reads rows 1, 3 and 4 of it
    _drop(
        tmp_path,
        "b.txt",
        _aligned((1, "2024-01-05", 2.0), (2, "2024-01-20", 3.0), (3, "2024-01-06", -2.0), (4, "2024-01-07", 1.0)),
    )
    (report,) = ingest(settings, date(2024, 1, 11))
    assert report.rows_quarantined == 2
    lake = make_lake(settings)
    found = lake.read("orders", quarantine=True).sort_values(["file", "file_row"])
    assert list(zip(found["file"], found["file_row"], strict=True)) == [("a.txt", 3), ("b.txt", 3)]
    assert set(found["reason"]) == {"negative total_amount"}
    _drop(tmp_path, "c.txt", _aligned((5, "2024-01-15", "x"), (5, "2024-01-16", 1.0)))
    (later,) = ingest(settings, date(2024, 1, 21))
    assert later.rows_accepted == 2  # b.txt's second row and c.txt's second
    bad = lake.read("orders", quarantine=True)
    assert ("c.txt", 1) in set(zip(bad["file"], bad["file_row"], strict=True))


def test_a_rerun_that_quarantines_the_same_rows_changes_nothing(tmp_path: Path) -> None:
    """The partition, its quarantine and its manifest stay byte for byte, as DVC expects."""
    settings = _settings(tmp_path)
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_bad_share": 0.9})})
    _drop(tmp_path, "a.txt", _aligned((1, "2024-01-03", 5.0), (2, "2024-01-03", -6.0)))
    assert ingest(settings, date(2024, 1, 11))[0].status == "published"
    manifest = next((tmp_path / "ws").rglob("_manifest*.json"))
    before = manifest.read_bytes()
    files = sorted(p.name for p in (tmp_path / "ws").rglob("*.parquet"))
    (again,) = ingest(settings, date(2024, 1, 11))
    assert again.status == "unchanged"
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ws").rglob("*.parquet")) == files
    # a different bad row is a change: the date is published again
    _drop(tmp_path, "a.txt", _aligned((1, "2024-01-03", 5.0), (2, "2024-01-03", -7.0)))
    assert ingest(settings, date(2024, 1, 11))[0].status == "published"


def test_a_path_that_matches_no_file_is_named_and_the_default_date_says_why(tmp_path: Path) -> None:
    settings = _settings(tmp_path, path=str(tmp_path / "drop" / "ordrs" / "*.txt"))
    (report,) = ingest(settings, date(2024, 1, 11))
    assert report.status == "no new data"
    assert report.warning == f"{tmp_path / 'drop' / 'ordrs' / '*.txt'} matches no file"
    with pytest.raises(IngestError, match=r"source 'log': .*ordrs/\*\.txt matches no file"):
        default_ingest_date(settings)


def test_the_default_date_names_a_date_format_no_row_parses_with(tmp_path: Path) -> None:
    settings = _settings(tmp_path, date_formats={"order_date": "%d/%m/%Y"})
    _drop(tmp_path, "a.txt", ALIGNED)
    with pytest.raises(IngestError, match=r"no day value parses as a time \(date_formats.order_date '%d/%m/%Y'\)"):
        default_ingest_date(settings)


def test_text_customer_ids_are_refused_with_what_the_ids_must_be(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(tmp_path, "a.txt", _aligned(("C0001", "2024-01-03", 5.0), ("C0002", "2024-01-04", 6.0)))
    with pytest.raises(IngestError, match=r"unparseable customer_id: 2.*customer_id must be a whole number"):
        ingest(settings, date(2024, 1, 11))
    assert not list((tmp_path / "ws").rglob("part-*.parquet"))  # nothing published


def test_a_snapshot_date_rerun_replaces_its_own_part_even_when_the_source_is_back_to_the_previous_date(
    tmp_path: Path,
) -> None:
    """Rerunning a date compares with what that date holds, not only with the date before it."""
    folder = tmp_path / "cust"
    folder.mkdir()
    settings = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        ingest={"max_bad_share": 0.9},
        sources=[
            {
                "kind": "file",
                "name": "c",
                "table": "customers",
                "path": str(folder / "*.csv"),
                "mode": "snapshot",
                "columns": {"customer_id": "id", "created_at": "created"},
            }
        ],
    )
    (folder / "c.csv").write_text("id,created\n1,2023-01-01\n2,notadate\n")
    assert ingest(settings, date(2024, 1, 10))[0].status == "published"
    (folder / "c.csv").write_text("id,created\n1,2023-01-01\n2,stillbad\n")
    assert ingest(settings, date(2024, 1, 12))[0].status == "published"
    (folder / "c.csv").write_text("id,created\n1,2023-01-01\n2,notadate\n")
    assert ingest(settings, date(2024, 1, 12))[0].status == "published"
    held = make_lake(settings).read("customers", quarantine=True)
    assert not held["source_row"].str.contains("stillbad").any()
    assert ingest(settings, date(2024, 1, 13))[0].status == "unchanged"  # the next date: the same as 01-12
