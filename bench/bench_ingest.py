"""Ingest of orders from one Parquet file (default 10M orders), with peak memory at two sizes.

    python bench/bench_ingest.py                          # BENCH_ORDERS=10000000
    BENCH_ORDERS=1000000 python bench/bench_ingest.py     # a quick run
    BENCH_DAY_DATA=/some/dir python bench/bench_ingest.py # reuse orders.parquet / customers.parquet

Points two `file` sources at the shop's Parquet files and runs `churnops ingest` on an empty
workspace, each run in a process of its own so its peak memory is its own. It runs twice: on the
whole file and on its first quarter, so the figures show how memory follows the file's size (the
issue's limits: 10M orders in at most 10 s and 1.5 GB, memory independent of the file's size).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, run_child, shop_files

LIMIT_SECONDS = 10.0
LIMIT_PEAK_MB = 1536.0

INGEST = """
import json, time
from datetime import date
from churnops.settings import load_settings
from churnops.pipelines.ingest import ingest
sources = [
    {{"name": "orders", "kind": "file", "table": "orders", "path": {orders!r}}},
    {{"name": "customers", "kind": "file", "table": "customers", "path": {customers!r}}},
]
settings = load_settings(None, workspace={ws!r}, sources=sources)
started = time.perf_counter()
reports = {{r.source: r for r in ingest(settings, date(2030, 1, 1))}}
print(json.dumps({{"seconds": time.perf_counter() - started, "orders_rows": reports["orders"].rows_accepted,
                  "orders_seconds": reports["orders"].seconds, "customers_seconds": reports["customers"].seconds,
                  "quarantined": reports["orders"].rows_quarantined}}))
"""


def _first_rows(source: Path, target: Path, rows: int) -> None:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(source)
    with pq.ParquetWriter(target, file.schema_arrow) as writer:
        for batch in file.iter_batches(batch_size=min(rows, 1_000_000)):
            writer.write_batch(batch.slice(0, rows))
            rows -= min(rows, batch.num_rows)
            if rows == 0:
                break


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="churnops-bench-ingest-"))
    try:
        data = root / "data"
        data.mkdir()
        shop = shop_files(data, os.environ.get("BENCH_DAY_DATA"))
        quarter = data / "orders-quarter.parquet"
        _first_rows(data / "orders.parquet", quarter, shop["orders"] // 4)
        runs = {}
        for label, orders in (("whole", data / "orders.parquet"), ("quarter", quarter)):
            ws = root / f"ws-{label}"
            runs[label] = run_child(
                INGEST.format(orders=str(orders), customers=str(data / "customers.parquet"), ws=str(ws))
            )
            shutil.rmtree(ws, ignore_errors=True)
        whole, part = runs["whole"], runs["quarter"]
        report(
            "ingest_parquet",
            {
                "orders": whole["orders_rows"],
                "orders_seconds": whole["orders_seconds"],
                "orders_rows_per_s": whole["orders_rows"] / whole["orders_seconds"],
                "customers_seconds": whole["customers_seconds"],
                "peak_rss_mb": whole["peak_rss_mb"],
                "quarter_orders": part["orders_rows"],
                "quarter_orders_seconds": part["orders_seconds"],
                "quarter_peak_rss_mb": part["peak_rss_mb"],
                "peak_growth_per_million_rows_mb": (whole["peak_rss_mb"] - part["peak_rss_mb"])
                / max(1e-9, (whole["orders_rows"] - part["orders_rows"]) / 1e6),
                "limit_seconds": LIMIT_SECONDS,
                "limit_peak_rss_mb": LIMIT_PEAK_MB,
                "within_limits": whole["orders_seconds"] <= LIMIT_SECONDS and whole["peak_rss_mb"] <= LIMIT_PEAK_MB,
            },
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
