"""Helpers shared by the benchmarks: timing, peak memory of a child process, reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def run_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a fresh Python; it prints one JSON line. Adds wall time and peak RSS."""
    peak = "\nimport resource as _r, json as _j\nprint(_j.dumps({'peak_kb': _r.getrusage(_r.RUSAGE_SELF).ru_maxrss}))\n"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code + peak],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-2])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"benchmark child printed no JSON result line:\n{proc.stdout[-3000:]}") from exc
    result["peak_rss_mb"] = json.loads(lines[-1])["peak_kb"] / 1024
    result["process_wall_s"] = wall
    return result


def report(name: str, figures: dict[str, Any]) -> None:
    """Print the figures and keep them in bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))
    print(f"== {name}")
    for key, value in figures.items():
        if isinstance(value, float):
            shown = f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"  # a ratio keeps 3 digits
            print(f"  {key}: {shown}")
        else:
            print(f"  {key}: {value}")


ORDERS = int(os.environ.get("BENCH_ORDERS", "10000000"))
CUSTOMERS = max(1000, int(ORDERS / 10.6))  # the simulator's ~10.6 orders a customer

_GENERATE = """
import json
from churnops.settings import SimulationSettings
from churnops.data.simulation import simulate_business
world = simulate_business(SimulationSettings(customers={customers}, seed=11))
cols = ["order_id", "customer_id", "order_date", "total_amount", "product_id", "category"]
world.orders[cols].astype({{"order_id": "string"}}).to_parquet("{folder}/orders.parquet", index=False, row_group_size=1_000_000)
world.customers[["customer_id", "created_at"]].to_parquet("{folder}/customers.parquet", index=False)
print(json.dumps({{"orders": len(world.orders), "customers": len(world.customers)}}))
"""


def shop_files(folder: str | Path, reuse: str | None = None) -> dict[str, Any]:
    """`orders.parquet` and `customers.parquet` of a shop of `CUSTOMERS` customers in `folder`:
    copied from `reuse` when it holds them (a directory a user names), else generated.

    Returns:
        The number of orders and customers.
    """
    import shutil

    import pyarrow.parquet as pq

    if reuse and Path(reuse, "orders.parquet").exists():
        for name in ("orders.parquet", "customers.parquet"):
            shutil.copy(Path(reuse, name), folder)
        return {name: pq.read_metadata(Path(folder, f"{name}.parquet")).num_rows for name in ("orders", "customers")}
    return run_child(_GENERATE.format(folder=folder, customers=CUSTOMERS))
