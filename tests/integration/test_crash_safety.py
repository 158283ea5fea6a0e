"""A SIGKILL at any moment of ingestion leaves the lake intact; the rerun completes it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from churnops.data.lake import RawLake
from churnops.pipelines.ingest import make_lake
from churnops.pipelines.simulate import simulate
from churnops.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = "2025-01-01"  # after the last published day


def _config(tmp_path: Path) -> tuple[Path, Settings]:
    cfg = tmp_path / "churnops.yaml"
    cfg.write_text(
        f"workspace: {tmp_path / 'ws'}\n"
        "simulation:\n  customers: 15000\n  start: 2024-01-01\n  end: 2024-12-31\n  products: 500\n"
    )
    return cfg, load_settings(cfg)


def _start_ingest(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "churnops", "ingest", "--config", str(cfg), "--date", DAY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _assert_intact(lake: RawLake) -> None:
    """Every manifest lists only files that exist and read back with the rows it claims."""
    for table in lake.tables():
        for manifest in lake.manifests(table):
            for part in manifest.parts:
                assert os.path.exists(lake.locate(part.data.path))
                assert len(pd.read_parquet(lake.locate(part.data.path))) == part.data.rows
                if part.quarantine:
                    assert os.path.exists(lake.locate(part.quarantine.path))
            assert len(lake.read(table)) == manifest.rows


def _wait_for_file(folder: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.exists() and any(folder.rglob("*")):
            return
        time.sleep(0.001)


def test_sigkill_mid_write_leaves_the_lake_intact_and_the_rerun_completes_it(tmp_path: Path) -> None:
    cfg, settings = _config(tmp_path)
    simulate(settings, date(2024, 12, 31))
    lake = make_lake(settings)
    orders_dir = Path(lake.partition_dir("orders", date.fromisoformat(DAY)))
    killed_mid_orders = False
    # The moment the first orders file appears the process is frozen (SIGSTOP) and, if its
    # manifest is not written yet, killed there: mid-write. Scheduling may let it finish
    # first, so that point is tried until it lands (a finished run is removed again).
    for _ in range(8):
        proc = _start_ingest(cfg)
        _wait_for_file(orders_dir, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            killed_mid_orders = lake.manifest("orders", date.fromisoformat(DAY)) is None
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_intact(lake)
        if killed_mid_orders:
            break
        shutil.rmtree(Path(lake.root) / "raw")
    # Then fixed delays that land in reading, validating and writing of the different sources.
    for delay in (1.5, 2.5, 3.5, 5.0):
        proc = _start_ingest(cfg)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_intact(lake)
    assert killed_mid_orders, "the kill never landed between the orders file and its manifest"

    done = _start_ingest(cfg)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err.decode()
    _assert_intact(lake)
    folder = settings.workspace / "sources" / "orders"
    source_rows = sum(len(pd.read_csv(p)) for p in folder.glob("orders-*.csv"))
    orders = lake.read("orders")
    assert len(orders) == source_rows
    assert orders["order_id"].is_unique
    stray = [p for p in Path(lake.root).rglob("*") if p.is_file() and (".tmp-" in p.name)]
    assert stray == []
    referenced = {lake.locate(p.data.path) for m in lake.manifests("orders") for p in m.parts}
    assert {str(p) for p in orders_dir.glob("*.parquet")} == referenced
