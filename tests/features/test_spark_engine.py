"""The Spark engine (pyspark, local[2]) computes the same features as the DuckDB engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnops.features.duckdb_engine import compute_features
from tests import servers
from tests.features.reference import assert_matches_reference, reference_features
from tests.features.test_engine_vs_reference import random_shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOWS = (7, 30, 90)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        servers.missing("a Java runtime for Spark (Debian package openjdk-17-jre-headless)")
    from churnops.features.spark_engine import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


def _assert_frames_close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    a = a.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)
    b = b.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)
    assert a["customer_id"].tolist() == b["customer_id"].tolist()
    assert (a["event_timestamp"].to_numpy() == b["event_timestamp"].to_numpy()).all()
    for column in a.columns[2:]:
        x, y = a[column].astype("float64").to_numpy(), b[column].astype("float64").to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), column
        ok = ~np.isnan(x)
        np.testing.assert_allclose(x[ok], y[ok], rtol=1e-9, atol=1e-9, err_msg=column)


@pytest.mark.parametrize("seed", [1, 7])
def test_spark_equals_duckdb_on_random_data(spark: Any, seed: int) -> None:
    from churnops.features.spark_engine import compute_features_spark

    orders, customers = random_shop(seed)
    snapshots = [*pd.date_range("2024-02-01", "2024-09-01", freq="7D"), orders["order_date"].iloc[3]]
    with_spark = compute_features_spark(orders, customers, snapshots, WINDOWS, spark=spark)
    with_duckdb = compute_features(orders, customers, snapshots, WINDOWS)
    _assert_frames_close(with_spark, with_duckdb)
    as_of = pd.Timestamp("2024-06-06")
    one = with_spark[with_spark["event_timestamp"] == as_of].drop(columns="event_timestamp")
    assert_matches_reference(one, reference_features(orders, customers, as_of, WINDOWS))


def test_pipeline_with_the_spark_engine_writes_the_same_table(tmp_path: Path, spark: Any) -> None:
    from churnops.pipelines.features import build_features, feature_table
    from churnops.pipelines.ingest import ingest
    from churnops.pipelines.simulate import simulate
    from churnops.settings import load_settings

    base = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        simulation={"customers": 400, "start": "2024-01-01", "end": "2024-04-30", "products": 100},
    )
    simulate(base, date(2024, 4, 30))
    ingest(base, date(2024, 4, 30))
    build_features(base, publish_to_feast=False)
    duck = pd.concat([pd.read_parquet(f) for f in feature_table(base).files()])
    spark_settings = base.model_copy(update={"features": base.features.model_copy(update={"engine": "spark"})})
    report = build_features(spark_settings, publish_to_feast=False)
    assert report.engine == "spark"
    assert feature_table(base).manifest().engine == "spark"
    sparked = pd.concat([pd.read_parquet(f) for f in feature_table(base).files()])
    assert len(sparked) == len(duck)
    drop = ["created_timestamp"]
    _assert_frames_close(sparked.drop(columns=drop), duck.drop(columns=drop))
