"""The daily pipeline on every scale-out backend at once (config/scaleout.yaml), against the
embedded defaults: PostgreSQL, Redis, an S3 endpoint (moto), an authenticated `mlflow server`
and Spark, each a real server on loopback."""

from __future__ import annotations

import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from churnops.settings import Settings, load_settings
from tests.features.test_spark_engine import _assert_frames_close
from tests.integration.test_workspace import CONFIG
from tests.servers import free_port, missing, mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DAY = date(2025, 1, 1)
SHOP = {k: CONFIG[k] for k in ("simulation", "training", "gate")}


def _create_databases(postgres_url: str, *names: str) -> dict[str, str]:
    import sqlalchemy as sa

    base = postgres_url.rsplit("/", 1)[0]
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    suffix = time.time_ns()
    urls = {}
    with engine.connect() as conn:
        for name in names:
            conn.execute(sa.text(f"CREATE DATABASE {name}_{suffix}"))
            urls[name] = f"{base}/{name}_{suffix}"
    engine.dispose()
    return urls


def _scaleout_config(
    workspace: Path, databases: dict[str, str], redis_url: str, lake_bucket: str, s3: dict[str, Any], tracking: str
) -> dict[str, Any]:
    """config/scaleout.yaml with the ports and names of the servers this test started."""
    body: dict[str, Any] = yaml.safe_load((ROOT / "config" / "scaleout.yaml").read_text())
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    body["workspace"] = str(workspace)
    body["lake_uri"] = f"s3://{lake_bucket}/lake"
    body["lake_storage_options"] = s3
    customers, _catalog, orders = body["sources"]
    customers["url"] = databases["shop"]
    orders["url"] = redis_url
    orders["stream"] = f"orders-{time.time_ns()}"
    body["feast"]["redis_connection_string"] = host_port
    body["feast"]["registry"] = databases["feast"]
    body["mlflow"]["tracking_uri"] = tracking
    body["serving"] = {"prediction_log_url": databases["predictions"], "port": free_port()}
    body["deploy"] = {"staging_port": free_port(), "latency_budget_ms": 500}
    return body | SHOP


def _snapshots(settings: Settings) -> dict[str, pd.DataFrame]:
    from churnops.pipelines.features import feature_table

    table = feature_table(settings)
    return {
        name: pd.read_parquet(table.path_of(held)).sort_values("customer_id").reset_index(drop=True)
        for name, held in sorted(table.manifest().snapshots.items())
    }


