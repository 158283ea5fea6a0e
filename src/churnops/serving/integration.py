"""Integration tests of a served version, run over HTTP against the staging server.

- health: live, ready, and it serves the version under test;
- skew: for sampled customers of the online store's snapshot, the served probability equals the
  registered model's on the same point-in-time features, read from Feast's offline store;
- schema: every endpoint is in the OpenAPI document and answers in its declared shape, and a bad
  request gets a 4xx that says why;
- latency: p99 of one-customer `POST /predict` within `deploy.latency_budget_ms`.

Each check is a dict (name, passed, detail) so the result is recorded with the version and in
the step's result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from churnops.settings import Settings

ENDPOINTS = (
    "/predict",
    "/invocations",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/infer",
)


class CheckFailedError(Exception):
    """A check's figure is out of bounds; the message says which and by how much."""


def integration_tests(
    settings: Settings, url: str, version: str, say: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run every check against the server at `url`, which must serve `version`.

    Returns:
        One dict per check: name, passed, detail.
    """
    import httpx

    say = say or (lambda _: None)
    sample: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, check in (
            ("health", lambda: _health(client, settings, version)),
            ("skew", lambda: _skew(client, settings, version, sample)),
            ("schema", lambda: _schema(client, settings, sample)),
            ("latency", lambda: _latency(client, settings, sample)),
        ):
            try:
                detail, passed = check(), True
            except CheckFailedError as exc:
                detail, passed = str(exc), False
            except Exception as exc:  # any failure of a check is that check failing, recorded, never a crash
                detail, passed = f"{type(exc).__name__}: {exc}", False
            checks.append({"name": name, "passed": passed, "detail": detail})
            say(f"integration test {name}: {'passed' if passed else 'FAILED'}: {detail}")
            if name == "health" and not passed:
                break  # nothing else can be judged against a server that is not serving the version
    return checks


def _health(client: Any, settings: Settings, version: str) -> str:
    live = client.get("/v2/health/live")
    if live.status_code != 200 or live.json() != {"live": True}:
        raise CheckFailedError(f"/v2/health/live answered {live.status_code} {live.text[:200]}")
    ready = client.get("/v2/health/ready")
    if ready.status_code != 200:
        raise CheckFailedError(f"not ready: /v2/health/ready answered {ready.status_code}")
    meta = client.get(f"/v2/models/{settings.mlflow.model_name}").json()
    if meta.get("versions") != [version]:
        raise CheckFailedError(f"the server serves version(s) {meta.get('versions')}, not {version}")
    return f"live, ready, serving version {version} ({meta['parameters']['backend']})"


def _skew(client: Any, settings: Settings, version: str, sample: dict[str, Any]) -> str:
    from churnops.features.definitions import ORDER_COUNT
    from churnops.features.feast_repo import FeastFeatureStore
    from churnops.pipelines.features import feature_table
    from churnops.training.tracking import load_scorer

    table = feature_table(settings)
    manifest = table.manifest()
    if not manifest.snapshots:
        raise CheckFailedError("the feature table has no snapshot to compare with")
    newest = sorted(manifest.snapshots)[-1]
    snapshot = pd.read_parquet(table.path_of(manifest.snapshots[newest]), columns=["customer_id", ORDER_COUNT])
    ids = snapshot[snapshot[ORDER_COUNT] > 0]["customer_id"]  # the others are answered no_orders
    if ids.empty:
        raise CheckFailedError(f"snapshot {newest} has no customer with an order")
    chosen = ids.sample(min(len(ids), settings.deploy.skew_customers), random_state=settings.training.seed)
    scorer = load_scorer(f"models:/{settings.mlflow.model_name}/{version}")
    entities = pd.DataFrame(
        {"customer_id": chosen.to_numpy(), "event_timestamp": pd.Timestamp(datetime.fromisoformat(newest), tz="UTC")}
    )
    offline = FeastFeatureStore(settings).training_rows(entities, list(scorer.features))
    offline = offline.set_index("customer_id").loc[chosen.to_numpy()].reset_index()
    expected = np.asarray(scorer.predict_proba(offline), dtype=np.float64)
    answer = client.post("/predict", json={"customer_ids": [int(c) for c in offline["customer_id"]]})
    if answer.status_code != 200:
        raise CheckFailedError(f"POST /predict answered {answer.status_code}: {answer.text[:300]}")
    items = answer.json()["predictions"]
    not_ok = [(i["customer_id"], i["status"]) for i in items if i["status"] != "ok"]
    if not_ok:
        raise CheckFailedError(
            f"{len(not_ok)} of {len(items)} customers of snapshot {newest} were not served: {not_ok[:5]} "
            "(the online store lags the offline one, or the server's clock is past the TTL)"
        )
    served = np.array([i["probability"] for i in items], dtype=np.float64)
    gap = float(np.max(np.abs(served - expected)))
    sample["ids"] = [int(c) for c in offline["customer_id"]]
    sample["vectors"] = [
        {f: (None if pd.isna(v) else float(v)) for f, v in row.items()}
        for row in offline[list(scorer.features)].to_dict("records")
    ]
    sample["features"] = list(scorer.features)
    if gap > settings.deploy.skew_tolerance:
        worst = int(np.argmax(np.abs(served - expected)))
        raise CheckFailedError(
            f"training/serving skew: customer {sample['ids'][worst]} served {served[worst]:.6f}, "
            f"offline {expected[worst]:.6f} (|gap| {gap:.2e} > {settings.deploy.skew_tolerance:.0e})"
        )
    return f"{len(items)} customers of snapshot {newest}: served = offline within {gap:.1e}"


def _schema(client: Any, settings: Settings, sample: dict[str, Any]) -> str:
    from churnops.serving.app import PredictResponse

    paths = set(client.get("/openapi.json").json().get("paths", {}))
    missing = [p for p in ENDPOINTS if p not in paths]
    if missing:
        raise CheckFailedError(f"the OpenAPI document lacks {', '.join(missing)}")
    if not sample:
        raise CheckFailedError("no sample to send (the skew check failed first)")
    name, vectors, features = settings.mlflow.model_name, sample["vectors"][:3], sample["features"]
    predicted = PredictResponse.model_validate(client.post("/predict", json={"instances": vectors}).json())
    if len(predicted.predictions) != len(vectors) or any(p.status != "ok" for p in predicted.predictions):
        raise CheckFailedError(f"/predict with {len(vectors)} vectors answered {predicted.predictions}")
    rows = [[v[f] for f in features] for v in vectors]  # null marks a missing value
    infer = client.post(
        f"/v2/models/{name}/infer",
        json={"inputs": [{"name": "features", "shape": [len(rows), len(features)], "datatype": "FP64", "data": rows}]},
    ).json()
    outputs = {o["name"]: o for o in infer.get("outputs", [])}
    if set(outputs) != {"probability", "label"} or outputs["probability"]["shape"] != [len(rows)]:
        raise CheckFailedError(f"/v2/models/{name}/infer answered {str(infer)[:300]}")
    scored = client.post("/invocations", json={"dataframe_split": {"columns": features, "data": rows}}).json()
    if len(scored.get("predictions", [])) != len(rows):
        raise CheckFailedError(f"/invocations answered {str(scored)[:300]}")
    bad = client.post("/predict", json={"customer_ids": []})
    if bad.status_code != 422 or "empty" not in bad.json().get("error", ""):
        raise CheckFailedError(f"an empty batch got {bad.status_code} {bad.text[:200]}, not a 422 saying so")
    if "churnops_requests_total" not in client.get("/metrics").text:
        raise CheckFailedError("/metrics does not count requests")
    return f"{len(ENDPOINTS)} endpoints declared; /predict, v2 infer and /invocations answer in shape; 4xx on bad input"


def _latency(client: Any, settings: Settings, sample: dict[str, Any]) -> str:
    if not sample:
        raise CheckFailedError("no customers to send (the skew check failed first)")
    ids = sample["ids"]
    budget = settings.deploy.latency_budget_ms
    for i in range(20):  # warm the connection and the server's caches
        client.post("/predict", json={"customer_ids": [ids[i % len(ids)]]})
    took = []
    for i in range(settings.deploy.latency_requests):
        started = time.perf_counter()
        answer = client.post("/predict", json={"customer_ids": [ids[i % len(ids)]]})
        took.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise CheckFailedError(f"request {i} answered {answer.status_code}: {answer.text[:200]}")
    p50, p99 = float(np.percentile(took, 50)), float(np.percentile(took, 99))
    figures = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(took)} one-customer requests"
    if p99 > budget:
        raise CheckFailedError(f"{figures}: over the budget of {budget:g} ms")
    return f"{figures} (budget {budget:g} ms)"
