"""`churnops ui`: MLflow's UI on the workspace's tracking store, stopped with all its workers.

`mlflow ui` starts a server that forks workers; stopping only the parent leaves them running.
This starts it as the leader of its own process group on loopback and, on Ctrl-C or any exit,
signals the whole group (TERM, then KILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from churnops.settings import Settings


def mlflow_ui_command(settings: Settings, port: int) -> list[str]:
    """The `mlflow ui` command line for the workspace's store, on 127.0.0.1."""
    artifacts = settings.mlflow.artifact_location
    if "://" not in artifacts:
        artifacts = Path(artifacts).resolve().as_uri()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        settings.mlflow.tracking_uri,
        "--default-artifact-root",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # one user on loopback: one worker, not MLflow's four, each importing MLflow (a minute
        # or more to come up on a busy 2-core machine)
        "--workers",
        "1",
    ]


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a process started with `start_new_session=True` and everything in its group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(process.pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def serve_mlflow_ui(settings: Settings, port: int, say: Callable[[str], None]) -> None:
    """Run MLflow's UI until Ctrl-C (or SIGTERM), then stop its whole process group."""
    from churnops.training.tracking import embedded_store

    store = embedded_store(settings)
    if store is not None and not store.exists():
        say(f"nothing is tracked yet ({store} does not exist); run `churnops train` first")
        return
    process = subprocess.Popen(mlflow_ui_command(settings, port), start_new_session=True)
    previous_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops it even when started with SIGINT ignored (from a script's background job,
    # which inherits that, and Python then leaves it ignored): it is the documented way to stop
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    say(f"MLflow UI on http://127.0.0.1:{port} for {settings.mlflow.tracking_uri} (Ctrl-C stops it)")
    try:
        process.wait()
    except KeyboardInterrupt:
        say("stopping the MLflow UI and its workers")
    finally:
        stop_group(process)
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