def test_the_daily_pipeline_on_every_scale_out_backend_equals_the_embedded_run(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    s3_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One day on PostgreSQL, Redis, S3, an authenticated MLflow server and Spark serves and
    logs predictions, and gives the same feature values and model metrics as the embedded
    defaults over the same shop."""
    import boto3
    import sqlalchemy as sa

    try:
        import pyspark  # noqa: F401
    except ImportError:
        missing("pyspark (the `spark` extra)")
    from churnops.pipelines.promotion import Registered, model_registry
    from churnops.pipelines.simulate import simulate
    from churnops.pipelines.steps import run_steps
    from churnops.pipelines.train import TrainResult
    from churnops.serving.deploy import Production, serving_as_of, stop_server

    endpoint = s3_options["client_kwargs"]["endpoint_url"]
    suffix = time.time_ns()
    lake_bucket, mlflow_bucket = f"churnops-lake-{suffix}", f"churnops-mlflow-{suffix}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=lake_bucket)
    s3.create_bucket(Bucket=mlflow_bucket)
    databases = _create_databases(postgres_url, "shop", "mlflow", "predictions", "feast")
    with mlflow_server(
        databases["mlflow"], f"s3://{mlflow_bucket}/artifacts", {"MLFLOW_S3_ENDPOINT_URL": endpoint}
    ) as credentials:
        tracking = credentials["MLFLOW_TRACKING_URI"]
        refused = httpx.get(f"{tracking}/api/2.0/mlflow/experiments/search", params={"max_results": 1})
        assert refused.status_code == 401  # authentication is on: no credentials, no answer
        wrong = httpx.get(
            f"{tracking}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=("admin", "password1234")
        )
        assert wrong.status_code == 401  # and the default admin password is not the password
        for key, value in credentials.items():  # the client (and the servers it starts) read them
            monkeypatch.setenv(key, value)

        body = _scaleout_config(tmp_path / "scale", databases, redis_url, lake_bucket, s3_options, tracking)
        config = tmp_path / "scaleout.yaml"
        config.write_text(yaml.safe_dump(body))
        scaled = load_settings(config)
        simulate(scaled, date(2024, 12, 31))  # customers into PostgreSQL, the catalog file
        _publish_stream(scaled, body["sources"][2]["stream"], redis_url)
        try:
            results = run_steps(scaled, DAY)
            production = results.get(Production)
            assert production.champion == results.get(Registered).version
            answer = httpx.post(f"{production.url}/predict", json={"customer_ids": [1, 2, 3]}, timeout=30)
            assert answer.status_code == 200, answer.text
            as_of = serving_as_of(scaled, DAY)  # the production server's clock
            assert _answered_by_a_pod(tmp_path, body, as_of, [1, 2, 3]) == _scores(answer.json())
        finally:
            stop_server(scaled, "production")
            stop_server(scaled, "staging")
        scaled_train = results.get(TrainResult)
        registry = model_registry(scaled)
        assert registry.holder("champion") == production.champion
        artifacts = s3.list_objects_v2(Bucket=mlflow_bucket).get("KeyCount", 0)
        assert artifacts > 0  # the model went to S3 through the tracking server
        scaled_features = _snapshots(scaled)

    lake = s3.list_objects_v2(Bucket=lake_bucket, Prefix="lake/raw/orders/")
    assert lake.get("KeyCount", 0) >= 2  # a partition's data and its manifest, on S3
    assert scaled.features.engine == "spark"
    engine = sa.create_engine(databases["predictions"])
    with engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT customer_id, version FROM predictions")).fetchall()
    engine.dispose()
    assert sorted(c for c, _ in logged) == [1, 2, 3]
    assert {v for _, v in logged} == {production.champion}
    import redis

    assert redis.Redis.from_url(redis_url).dbsize() > 0  # Feast's online store

    embedded = load_settings(None, workspace=str(tmp_path / "embedded"), deploy={"servers": False}, **SHOP)
    embedded_train = run_steps(embedded, DAY).get(TrainResult)
    embedded_features = _snapshots(embedded)
    assert list(scaled_features) == list(embedded_features)
    for name, frame in embedded_features.items():  # Spark over S3 = DuckDB over local files (to 1e-9)
        _assert_frames_close(
            scaled_features[name].drop(columns="created_timestamp"), frame.drop(columns="created_timestamp")
        )
    ours, theirs = scaled_train.candidates[0], embedded_train.candidates[0]
    assert theirs.holdout
    for metric, value in theirs.holdout.items():
        assert ours.holdout[metric] == pytest.approx(value, abs=1e-9), metric


def _scores(body: dict[str, Any]) -> list[tuple[int, str, float | None]]:
    return [(item["customer_id"], item["status"], item["probability"]) for item in body["predictions"]]


def _answered_by_a_pod(
    tmp_path: Path, body: dict[str, Any], as_of: datetime | None, customers: list[int]
) -> list[tuple[int, str, float | None]]:
    """What a server answers from an empty workspace of its own with the settings of
    deploy/k8s/production.yaml's ConfigMap: the model from the MLflow server, each version's
    features through the Feast registry in PostgreSQL and the Redis online store."""
    from tests.serving.conftest import running_server

    pod = {
        "workspace": str(tmp_path / "pod"),
        "mlflow": body["mlflow"],
        "feast": body["feast"],
        "serving": {"prediction_log_url": f"sqlite:///{tmp_path / 'pod-log.db'}", "as_of": as_of},
    }
    config = tmp_path / "pod.yaml"
    config.write_text(yaml.safe_dump(pod))
    with running_server(config) as (url, _):
        answer = httpx.post(f"{url}/predict", json={"customer_ids": customers}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert not (tmp_path / "pod" / "feature_repo" / "registry.db").exists()
    return _scores(answer.json())


def _publish_stream(settings: Settings, stream: str, redis_url: str) -> None:
    """The simulated orders as events on the configured stream (the shop publishes its default one)."""
    from churnops.data.publish import publish_stream
    from churnops.pipelines.simulate import SimulationPaths, load_world

    world = load_world(settings.simulation, SimulationPaths.from_settings(settings).cache_dir)
    orders = world.orders[world.orders["order_date"] < "2025-01-01"]
    publish_stream(orders, redis_url, stream)
