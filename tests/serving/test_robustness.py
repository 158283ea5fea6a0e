"""What must never take the server down: generated requests, a version that fails to load, no model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import hypothesis
import pytest
import schemathesis
import schemathesis.openapi
from fastapi.testclient import TestClient

from churnops.serving.app import create_app
from churnops.serving.model import ModelLoadError, ServedModel, load_served_model
from churnops.settings import Settings, load_settings
from tests.serving.conftest import Shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_no_generated_request_is_a_server_error(server: str) -> None:
    """At least 1,000 requests generated from the OpenAPI schema per endpoint; every answer below 500."""
    api = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10
    counts: dict[str, int] = {}
    for operation in operations:

        @hypothesis.settings(
            max_examples=1000,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            label = f"{case.method.upper()} {case.path}"
            counts[label] = counts.get(label, 0) + 1
            response = case.call(timeout=30)
            assert response.status_code < 500, (label, case.body, response.text)

        check()
    with_input = {
        f"{o.method.upper()} {o.path}"
        for o in operations
        if list(o.iter_parameters()) or o.get_request_payload_content_types()
    }
    assert with_input >= {"POST /predict", "POST /invocations", "POST /v2/models/{name}/infer"}
    # an endpoint that takes nothing has one possible request, which was sent
    assert all(counts.get(label, 0) >= (1000 if label in with_input else 1) for label in counts), counts
    assert len(counts) == len(operations)


def _copy(shop: Shop, tmp_path: Path, **serving: object) -> Settings:
    ws = tmp_path / "ws"
    shutil.copytree(shop.settings.workspace, ws)
    body = json.loads(shop.config.read_text())
    body["workspace"] = str(ws)
    body["serving"] = {**body.get("serving", {}), "prediction_log_url": f"sqlite:///{tmp_path / 'log.db'}", **serving}
    return load_settings(None, **body)


def test_a_version_whose_files_changed_is_refused(shop: Shop, tmp_path: Path) -> None:
    settings = _copy(shop, tmp_path)
    served = load_served_model(settings)
    models = list((settings.workspace / "mlartifacts" / "models").rglob("model.lgb"))
    assert models
    for path in models:
        path.write_text(path.read_text().replace("learning_rate", "learning-rate", 1))
    with pytest.raises(ModelLoadError, match="refusing to serve them"):
        load_served_model(settings)
    assert served.version == shop.versions[0]


def test_a_version_that_is_not_fully_recorded_is_refused(shop: Shop, tmp_path: Path) -> None:
    from churnops.pipelines.promotion import model_registry
    from churnops.registry.mlflow_registry import COMPLETE

    settings = _copy(shop, tmp_path)
    registry = model_registry(settings)
    registry.client.delete_model_version_tag(registry.model_name, shop.versions[0], COMPLETE)
    with pytest.raises(ModelLoadError, match="not fully recorded"):
        load_served_model(settings)


def test_without_a_model_the_server_is_live_but_not_ready(shop: Shop, tmp_path: Path) -> None:
    settings = _copy(shop, tmp_path, poll_seconds=0)

    def broken(_: Settings, alias: str) -> ServedModel:
        raise ModelLoadError("no version of churn_predictor holds the alias 'champion'")

    with TestClient(create_app(settings, loader=broken, start_polling=False)) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/ping").status_code == 503  # MLflow's check says the same
        refused = client.post("/predict", json={"customer_ids": [1]})
        assert refused.status_code == 503
        assert "no model is loaded" in refused.json()["error"]


def test_a_failed_swap_keeps_the_old_version_serving_and_alerts(shop: Shop, tmp_path: Path) -> None:
    settings = _copy(shop, tmp_path, poll_seconds=0, admin_token="t")
    calls = []

    def first_then_broken(s: Settings, alias: str) -> ServedModel:
        calls.append(1)
        if len(calls) > 1:
            raise ModelLoadError("version 2 failed its smoke prediction")
        return load_served_model(s, alias)

    with TestClient(create_app(settings, loader=first_then_broken, start_polling=False)) as client:
        before = client.post("/predict", json={"customer_ids": [1]}).json()["predictions"][0]
        result = client.post("/admin/reload", headers={"authorization": "Bearer t"}).json()["result"]
        assert result.startswith(f"kept version {shop.versions[0]}")
        after = client.post("/predict", json={"customer_ids": [1]}).json()["predictions"][0]
        assert after["version"] == before["version"] == shop.versions[0]
        assert after["probability"] == before["probability"]
        failures = re.search(r"^churnops_model_reload_failures_total (\S+)$", client.get("/metrics").text, re.M)
        assert failures is not None
        assert float(failures.group(1)) == 1.0
    alerts = [json.loads(line) for line in Path(settings.alerts.file).read_text().splitlines()]
    assert any(a["key"].startswith("serving-reload-failed") for a in alerts)


def test_a_full_log_queue_drops_counts_and_alerts_but_serving_goes_on(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from churnops.serving.prediction_log import PredictionLog

    settings = _copy(shop, tmp_path, poll_seconds=0, log_queue_size=1, log_batch_size=1)
    release = threading.Event()
    write = PredictionLog._write

    def slow(self: PredictionLog, batch: list[dict[str, object]]) -> None:
        release.wait(30)  # a database that has stopped answering
        write(self, batch)

    monkeypatch.setattr(PredictionLog, "_write", slow)
    with TestClient(create_app(settings, start_polling=False)) as client:
        for _ in range(3):
            assert client.post("/predict", json={"customer_ids": [1, 2, 3]}).status_code == 200
        state = client.app.state.server  # type: ignore[attr-defined]
        assert state.log.dropped >= 5  # 9 predictions, a queue of one, a writer holding one
        dropped = re.search(r"^churnops_prediction_log_dropped_total (\S+)$", client.get("/metrics").text, re.M)
        assert dropped is not None
        assert float(dropped.group(1)) == state.log.dropped
        release.set()
    alerts = [json.loads(line) for line in Path(settings.alerts.file).read_text().splitlines()]
    assert len([a for a in alerts if a["key"].startswith("prediction-log-full")]) == 1
