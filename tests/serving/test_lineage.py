"""`churnops lineage`: from a served prediction back to the model, its run, the features and the raw data."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from churnops.cli import app
from tests.serving.conftest import Shop, running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_prediction_traces_back_to_the_snapshot_the_run_and_every_raw_partition(shop: Shop, tmp_path: Path) -> None:
    """The chain of a logged prediction names its version and run, the snapshot holding exactly
    the logged feature values, the hash of the snapshots the run trained on, and every raw
    partition with the hash the lake holds today."""
    from churnops.pipelines.features import feature_table, on_grid
    from churnops.pipelines.ingest import make_lake
    from churnops.pipelines.promotion import model_registry

    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    with running_server(shop.config, CHURNOPS_SERVING__PREDICTION_LOG_URL=log_url) as (url, process):
        answer = httpx.post(f"{url}/predict", json={"customer_ids": [1, 2, 3]}).json()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    item = answer["predictions"][1]
    env = {"CHURNOPS_SERVING__PREDICTION_LOG_URL": log_url}
    done = CliRunner().invoke(
        app, ["lineage", "--prediction", item["request_id"], "--json", "-c", str(shop.config)], env=env
    )
    assert done.exit_code == 0, done.output
    chain = json.loads(done.output)

    settings = shop.settings
    assert chain["prediction"]["customer_id"] == item["customer_id"] == 2
    assert chain["prediction"]["probability"] == pytest.approx(item["probability"], abs=1e-6)
    assert chain["version"] == item["version"] == shop.versions[0]
    registry = model_registry(settings)
    run_id = next(v["run_id"] for v in registry.versions() if v["version"] == chain["version"])
    assert chain["run_id"] == run_id
    assert "champion" in chain["aliases"]
    assert any(m["alias"] == "champion" for m in chain["alias_moves"])

    manifest = feature_table(settings).manifest()
    assert chain["prediction"]["served_snapshot"] == max(manifest.snapshots)  # the online store's snapshot
    cfg = settings.features
    trained_on = on_grid(list(manifest.snapshots), date.fromisoformat(chain["logical_date"]), cfg.cadence_days, None)
    assert {s for part in chain["snapshots"].values() for s in part} <= set(trained_on)
    assert chain["feature_table_hash"] == manifest.content_hash_of(trained_on)
    lake = make_lake(settings)
    in_lake = {(t, m.ingest_date): m.sha256 for t in ("orders", "customers") for m in lake.manifests(t)}
    recorded = {(p["table"], p["ingest_date"]): p["sha256"] for p in chain["raw_partitions"]}
    assert recorded == in_lake
    assert {p["now"] for p in chain["raw_partitions"]} == {"same"}

    # a fresh process (no MLflow state left by this one) prints the same chain as text
    text = subprocess.run(
        [sys.executable, "-m", "churnops", "lineage", chain["version"], "-c", str(shop.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr
    assert run_id in text.stdout
    for sha in in_lake.values():
        assert f"sha256 {sha}" in text.stdout


def test_lineage_says_what_is_missing(shop: Shop, tmp_path: Path) -> None:
    """An unknown version or request_id fails with a message naming what exists; asking for
    neither (or both) is a usage error."""
    runner = CliRunner()
    unknown = runner.invoke(app, ["lineage", "999", "-c", str(shop.config)])
    assert unknown.exit_code == 1
    assert "no version 999" in unknown.output
    assert shop.versions[0] in unknown.output
    log = tmp_path / "empty-log.db"
    sqlite3.connect(log).execute("CREATE TABLE unrelated (x INTEGER)").connection.close()  # a log, no predictions
    env = {"CHURNOPS_SERVING__PREDICTION_LOG_URL": f"sqlite:///{log}"}
    missing = runner.invoke(app, ["lineage", "--prediction", "nope-0", "-c", str(shop.config)], env=env)
    assert missing.exit_code == 1
    assert "no logged prediction has request_id 'nope-0'" in missing.output
    neither = runner.invoke(app, ["lineage", "-c", str(shop.config)])
    assert neither.exit_code == 2
    assert "give a model version" in neither.output
    assert "not both" not in neither.output
    both = runner.invoke(app, ["lineage", "1", "--prediction", "abc-0", "-c", str(shop.config)])
    assert both.exit_code == 2
    assert "not both" in both.output


def test_lineage_on_an_empty_workspace_says_so_without_a_traceback(tmp_path: Path) -> None:
    """Nothing trained or served yet: one line each, exit 1, and nothing is created."""
    runner = CliRunner()
    env = {"CHURNOPS_WORKSPACE": str(tmp_path / "ws")}
    version = runner.invoke(app, ["lineage", "1"], env=env)
    assert version.exit_code == 1
    assert "no registry yet" in version.output
    served = runner.invoke(app, ["lineage", "--prediction", "abc-0"], env=env)
    assert served.exit_code == 1
    assert "no prediction log yet" in served.output
    assert "Traceback" not in served.output
    assert not (tmp_path / "ws").exists()


def test_a_partition_rewritten_or_removed_since_training_is_flagged(shop: Shop) -> None:
    """Each recorded raw-partition hash is checked against the lake: equal, changed, or gone."""
    from churnops.pipelines.ingest import make_lake
    from churnops.pipelines.lineage import _check_partitions

    manifest = make_lake(shop.settings).manifests("orders")[0]
    recorded = [
        {"table": "orders", "ingest_date": manifest.ingest_date, "sha256": manifest.sha256, "rows": manifest.rows},
        {"table": "orders", "ingest_date": manifest.ingest_date, "sha256": "0" * 64, "rows": 1},
        {"table": "orders", "ingest_date": "1999-01-01", "sha256": "0" * 64, "rows": 1},
    ]
    assert [p.now for p in _check_partitions(shop.settings, recorded)] == ["same", "changed", "gone"]
