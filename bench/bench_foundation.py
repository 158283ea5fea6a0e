"""Simulation speed and ingestion throughput at scale (default 10M orders), with peak memory.

    BENCH_ORDERS=10000000 python bench/bench_foundation.py

The shop is sized to give about BENCH_ORDERS orders over two years (about 10.6 orders per
customer). Each phase runs in its own process so its peak memory is its own.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, run_child

ORDERS = int(os.environ.get("BENCH_ORDERS", "10000000"))
CUSTOMERS = max(1000, int(ORDERS / 10.6))

SETUP = """
import json, time
from datetime import date
from churnops.settings import load_settings
settings = load_settings(None, workspace={ws!r}, simulation={{"customers": {customers}, "seed": 11}})
"""

GENERATE = (
    SETUP
    + """
from churnops.data.simulation import simulate_business
t = time.perf_counter()
world = simulate_business(settings.simulation)
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "orders": len(world.orders), "customers": len(world.customers)}}))
"""
)

PUBLISH = (
    SETUP
    + """
from churnops.pipelines.simulate import simulate
t = time.perf_counter()
r = simulate(settings)
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "orders": r.orders_written,
                  "customers": r.customers_upserted, "files": r.order_files}}))
"""
)

INGEST = (
    SETUP
    + """
from churnops.pipelines.ingest import ingest
t = time.perf_counter()
reports = ingest(settings, date(2026, 1, 1))  # the day after the last published one: every order
total = time.perf_counter() - t
by = {{r.source: {{"rows": r.rows_read, "seconds": r.seconds}} for r in reports}}
print(json.dumps({{"seconds": total, "sources": by}}))
"""
)


def main() -> None:
    ws = tempfile.mkdtemp(prefix="churnops-bench-")
    try:
        gen = run_child(GENERATE.format(ws=ws, customers=CUSTOMERS))
        report(
            "simulate_generate",
            {
                "customers": gen["customers"],
                "orders": gen["orders"],
                "seconds": gen["seconds"],
                "orders_per_s": gen["orders"] / gen["seconds"],
                "peak_rss_mb": gen["peak_rss_mb"],
            },
        )
        pub = run_child(PUBLISH.format(ws=ws, customers=CUSTOMERS))
        report(
            "simulate_generate_and_publish",
            {
                "orders": pub["orders"],
                "daily_files": pub["files"],
                "customers_to_sqlite": pub["customers"],
                "seconds": pub["seconds"],
                "peak_rss_mb": pub["peak_rss_mb"],
            },
        )
        ing = run_child(INGEST.format(ws=ws, customers=CUSTOMERS))
        orders = ing["sources"]["order_files"]
        report(
            "ingest",
            {
                "orders_rows": orders["rows"],
                "orders_seconds": orders["seconds"],
                "orders_rows_per_s": orders["rows"] / orders["seconds"],
                "customers_rows_per_s": ing["sources"]["shop_customers"]["rows"]
                / ing["sources"]["shop_customers"]["seconds"],
                "all_sources_seconds": ing["seconds"],
                "peak_rss_mb": ing["peak_rss_mb"],
            },
        )
    finally:
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
