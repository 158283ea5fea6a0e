"""The road to production with local servers: staging and its integration tests, the A/B test,
promotion, rollback, status and stop; all against real `churnops serve` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from churnops.cli import app
from churnops.pipelines.features import feature_table
from churnops.pipelines.promotion import model_registry
from churnops.serving.deploy import (
    INTEGRATION_PASSED,
    DeployError,
    Staged,
    deploy_production,
    deploy_staging,
    pid_file,
    port_owner,
    run_integration_tests,
    serve_production,
    server_status,
    stage_challenger,
    stop_server,
)
from churnops.serving.prediction_log import read_predictions
from churnops.settings import Settings
from tests.servers import free_port
from tests.serving.conftest import DAY, Shop, build_shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]
runner = CliRunner()


@pytest.fixture(scope="module")
def road(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    shop = build_shop(
        tmp_path_factory.mktemp("road"),
        # a generous latency budget: timing is not what these tests judge (the failing case sets a tiny one)
        deploy={
            "servers": True,
            "staging_port": free_port(),
            "skew_customers": 40,
            "latency_requests": 100,
            "latency_budget_ms": 2000,
        },
        serving={
            "as_of": "2025-01-02T00:00:00",
            "poll_seconds": 0.5,
            "port": free_port(),
            "ab_weight": 0.5,
        },
    )
    yield shop
    for env in ("staging", "production"):
        stop_server(shop.settings, env)


def _customers(shop: Shop, n: int = 200) -> list[int]:
    frame = pd.read_parquet(feature_table(shop.settings).files()[-1], columns=["customer_id", "frequency"])
    return sorted(frame[frame["frequency"] > 0]["customer_id"].tolist())[:n]


def _with(settings: Settings, section: str, **values: object) -> Settings:
    part = getattr(settings, section).model_copy(update=values)
    return settings.model_copy(update={section: part})


def _served_version(url: str, settings: Settings) -> str:
    return httpx.get(f"{url}/v2/models/{settings.mlflow.model_name}").json()["versions"][0]


def test_a_failing_integration_test_stops_the_road_and_alerts(road: Shop) -> None:
    settings = _with(road.settings, "deploy", latency_budget_ms=0.001)
    staged = deploy_staging(settings, DAY)
    assert staged.version == road.versions[1]
    assert not staged.passed
    checks = {c["name"]: c for c in staged.checks}
    assert checks["health"]["passed"]
    assert checks["skew"]["passed"]
    assert checks["schema"]["passed"]
    assert not checks["latency"]["passed"]
    assert "over the budget of 0.001 ms" in checks["latency"]["detail"]
    registry = model_registry(settings)
    tags = registry.client.get_model_version(registry.model_name, staged.version).tags
    assert tags[INTEGRATION_PASSED] == "false"
    alerts = [json.loads(line) for line in Path(settings.alerts.file).read_text().splitlines()]
    assert any(a["key"].startswith(f"integration-failed-churn_predictor-v{staged.version}") for a in alerts)
    # the road stops: production does not A/B-test it, and it cannot be promoted
    assert serve_production(settings, DAY).challenger is None
    with pytest.raises(DeployError, match="has not passed its integration tests"):
        deploy_production(settings, DAY)
    assert registry.holder("champion") == road.versions[0]


def test_the_integration_step_in_a_later_process_finds_the_staging_server_stopped_and_starts_it(road: Shop) -> None:
    """The daily steps stage and test in two steps, under Airflow in two processes: the staging
    step's result crosses as a dict (XCom), and a staging server that stopped in between (a
    restart, a retry hours later) is started again, so the version is tested, not failed."""
    settings = road.settings
    staged = stage_challenger(settings, DAY)
    assert staged.skipped == ""
    assert staged.version == road.versions[1]
    assert server_status(settings, "staging").state == "running"
    stop_server(settings, "staging")
    assert server_status(settings, "staging").state == "stopped"
    handed = Staged.from_dict(json.loads(json.dumps(staged.as_dict())))
    tested = run_integration_tests(settings, DAY, handed)
    assert tested.passed, tested.checks
    assert server_status(settings, "staging").state == "running"
    assert _served_version(tested.url, settings) == road.versions[1]
    registry = model_registry(settings)
    assert registry.client.get_model_version(registry.model_name, tested.version).tags[INTEGRATION_PASSED] == "true"


def test_deploy_staging_in_a_fresh_process_runs_every_integration_test(road: Shop, tmp_path: Path) -> None:
    """A scheduler runs each step in a process of its own: nothing there has pointed MLflow at
    the workspace's store before the skew check loads the staged version by its registry URI.
    (MLflow exports the URI it was pointed at to the environment, which a child inherits: the
    command runs without it.)"""
    fresh = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-m", "churnops", "deploy", "staging", "-c", str(road.config), "--date", DAY.isoformat()],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
        env=fresh,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("health", "skew", "schema", "latency"):
        assert f"integration test {check}: passed" in done.stdout, done.stdout
    assert not (tmp_path / "mlflow.db").exists(), "MLflow's default store was created where the command ran"


def test_staging_ab_test_promotion_rollback_status_and_stop(road: Shop) -> None:
    settings = road.settings
    first, second = road.versions
    registry = model_registry(settings)

    staged = deploy_staging(settings, DAY)
    assert staged.passed, staged.checks
    assert [c["name"] for c in staged.checks] == ["health", "skew", "schema", "latency"]
    assert registry.holder("staging") == second
    assert _served_version(staged.url, settings) == second
    assert "served = offline within" in staged.checks[1]["detail"]

    production = serve_production(settings, DAY)
    assert (production.champion, production.challenger, production.weight) == (first, second, 0.5)
    url = production.url
    ids = _customers(road)
    items = httpx.post(f"{url}/predict", json={"customer_ids": ids}).json()["predictions"]
    variant = {i["customer_id"]: (i["variant"], i["version"]) for i in items}
    assert set(variant.values()) == {("champion", first), ("challenger", second)}
    share = sum(v == "challenger" for v, _ in variant.values()) / len(ids)
    assert 0.35 < share < 0.65  # the hash split of 200 customers at weight 0.5
    for batch in (ids[::-1], ids[:7], ids[50:120]):  # sticky: any batch, any order, same variant
        again = httpx.post(f"{url}/predict", json={"customer_ids": batch}).json()["predictions"]
        assert all((i["variant"], i["version"]) == variant[i["customer_id"]] for i in again)
    status = runner.invoke(app, ["deploy", "status", "-c", str(road.config)])
    assert status.exit_code == 0, status.output
    assert "running" in status.output
    assert url in status.output
    assert f"challenger v{second}" in status.output
    overview = runner.invoke(app, ["status", "-c", str(road.config)])
    assert overview.exit_code == 0, overview.output
    assert f"production server: running {url} (champion v{first}, challenger v{second})" in overview.output

    promoted = runner.invoke(app, ["deploy", "production", "-c", str(road.config), "--date", DAY.isoformat()])
    assert promoted.exit_code == 0, promoted.output
    assert f"production: version {second} (promoted now)" in promoted.output
    assert registry.holder("champion") == second
    assert _served_version(url, settings) == second  # hot-swapped, same process
    served_log = (pid_file(settings, "production").parent / "production.log").read_text()
    assert f"serving version {second} (" in served_log  # the server's log says what it served, and why
    items = httpx.post(f"{url}/predict", json={"customer_ids": ids[:50]}).json()["predictions"]
    assert {(i["variant"], i["version"]) for i in items} == {("champion", second)}  # the test is over

    rolled = runner.invoke(app, ["registry", "rollback", "-c", str(road.config), "--reason", "test"])
    assert rolled.exit_code == 0, rolled.output
    assert registry.holder("champion") == first
    assert _served_version(url, settings) == first
    assert [m.kind for m in registry.history("champion")][-1] == "rollback"
    # the version rolled back from had kept `challenger` since it won; it loses it with champion,
    # so production answers every customer with the champion again and no A/B test resumes
    assert "challenger released from version" in rolled.output
    assert registry.holder("challenger") is None
    items = httpx.post(f"{url}/predict", json={"customer_ids": ids[:50]}).json()["predictions"]
    assert {(i["variant"], i["version"]) for i in items} == {("champion", first)}
    assert serve_production(settings, DAY).challenger is None

    stopped = runner.invoke(app, ["deploy", "stop", "-c", str(road.config)])
    assert stopped.exit_code == 0, stopped.output
    assert "staging: stopped" in stopped.output
    assert "production: stopped" in stopped.output
    assert not pid_file(settings, "staging").exists()
    assert not pid_file(settings, "production").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live")
    # every answer of the A/B test is in the log with its variant
    logged = read_predictions(settings.serving.prediction_log_url)
    ab = logged[logged["variant"].isin(["champion", "challenger"])]
    assert {"champion", "challenger"} <= set(ab["variant"])
    assert (ab[ab["variant"] == "challenger"]["version"] == second).all()


def _challenger_again(road: Shop) -> None:
    """Point `challenger` at the second version again (a rollback above released it)."""
    registry = model_registry(road.settings)
    if registry.holder("challenger") != road.versions[1]:
        registry.move("challenger", road.versions[1], "tests: a challenger again")


def test_shadow_mode_scores_the_challenger_without_answering_with_it(road: Shop) -> None:
    settings = _with(road.settings, "serving", ab_mode="shadow")
    first, second = road.versions
    registry = model_registry(settings)
    assert registry.holder("champion") == first  # after the rollback above, or never moved
    _challenger_again(road)
    if dict(registry.client.get_model_version(registry.model_name, second).tags).get(INTEGRATION_PASSED) != "true":
        assert deploy_staging(road.settings, DAY).passed
    production = serve_production(settings, DAY)
    assert production.mode == "shadow"
    assert production.challenger == second
    ids = _customers(road, 120)
    items = httpx.post(f"{production.url}/predict", json={"customer_ids": ids}).json()["predictions"]
    assert {(i["variant"], i["version"]) for i in items} == {("champion", first)}
    request_ids = {i["request_id"] for i in items}
    stop_server(settings, "production")  # flushes the log
    logged = read_predictions(settings.serving.prediction_log_url)
    shadow = logged[logged["request_id"].isin(request_ids) & (logged["variant"] == "shadow")]
    assert 0.3 * len(ids) < len(shadow) < 0.7 * len(ids)
    assert (shadow["version"] == second).all()
    answered = logged[logged["request_id"].isin(request_ids) & (logged["variant"] == "champion")]
    assert len(answered) == len(ids)


def test_a_stale_pid_file_is_found_and_removed(road: Shop) -> None:
    settings = road.settings
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = pid_file(settings, "staging")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"env": "staging", "pid": gone.pid, "url": "http://127.0.0.1:1", "alias": "staging", "started": ""})
    )
    status = runner.invoke(app, ["deploy", "status", "-c", str(road.config)])
    assert status.exit_code == 0, status.output
    assert f"process {gone.pid} is gone" in status.output
    assert not path.exists()
    assert server_status(settings, "staging").state == "stopped"


def test_a_taken_port_is_a_clear_error(road: Shop) -> None:
    """A taken port is named before anything starts."""
    import socket

    _challenger_again(road)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _with(road.settings, "deploy", staging_port=port)
        with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 is in use.*deploy.staging_port"):
            deploy_staging(settings, DAY)
        assert port_owner("::", 0) is None  # an IPv6 host is probed as one (it was a crash)
        served = runner.invoke(app, ["serve", "-c", str(road.config), "--port", str(port)])
        assert served.exit_code == 1
        assert f"port {port} on 127.0.0.1 is in use by another process" in served.output
        assert "serving churn_predictor" not in served.output  # not announced before it fails
    assert server_status(settings, "staging").state == "stopped"  # nothing was started


def test_a_port_taken_by_another_workspaces_server_says_how_to_stop_it(road: Shop) -> None:
    """What answers as a churnops server (the demo's, left running) is named, with the command that stops it."""
    _challenger_again(road)
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Churnops(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"name": "churnops", "version": "1", "extensions": []}).encode()
            self.send_response(200 if self.path == "/v2" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Churnops)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        settings = _with(road.settings, "deploy", staging_port=other.server_address[1])
        with pytest.raises(DeployError, match=r"a churnops server of another workspace.*deploy stop all"):
            deploy_staging(settings, DAY)
    finally:
        other.shutdown()
        other.server_close()
