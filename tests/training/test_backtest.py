"""Backtests on a hand-made, date-only, whitespace-aligned log without order ids."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from churnops.cli import app
from churnops.pipelines.backtest import backtest
from churnops.pipelines.ingest import ingest
from churnops.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUTOFF = date(2024, 9, 2)
HORIZON = 28


def _log(seed: int = 0, customers: int = 500) -> pd.DataFrame:
    """Customers buying at their own rate until a churn day, dates only."""
    rng = np.random.default_rng(seed)
    rows = []
    for customer in range(1, customers + 1):
        day = pd.Timestamp("2024-01-01") + pd.Timedelta(days=int(rng.integers(0, 120)))
        leaves = day + pd.Timedelta(days=int(rng.integers(20, 400)))
        rate = rng.uniform(3, 30)
        while day < pd.Timestamp("2024-12-31") and day < leaves:
            rows.append((customer, day, round(float(rng.lognormal(3, 0.6)), 2)))
            day += pd.Timedelta(days=max(1, int(rng.exponential(rate))))
    return pd.DataFrame(rows, columns=["customer", "day", "amount"])


def _write(log: pd.DataFrame, path: Path) -> None:
    """Column-aligned text, CRLF line ends, dates without a time of day."""
    lines = [f"{'customer':>10} {'day':>12} {'amount':>10}"]
    lines += [f"{c:>10} {d:%Y-%m-%d}   {a:>10.2f}" for c, d, a in log.itertuples(index=False)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def _settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        sources=[
            {
                "kind": "file",
                "name": "log",
                "table": "orders",
                "path": str(tmp_path / "log" / "*.txt"),
                "format": "csv",
                "csv_delimiter": "whitespace",
                "derive_order_id": True,
                "columns": {"customer_id": "customer", "order_date": "day", "total_amount": "amount"},
                "date_formats": {"order_date": "%Y-%m-%d"},
            }
        ],
        features={"cadence_days": 7},
        training={
            "horizon_days": HORIZON,
            "holdout_snapshots": 2,
            "validation_snapshots": 2,
            "cv_folds": 2,
            "candidates": {
                "lightgbm": {"algorithm": "lightgbm", "params": {"n_estimators": 30, "min_child_samples": 50}}
            },
        },
        gate={"bootstrap_rounds": 100},
    )


def _pandas_labels(log: pd.DataFrame, cutoff: date, horizon: int) -> dict[int, int]:
    d = pd.Timestamp(cutoff)
    before = set(log.loc[log["day"] < d, "customer"])
    came_back = set(log.loc[(log["day"] >= d) & (log["day"] < d + pd.Timedelta(days=horizon)), "customer"])
    return {c: int(c not in came_back) for c in sorted(before)}


def test_a_backtest_sees_nothing_from_the_cutoff_on_and_judges_on_what_happened_after(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "log").mkdir()
    log = _log()
    _write(log, tmp_path / "log" / "orders.txt")
    ingest(settings, date(2025, 1, 1))
    first = backtest(settings, CUTOFF)

    # What happens from the cutoff on changes: amounts, and new orders. Training must not notice.
    later = log["day"] >= pd.Timestamp(CUTOFF)
    changed = log.copy()
    changed.loc[later, "amount"] = changed.loc[later, "amount"] * 7 + 1
    extra = pd.DataFrame(
        {"customer": np.arange(1, 200), "day": pd.Timestamp(CUTOFF) + pd.Timedelta(days=3), "amount": 5000.0}
    )
    changed = pd.concat([changed, extra], ignore_index=True).sort_values(["day", "customer"], kind="stable")
    _write(changed, tmp_path / "log" / "orders.txt")
    ingest(settings, date(2025, 1, 1))  # a rerun of the date replaces the partition
    second = backtest(settings, CUTOFF)

    columns = ["customer_id", "event_timestamp", "churned", *first.training.features]
    pd.testing.assert_frame_equal(first.training.frame[columns], second.training.frame[columns])
    last_snapshot = first.training.frame["event_timestamp"].max().tz_localize(None)
    assert last_snapshot + pd.Timedelta(days=HORIZON) <= pd.Timestamp(CUTOFF)
    assert first.training.frame["max_order_value"].max() < 5000.0

    for run, source in ((first, log), (second, changed)):
        got = dict(zip(run.evaluation["customer_id"], run.evaluation["churned"], strict=True))
        assert got == _pandas_labels(source, CUTOFF, HORIZON)
    assert second.result.churn_rate < first.result.churn_rate  # the extra orders brought customers back


def test_the_result_file_and_the_cli_table(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "log").mkdir()
    _write(_log(seed=3), tmp_path / "log" / "orders.txt")
    ingest(settings, date(2025, 1, 1))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(settings.model_dump_json())
    registry_before = (Path(settings.workspace) / "registry_audit.jsonl").exists()
    result = CliRunner().invoke(
        app, ["backtest", "--cutoff", "2024-08-05", "--cutoff", CUTOFF.isoformat(), "-c", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    for day in ("2024-08-05", CUTOFF.isoformat()):
        body = json.loads((Path(settings.workspace) / "backtests" / f"{day}.json").read_text())
        assert body["cutoff"] == day
        assert body["horizon_days"] == HORIZON
        assert body["customers"] > 100
        assert 0 < body["churn_rate"] < 1
        assert set(body["models"]["lightgbm"]) >= {
            "roc_auc",
            "pr_auc",
            "f1",
            "precision",
            "recall",
            "brier",
            "threshold",
        }
        assert set(body["baselines"]["everyone_churns"]) >= {"f1"}
        assert set(body["baselines"]["recency"]) == {"roc_auc", "pr_auc"}
        assert body["best"] == "lightgbm"
        assert day in result.output
    assert "everyone churns" in result.output
    assert "recency score" in result.output
    # nothing registered, no alias moved, no online store
    assert (Path(settings.workspace) / "registry_audit.jsonl").exists() == registry_before
    assert not (Path(settings.workspace) / "feature_repo" / "online_store.db").exists()
    assert not list((Path(settings.workspace) / "backtests").glob("*.features"))


def test_a_cutoff_whose_window_is_not_over_is_refused(tmp_path: Path) -> None:
    from churnops.pipelines.train import TrainingError

    settings = _settings(tmp_path)
    (tmp_path / "log").mkdir()
    _write(_log(), tmp_path / "log" / "orders.txt")
    ingest(settings, date(2025, 1, 1))
    with pytest.raises(TrainingError, match="pick a cutoff on or before"):
        backtest(settings, date(2024, 12, 20))
