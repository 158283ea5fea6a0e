"""Serving: the project's server against `mlflow models serve` and BentoML, on the same champion.

    python bench/bench_serving.py            # BENCH_SERVING_CUSTOMERS=5000 BENCH_REQUESTS=20000

Builds a simulated shop and registers a 200-tree LightGBM champion, then for each server, one
at a time on this machine, with the same load generator in its own process (bench/_load.py):

- throughput: BENCH_REQUESTS one-item requests over 32 keep-alive connections;
- latency: p50 and p99 at a steady 200 requests/s for 10 s (counted from when each was due).

Servers: ours by customer_id (features from the Feast online store) with the prediction log on
(the figure the floors are about), ours with explicit feature vectors (no lookup), ours by
customer_id with the log off; `mlflow models serve` and BentoML (in a virtual environment of
its own under bench/results/, made with uv on first use), their feature vectors supplied by
the client. Floors: >= 5x MLflow's throughput and >= 2x BentoML's, p99 < 10 ms at 200/s, no
errors. Goal: >= 2,000 requests/s.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, report

HERE = Path(__file__).parent
ROOT = HERE.parent
CUSTOMERS = int(os.environ.get("BENCH_SERVING_CUSTOMERS", "5000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "20000"))
RATE, SECONDS = 200, 10
DAY = date(2025, 7, 1)
UV = os.environ.get("UV", str(ROOT / ".tools" / "bin" / "uv"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shop(root: Path) -> tuple[Path, Any]:
    from churnops.pipelines.steps import run_steps
    from churnops.settings import load_settings

    config = {
        "workspace": str(root / "ws"),
        "simulation": {"customers": CUSTOMERS, "start": "2024-01-01", "end": "2025-06-30", "products": 500},
        "training": {
            "cv_folds": 2,
            "candidates": {
                "lightgbm": {
                    "algorithm": "lightgbm",
                    "params": {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 50},
                }
            },
        },
        "gate": {"min_f1": 0.0, "min_lift_f1": -1.0, "min_lift_auc": -1.0, "bootstrap_rounds": 100},
        "serving": {"as_of": f"{DAY}T00:00:00", "poll_seconds": 0},
        "deploy": {"servers": False},
    }
    path = root / "churnops.json"
    path.write_text(json.dumps(config))
    settings = load_settings(path)
    print(f"building a shop of {CUSTOMERS:,} customers and its champion ...", flush=True)
    run_steps(settings, DAY, only=["simulate", "ingest", "features", "train", "gate", "register"])
    return path, settings


def _payloads(settings: Any) -> dict[str, list[Any]]:
    """One-item bodies for each protocol, over the same 1,000 customers."""
    import pandas as pd

    from churnops.pipelines.features import feature_table
    from churnops.training.tracking import load_scorer

    scorer = load_scorer(f"models:/{settings.mlflow.model_name}@champion")
    snapshot = pd.read_parquet(feature_table(settings).files()[-1])
    snapshot = snapshot[snapshot["frequency"] > 0].head(1000)
    vectors = [[None if pd.isna(v) else float(v) for v in row] for row in snapshot[scorer.features].to_numpy()]
    return {
        "by_id": [{"customer_ids": [int(c)]} for c in snapshot["customer_id"]],
        "by_vector": [{"instances": [dict(zip(scorer.features, v, strict=True))]} for v in vectors],
        "mlflow": [
            json.dumps(
                {"dataframe_split": {"columns": scorer.features, "data": [[math.nan if x is None else x for x in v]]}}
            )
            for v in vectors
        ],
        "bentoml": [{"rows": [v]} for v in vectors],
    }


@contextmanager
def _server(command: list[str], ready_url: str, env: dict[str, str], cwd: Path | None = None) -> Any:
    log = open(RESULTS / f"server-{Path(command[0]).name}-{int(time.time())}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
    )
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]} was not ready after 300 s; see {log.name}")
            time.sleep(0.5)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the whole group: MLflow and BentoML fork workers
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _load(url: str, bodies: list[Any], **spec: Any) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_load.py")],
        input=json.dumps({"url": url, "bodies": bodies, **spec}),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(name: str, url: str, bodies: list[Any]) -> dict[str, Any]:
    _load(url, bodies, concurrency=8, requests=1000)  # warm up
    burst = _load(url, bodies, concurrency=32, requests=REQUESTS)
    steady = _load(url, bodies, concurrency=32, rate=RATE, seconds=SECONDS)
    figures = {
        "rps_c32": burst["rps"],
        "p50_ms_c32": burst["p50_ms"],
        "p99_ms_c32": burst["p99_ms"],
        "p50_ms_200rps": steady["p50_ms"],
        "p99_ms_200rps": steady["p99_ms"],
        "errors": burst["errors"] + steady["errors"],
        "requests": burst["requests"] + steady["requests"],
    }
    print(
        f"  {name:<28} {figures['rps_c32']:>8,.0f} req/s at c=32   p50 {figures['p50_ms_200rps']:5.2f} ms"
        f"  p99 {figures['p99_ms_200rps']:6.2f} ms at {RATE}/s   errors {figures['errors']}",
        flush=True,
    )
    return figures


def _bento_python() -> Path:
    venv = RESULTS / "bentoml-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print("making BentoML's virtual environment (once) ...", flush=True)
        subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [UV, "pip", "install", "-q", "--python", str(python), "bentoml==1.4.40", "lightgbm==4.6.0", "numpy"],
        check=True,
    )
    return python


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="churnops-bench-serving-"))
    config, settings = _shop(root)
    bodies = _payloads(settings)
    results: dict[str, dict[str, Any]] = {}
    serve = [sys.executable, "-m", "churnops", "serve", "-c", str(config)]

    port = _free_port()
    with _server([*serve, "--port", str(port)], f"http://127.0.0.1:{port}/v2/health/ready", {}):
        url = f"http://127.0.0.1:{port}/predict"
        results["churnops_lookup_log"] = _measure("churnops, by id, log on", url, bodies["by_id"])
        results["churnops_vector_log"] = _measure("churnops, by vector, log on", url, bodies["by_vector"])
    port = _free_port()
    env = {"CHURNOPS_SERVING__LOG_PREDICTIONS": "false"}
    with _server([*serve, "--port", str(port)], f"http://127.0.0.1:{port}/v2/health/ready", env):
        url = f"http://127.0.0.1:{port}/predict"
        results["churnops_lookup_nolog"] = _measure("churnops, by id, log off", url, bodies["by_id"])

    port = _free_port()
    mlflow = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "--env-manager", "local"]
    mlflow += ["-m", f"models:/{settings.mlflow.model_name}@champion", "-h", "127.0.0.1", "-p", str(port)]
    # MLflow starts `uvicorn` by name: the environment's bin must be on the PATH.
    env = {
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with _server(mlflow, f"http://127.0.0.1:{port}/ping", env):
        results["mlflow"] = _measure("mlflow models serve", f"http://127.0.0.1:{port}/invocations", bodies["mlflow"])

    import mlflow as mlflow_lib

    mlflow_lib.set_tracking_uri(settings.mlflow.tracking_uri)
    model_dir = Path(mlflow_lib.artifacts.download_artifacts(f"models:/{settings.mlflow.model_name}@champion"))
    python = _bento_python()
    port = _free_port()
    bento = [str(python), "-m", "bentoml", "serve", "_bento_service:Churn", "--port", str(port), "--host", "127.0.0.1"]
    env = {"CHURN_MODEL_FILE": str(next(model_dir.rglob("*.lgb"))), "BENTOML_DO_NOT_TRACK": "True"}
    with _server(bento, f"http://127.0.0.1:{port}/readyz", env, cwd=HERE):
        results["bentoml"] = _measure("BentoML", f"http://127.0.0.1:{port}/predict", bodies["bentoml"])

    ours = results["churnops_lookup_log"]
    figures: dict[str, Any] = {f"{k}.{m}": v for k, r in results.items() for m, v in r.items()}
    figures["ratio_throughput_vs_mlflow"] = ours["rps_c32"] / results["mlflow"]["rps_c32"]
    figures["ratio_throughput_vs_bentoml"] = ours["rps_c32"] / results["bentoml"]["rps_c32"]
    figures["floor_5x_mlflow"] = "met" if figures["ratio_throughput_vs_mlflow"] >= 5 else "NOT met"
    figures["floor_2x_bentoml"] = "met" if figures["ratio_throughput_vs_bentoml"] >= 2 else "NOT met"
    figures["floor_p99_under_10ms"] = "met" if ours["p99_ms_200rps"] < 10 else "NOT met"
    figures["floor_no_errors"] = "met" if all(r["errors"] == 0 for r in results.values()) else "NOT met"
    figures["goal_2000_rps"] = "met" if ours["rps_c32"] >= 2000 else "not yet"
    report("serving", figures)


if __name__ == "__main__":
    main()
