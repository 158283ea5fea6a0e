"""Real servers on loopback for integration tests: PostgreSQL, Redis and an S3 endpoint.

Outside CI a missing server binary skips the test with a message naming it; under CI
(CI=true) it fails instead, because `.ci/run` installs everything the tests need.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    """A TCP port nothing uses right now, below the kernel's ephemeral range.

    A port from that range (what binding port 0 gives) can be taken as the source port of an
    outgoing connection by then a server, started or restarted on it later, binds it: the
    server fails with "address already in use". Each xdist worker draws from its own share.
    """
    import random

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            ephemeral = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    share = (ephemeral - 10_000) // 8
    low = 10_000 + (index % 8) * share
    for _ in range(500):
        port = random.randint(low, low + share - 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a crowded range: any port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing(what: str) -> None:
    """Skip (or, under CI, fail) because `what` is not available."""
    message = f"{what} is not available; run `make services` (scripts/install-services.sh)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"under CI nothing is skipped: {message}")
    pytest.skip(message)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server (Debian package redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="churnops-redis-") as folder:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl); yields a SQLAlchemy URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        missing("PostgreSQL server binaries (Debian package postgresql)")
    bindir = os.path.dirname(found[-1])
    port = free_port()
    folder = tempfile.mkdtemp(prefix="churnops-pg-")
    data = os.path.join(folder, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as the packaged `postgres` user.
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            f"{bindir}/pg_ctl",
            "-D",
            data,
            "-w",
            "-l",
            os.path.join(folder, "log"),
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        _wait_port(port)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """A local S3-compatible endpoint (moto in server mode); yields s3fs storage options."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server] (a dev dependency)")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    keys = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        _wait_port(port)
        yield {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        }
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def mlflow_server(backend_store_uri: str, artifacts_destination: str, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A real `mlflow server` with basic authentication, in a process group of its own.

    The admin password is a fresh random one (never MLflow's default); yields the variables a
    client needs (`MLFLOW_TRACKING_URI`, `..._USERNAME`, `..._PASSWORD`). Stopping it ends the
    whole process group: `mlflow server` runs its workers as child processes.
    """
    import secrets
    import signal
    import sys

    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(mlflow_bin):
        missing("mlflow (a dependency)")
    port = free_port()
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="churnops-mlflow-") as folder:
        auth_config = os.path.join(folder, "basic_auth.ini")
        with open(auth_config, "w") as handle:
            handle.write(
                "[mlflow]\n"
                "default_permission = READ\n"
                f"database_uri = sqlite:///{folder}/basic_auth.db\n"
                "admin_username = admin\n"
                f"admin_password = {password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
        log = open(os.path.join(folder, "server.log"), "wb")  # noqa: SIM115 - held while it runs
        proc = subprocess.Popen(
            [
                mlflow_bin,
                "server",
                "--app-name",
                "basic-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                backend_store_uri,
                "--artifacts-destination",
                artifacts_destination,
            ],
            env={
                **os.environ,
                **env,
                "MLFLOW_AUTH_CONFIG_PATH": auth_config,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # CSRF protection of the auth app
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            try:
                _wait_port(port, timeout=120)
            except TimeoutError:
                log.flush()
                with open(os.path.join(folder, "server.log"), errors="replace") as handle:
                    raise AssertionError(f"mlflow server did not start:\n{handle.read()[-3000:]}") from None
            yield {
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                "MLFLOW_TRACKING_USERNAME": "admin",
                "MLFLOW_TRACKING_PASSWORD": password,
            }
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            log.close()
