"""Ingestion end to end on the simulated shop: SQLite customers, CSV products, daily order files."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from churnops.data.lake import RawLake
from churnops.data.tables import read_customers
from churnops.pipelines.ingest import IngestError, ingest, make_lake
from churnops.pipelines.simulate import SimulationPaths, load_world, simulate
from churnops.settings import Settings, load_settings

DAY = date(2024, 5, 1)  # the run after the last published day: its data interval ends then


def _order_files(settings: Settings) -> pd.DataFrame:
    folder = settings.workspace / "sources" / "orders"
    return pd.concat([pd.read_csv(p, dtype=str) for p in sorted(folder.glob("orders-*.csv"))], ignore_index=True)


def _lake_files(lake: RawLake) -> set[str]:
    return {str(p) for p in Path(lake.root).rglob("*") if p.is_file()}


def test_first_ingest_publishes_every_source_and_counts_add_up(simulated: Settings) -> None:
    reports = ingest(simulated, DAY)
    by_source = {r.source: r for r in reports}
    assert [r.status for r in reports] == ["published"] * 3
    lake = make_lake(simulated)
    source_orders = _order_files(simulated)
    assert by_source["order_files"].rows_read == len(source_orders)
    for report in reports:
        assert report.rows_read == report.rows_accepted + report.rows_quarantined
    orders = lake.read("orders")
    assert len(orders) == len(source_orders)
    assert sorted(orders["order_id"]) == sorted(source_orders["order_ref"])
    assert orders["customer_id"].dtype == "Int64"
    assert orders["order_date"].dtype == "datetime64[us]"
    world = load_world(simulated.simulation, SimulationPaths.from_settings(simulated).cache_dir)
    assert len(lake.read("customers")) == (world.customers["created_at"] < pd.Timestamp("2024-05-01")).sum()
    assert len(lake.read("products")) == len(world.products)


def test_manifest_records_rows_schema_hash_and_watermark(simulated: Settings) -> None:
    ingest(simulated, DAY)
    lake = make_lake(simulated)
    manifest = lake.manifest("orders", DAY)
    assert manifest is not None
    stored = json.loads(Path(lake.partition_dir("orders", DAY), "_manifest.json").read_text())
    assert stored["rows"] == manifest.rows > 0
    assert len(stored["sha256"]) == 64
    part = manifest.parts[0]
    assert ["order_id", "string"] in part.data.schema
    on_disk = sorted(p.name for p in (simulated.workspace / "sources" / "orders").glob("orders-*.csv"))
    assert sorted(part.watermark["files"]) == on_disk  # named relative to the source's folder
    assert 100 < len(on_disk) <= 121
    customers = lake.manifest("customers", DAY)
    assert customers is not None
    assert customers.parts[0].watermark["column"] == "updated_at"


def test_rerun_of_the_same_date_replaces_and_never_duplicates(simulated: Settings) -> None:
    """A rerun of the same day leaves the same rows, the same hash and no stray files."""
    ingest(simulated, DAY)
    lake = make_lake(simulated)
    first = {t: lake.manifest(t, DAY) for t in ("orders", "customers")}
    ingest(simulated, DAY)
    for table, manifest in first.items():
        again = lake.manifest(table, DAY)
        assert again is not None
        assert manifest is not None
        assert again.rows == manifest.rows
        assert again.sha256 == manifest.sha256
    assert len(lake.read("orders")) == len(_order_files(simulated))
    parquet = [f for f in _lake_files(lake) if f.endswith(".parquet")]
    assert len(parquet) == 3  # one data file per table; the rerun's predecessors are gone


def test_day_by_day_reads_only_what_is_new_and_reruns_keep_their_range(settings: Settings) -> None:
    simulate(settings, date(2024, 3, 1))
    ingest(settings, date(2024, 3, 2))
    simulate(settings, date(2024, 3, 2))
    reports = {r.source: r for r in ingest(settings, date(2024, 3, 3))}
    simulate(settings, date(2024, 3, 3))
    ingest(settings, date(2024, 3, 4))
    lake = make_lake(settings)
    day2 = lake.manifest("orders", date(2024, 3, 3))
    assert day2 is not None
    assert day2.parts[0].watermark["files"][0].endswith("orders-2024-03-02.csv")
    assert len(day2.parts[0].watermark["files"]) == 1
    folder = settings.workspace / "sources" / "orders"
    assert reports["order_files"].rows_read == len(pd.read_csv(folder / "orders-2024-03-02.csv"))
    before = {t: [m.sha256 for m in lake.manifests(t)] for t in ("orders", "customers")}
    ingest(settings, date(2024, 3, 3))  # a rerun of a middle day
    after = {t: [m.sha256 for m in lake.manifests(t)] for t in ("orders", "customers")}
    assert after == before
    orders = lake.read("orders")
    assert orders["order_id"].is_unique
    assert len(orders) == len(_order_files(settings))
    customers = lake.read("customers")
    assert len(read_customers(lake)) == customers["customer_id"].nunique()


def _append_order_file(settings: Settings, name: str, rows: list[dict[str, str]]) -> None:
    folder = settings.workspace / "sources" / "orders"
    pd.DataFrame(rows).to_csv(folder / name, index=False)


def _good_rows(settings: Settings, n: int) -> list[dict[str, str]]:
    return [
        {
            "order_ref": f"X{i}",
            "customer": "1",
            "ordered_at": "2024-04-30T12:00:00",
            "amount": "10.0",
            "sku": "P000001",
            "category": "cat_00",
        }
        for i in range(n)
    ]


def test_bad_rows_go_to_quarantine_with_reasons(simulated: Settings) -> None:
    bad = [
        {
            "order_ref": "B1",
            "customer": "",
            "ordered_at": "2024-04-30T12:00:00",
            "amount": "1",
            "sku": "",
            "category": "",
        },
        {
            "order_ref": "B2",
            "customer": "1",
            "ordered_at": "30 April",
            "amount": "1",
            "sku": "",
            "category": "",
        },
        {
            "order_ref": "B3",
            "customer": "1",
            "ordered_at": "2024-04-30T12:00:00",
            "amount": "-5",
            "sku": "",
            "category": "",
        },
        {
            "order_ref": "B4",
            "customer": "999999",
            "ordered_at": "2024-04-30T12:00:00",
            "amount": "1",
            "sku": "",
            "category": "",
        },
        {
            "order_ref": "O1",
            "customer": "1",
            "ordered_at": "2024-04-30T12:00:00",
            "amount": "1",
            "sku": "",
            "category": "",
        },
    ]
    _append_order_file(simulated, "orders-zz-extra.csv", bad)
    reports = {r.source: r for r in ingest(simulated, DAY)}
    orders = reports["order_files"]
    assert orders.rows_quarantined == 5
    assert orders.rows_read == orders.rows_accepted + 5
    assert orders.reasons == {
        "null customer_id": 1,
        "unparseable order_date": 1,
        "negative total_amount": 1,
        "unknown customer_id": 1,
        "duplicate order_id": 1,
    }
    quarantine = make_lake(simulated).read("orders", quarantine=True)
    assert set(quarantine["source"]) == {"order_files"}
    b2 = quarantine[quarantine["reason"] == "unparseable order_date"].iloc[0]
    assert json.loads(b2["source_row"])["ordered_at"] == "30 April"


def test_too_many_bad_rows_reject_the_batch_and_publish_nothing(simulated: Settings) -> None:
    ingest(simulated, DAY)
    lake = make_lake(simulated)
    before = lake.manifest("orders", DAY)
    rows = [{**r, "amount": "-1"} for r in _good_rows(simulated, 100)]
    _append_order_file(simulated, "orders-zz-bad.csv", rows)
    with pytest.raises(
        IngestError, match=r"order_files.*orders.*invalid.*negative total_amount: 100.*nothing published"
    ):
        ingest(simulated, DAY)
    after = lake.manifest("orders", DAY)
    assert after is not None
    assert before is not None
    assert after.sha256 == before.sha256


def test_missing_required_column_rejects_with_the_column_name(simulated: Settings) -> None:
    broken = simulated.model_copy(deep=True)
    src = broken.source("order_files")
    src.columns = {**src.columns, "total_amount": "price_paid"}
    with pytest.raises(IngestError, match=r"total_amount \(looked for 'price_paid'\).*nothing published"):
        ingest(broken, DAY)
    assert make_lake(broken).manifest("orders", DAY) is None


def test_volume_drop_rejects_and_a_null_limit_allows(settings: Settings) -> None:
    simulate(settings, date(2024, 3, 1))
    ingest(settings, date(2024, 3, 2))
    simulate(settings, date(2024, 3, 2))
    folder = settings.workspace / "sources" / "orders"
    day2 = pd.read_csv(folder / "orders-2024-03-02.csv", dtype=str)
    day2.head(1).to_csv(folder / "orders-2024-03-02.csv", index=False)
    with pytest.raises(IngestError, match=r"volume fell \d+% .*rows per day of data"):
        ingest(settings, date(2024, 3, 3))
    assert make_lake(settings).manifest("orders", date(2024, 3, 3)) is None
    relaxed = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_volume_drop": None})})
    assert {r.source: r.rows_read for r in ingest(relaxed, date(2024, 3, 3))}["order_files"] == 1


def test_unchanged_snapshot_is_not_published_again(settings: Settings) -> None:
    simulate(settings, date(2024, 3, 1))
    ingest(settings, date(2024, 3, 2))
    simulate(settings, date(2024, 3, 2))
    reports = {r.source: r for r in ingest(settings, date(2024, 3, 3))}
    assert reports["catalog"].status == "unchanged"
    assert len(make_lake(settings).read("products")) == 200


def test_without_a_customers_source_customers_come_from_orders(tmp_path: Path) -> None:
    """Only an orders feed: orders are accepted and customers are derived (first order)."""
    base = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        simulation={"customers": 200, "start": "2024-01-01", "end": "2024-02-29", "products": 100},
    )
    simulate(base, date(2024, 2, 29))
    only_orders = base.model_copy(update={"sources": [s for s in base.sources if s.table == "orders"]})
    report = ingest(only_orders, date(2024, 3, 1))[0]
    assert report.rows_quarantined == 0
    lake = make_lake(only_orders)
    customers = read_customers(lake)
    orders = lake.read("orders")
    assert len(customers) == orders["customer_id"].nunique()
    first = orders.groupby("customer_id")["order_date"].min()
    derived = customers.set_index("customer_id")["created_at"].sort_index()
    assert derived.index.tolist() == first.index.tolist()
    assert (derived.to_numpy() == first.to_numpy()).all()
