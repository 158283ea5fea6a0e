"""The whole day: `churnops run` for one logical date over file sources, each step measured.

    python bench/bench_day.py                              # BENCH_ORDERS=10000000 (1M customers)
    BENCH_ORDERS=500000 python bench/bench_day.py          # a quick run
    BENCH_DAY_DATA=/some/dir python bench/bench_day.py     # reuse orders.parquet / customers.parquet

Generates a shop (orders and customers as Parquet files, which the project never saw), points
two `file` sources at them and runs the daily steps for the day after the last order, on an
empty workspace: ingest, features, validate, due, train, gate, register, the road to production
(aliases only: `deploy.servers` off, serving excluded) and monitoring. Each step runs in a
process of its own (`run_steps(only=[step], resume_from=step)`, the kept results of the steps
before it standing in), so each gets its own time and peak memory. The issue's limit for the
day is 5 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, run_child, shop_files

LIMIT_SECONDS = 300.0

STEP = """
import json
from datetime import date
from churnops.settings import load_settings
from churnops.pipelines.steps import run_steps
from pathlib import Path
settings = load_settings(Path("{config}"))
seconds = {{}}
run_steps(settings, date.fromisoformat("{day}"), only=["{step}"], resume_from={resume},
          on_step=lambda step, result, took: seconds.update({{"seconds": took, "skipped": result is None}}))
print(json.dumps(seconds))
"""


def _day_after_last_order(orders: Path) -> str:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    last = pc.max(pq.read_table(orders, columns=["order_date"])["order_date"]).as_py()
    return (last.date() + timedelta(days=1)).isoformat()


def main() -> None:
    from churnops.pipelines.steps import steps

    root = Path(tempfile.mkdtemp(prefix="churnops-bench-day-"))
    try:
        data_dir = root / "data"
        data_dir.mkdir()
        data = shop_files(data_dir, os.environ.get("BENCH_DAY_DATA"))
        day = _day_after_last_order(data_dir / "orders.parquet")
        print(f"data: {data['orders']:,} orders, {data['customers']:,} customers; the day {day}", flush=True)
        config = root / "churnops.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "workspace": str(root / "ws"),
                    "deploy": {"servers": False},
                    "sources": [
                        {"name": "orders", "kind": "file", "table": "orders", "path": str(data_dir / "orders.parquet")},
                        {
                            "name": "customers",
                            "kind": "file",
                            "table": "customers",
                            "path": str(data_dir / "customers.parquet"),
                        },
                    ],
                }
            )
        )
        figures: dict[str, object] = {"orders": data["orders"], "customers": data["customers"], "day": day}
        total = walls = 0.0
        for index, step in enumerate(steps()):
            resume = "None" if index == 0 else json.dumps(step.name)
            done = run_child(STEP.format(config=config, day=day, step=step.name, resume=resume))
            state = "skipped" if done["skipped"] else f"{done['seconds']:.1f} s"
            print(f"  {step.name}: {state}, peak {done['peak_rss_mb']:,.0f} MB", flush=True)
            figures[f"{step.name}_seconds"] = done["seconds"]
            figures[f"{step.name}_peak_rss_mb"] = done["peak_rss_mb"]
            total += done["seconds"]
            walls += done["process_wall_s"]
        figures["day_seconds"] = total
        figures["day_seconds_with_process_starts"] = walls
        figures["limit_seconds"] = LIMIT_SECONDS
        figures["within_limit"] = total <= LIMIT_SECONDS
        report("whole_day", figures)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
