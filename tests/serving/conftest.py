"""A trained shop with two registered versions, and a real `churnops serve` process over it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest

from churnops.settings import Settings, load_settings
from tests.integration.test_workspace import CONFIG
from tests.servers import free_port

DAY = date(2025, 1, 1)
TOKEN = "s3cret-admin-token"
AS_OF = "2025-01-02T00:00:00"  # the TTL is judged as of the day after the newest snapshot


@dataclass
class Shop:
    """The trained workspace: settings, its config file, and its two versions."""

    settings: Settings
    config: Path
    versions: tuple[str, str]


def build_shop(root: Path, **extra: object) -> Shop:
    """Simulate, train and register twice (a second seed gives a second version) under `root`."""
    from churnops.pipelines.promotion import Registered, gate, register
    from churnops.pipelines.steps import run_steps
    from churnops.pipelines.train import train

    body = {
        **CONFIG,
        "workspace": str(root / "ws"),
        "serving": {"as_of": AS_OF, "poll_seconds": 0.5},
        **extra,
    }
    config = root / "churnops.json"
    config.write_text(json.dumps(body))
    settings = load_settings(config)
    first = run_steps(settings, DAY, only=["simulate", "ingest", "features", "train", "gate", "register"])
    reseeded = settings.model_copy(update={"training": settings.training.model_copy(update={"seed": 11})})
    second_run = train(reseeded, DAY)
    assert gate(reseeded, DAY, second_run.run_id).passed
    second = register(reseeded, DAY, second_run.run_id).version
    return Shop(settings, config, (first.get(Registered).version, second))


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    return build_shop(tmp_path_factory.mktemp("serving"))


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not become ready")


@contextmanager
def running_server(config: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`churnops serve` in a subprocess on a free port; stopped with SIGTERM."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "churnops", "serve", "-c", str(config), "--port", str(port)],
        env={**os.environ, "CHURNOPS_SERVING__ADMIN_TOKEN": TOKEN, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def server(shop: Shop) -> Iterator[str]:
    with running_server(shop.config) as (url, _):
        yield url
