"""The road to production with the embedded defaults: staging and production as local servers.

`deploy staging` moves `staging` to the challenger, starts (or reloads) the staging server and
runs the integration tests against it over HTTP; a failure stops the road and alerts. The
production server serves `champion` and A/B-tests the challenger once it passed staging
(`serving.ab_weight`, `serving.ab_mode`). `deploy production` moves `champion` to the staged
version; the production server hot-swaps to it. Each server is a `churnops serve` process in a
session of its own, with a pid file and a log under `<workspace>/servers/`; `deploy status`
finds a pid file whose process is gone and removes it, `deploy stop` ends the process group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from churnops.settings import Settings

log = logging.getLogger(__name__)

# Each environment and the alias its server serves.
ENVIRONMENTS = {"staging": "staging", "production": "champion"}
INTEGRATION_PASSED = "integration.passed"
INTEGRATION_REPORT = "integration.report"


class DeployError(RuntimeError):
    """A server could not be started, or nothing can be deployed; the message says why."""


# --- local server processes ---------------------------------------------------------------


@dataclass
class ServerRecord:
    """What a pid file holds."""

    env: str
    pid: int
    url: str
    alias: str
    started: str
    settings_sha256: str = ""
    log: str = ""


@dataclass
class ServerStatus:
    """An environment's server as it is now."""

    env: str
    state: str  # running, starting, stopped, stale
    url: str = ""
    pid: int | None = None
    version: str | None = None
    backend: str | None = None
    variants: dict[str, str] = field(default_factory=dict)
    note: str = ""


def servers_dir(settings: Settings) -> Path:
    """Where the pid files, logs and admin token of the local servers live."""
    return settings.paths.root / "servers"


def pid_file(settings: Settings, env: str) -> Path:
    """The pid file of an environment's server."""
    return servers_dir(settings) / f"{env}.json"


def admin_token(settings: Settings) -> str:
    """The configured admin token, or one made for this workspace (kept in a 0600 file)."""
    if settings.serving.admin_token:
        return settings.serving.admin_token
    path = servers_dir(settings) / "admin_token"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another deploy made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    return token


def port_of(settings: Settings, env: str) -> int:
    """The port an environment's server listens on."""
    return settings.deploy.staging_port if env == "staging" else settings.serving.port


def _read_record(settings: Settings, env: str) -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads(pid_file(settings, env).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _foreign(settings: Settings, record: ServerRecord) -> str | None:
    """The workspace a pid file's server belongs to when that is not this one: its log is in the
    servers/ folder of the workspace that started it, and a copied workspace's file names the
    original's, whose own pid file names the same process. None when it is this workspace's,
    also after a move (the folder it names is gone, or holds no record of that process)."""
    if not record.log:
        return None
    folder = Path(record.log).parent
    if folder.resolve() == servers_dir(settings).resolve():
        return None
    try:
        theirs = json.loads((folder / pid_file(settings, record.env).name).read_text())
    except (OSError, ValueError):
        return None  # moved: the server is this workspace's to stop or restart
    return str(folder.parent) if theirs.get("pid") == record.pid else None


def _not_ours(settings: Settings, env: str, record: ServerRecord, remove: bool) -> ServerStatus | None:
    """The status of a pid file that names another workspace's server (None if it is ours); the
    copy's file is removed when `remove`, and that server is left alone."""
    other = _foreign(settings, record)
    if other is None:
        return None
    if remove:
        pid_file(settings, env).unlink(missing_ok=True)
    removed = "; the copy of its pid file was removed" if remove else ""
    return ServerStatus(
        env,
        "stopped",
        note=f"pid {record.pid} is the server of {other} (a copied or moved workspace), left alone{removed}",
    )


def _alive(pid: int) -> bool:
    """The process exists and is a churnops server (a reused pid is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the signal
    if b"churnops" not in cmdline or b"serve" not in cmdline:
        return False
    try:  # a zombie (exited, not yet reaped) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def server_status(settings: Settings, env: str, remove_stale: bool = True) -> ServerStatus:
    """Whether the environment's server runs, what it serves; a stale pid file is removed
    (unless `remove_stale` is False: a read-only look)."""
    import httpx

    record = _read_record(settings, env)
    if record is None:
        return ServerStatus(env, "stopped", note="no server started")
    foreign = _not_ours(settings, env, record, remove_stale)
    if foreign is not None:
        return foreign
    if not _alive(record.pid):
        if remove_stale:
            pid_file(settings, env).unlink(missing_ok=True)
        removed = "; its pid file was removed" if remove_stale else ""
        return ServerStatus(env, "stale", record.url, record.pid, note=f"process {record.pid} is gone{removed}")
    status = ServerStatus(env, "starting", record.url, record.pid)
    try:
        ready = httpx.get(f"{record.url}/v2/health/ready", timeout=2).status_code == 200
        meta = httpx.get(f"{record.url}/v2/models/{settings.mlflow.model_name}", timeout=2)
    except httpx.HTTPError as exc:
        status.note = f"not answering yet ({type(exc).__name__})"
        return status
    if meta.status_code == 200:
        body = meta.json()
        status.version = body["versions"][0]
        status.backend = body["parameters"]["backend"]
        status.variants = body["parameters"].get("variants", {})
    status.state = "running" if ready else "starting"
    return status


def _churnops_on(host: str, port: int) -> bool:
    """Whether what listens on the port answers as a churnops server (its Open Inference
    metadata names it)."""
    import httpx

    address = f"[{host}]" if ":" in host else host  # an IPv6 address is bracketed in a URL
    try:
        answer = httpx.get(f"http://{address}:{port}/v2", timeout=1.0)
        return bool(answer.status_code == 200 and answer.json().get("name") == "churnops")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError):
        return False


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::" and the like are IPv6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError:
        return False
    return True


def port_owner(host: str, port: int) -> str | None:
    """Who holds a port, in words (a churnops server of another workspace, with how to stop it,
    or another process); None when it is free."""
    if _port_free(host, port):
        return None
    if _churnops_on(host, port):
        return (
            "a churnops server of another workspace (`churnops deploy stop all -c <its settings>` stops it; "
            "the demo's: -c .churnops/demo.yaml)"
        )
    return "another process"


def start_server(
    settings: Settings, env: str, as_of: datetime | None = None, say: Callable[[str], None] | None = None
) -> ServerStatus:
    """Start the environment's server, or make a running one follow its alias now.

    Args:
        settings: The loaded settings.
        env: "staging" or "production".
        as_of: The time the server judges feature freshness against (None: the wall clock).
        say: Called with progress lines.

    Returns:
        Its status once it is ready.

    Raises:
        DeployError: The port is taken, or the server did not become ready (its log's tail says why).
    """
    import httpx

    say = say or (lambda _: None)
    alias = ENVIRONMENTS[env]
    token = admin_token(settings)
    # The server reads exactly these settings (file, environment and overrides as resolved here).
    body = settings.model_dump(mode="json")
    body["serving"].update(
        alias=alias, port=port_of(settings, env), admin_token=token, as_of=as_of.isoformat() if as_of else None
    )
    text = json.dumps(body, sort_keys=True)
    # The clock is not a reason to restart: a running server takes a new one with its reload.
    digest = hashlib.sha256(
        json.dumps({**body, "serving": {**body["serving"], "as_of": None}}, sort_keys=True).encode()
    ).hexdigest()
    current = server_status(settings, env)
    record = _read_record(settings, env)
    if current.state in ("running", "starting") and record is not None:
        if record.settings_sha256 == digest:
            if current.state == "running":
                try:
                    answer = httpx.post(
                        f"{record.url}/admin/reload",
                        headers={"Authorization": f"Bearer {token}"},
                        json={"as_of": body["serving"]["as_of"]},
                        timeout=120,
                    )
                except httpx.HTTPError as exc:
                    raise DeployError(f"the {env} server at {record.url} did not take the reload: {exc}") from exc
                if answer.status_code != 200:
                    raise DeployError(f"the {env} server refused the reload: {answer.text}")
                say(f"{env}: {answer.json()['result']}")
            return _wait_ready(settings, env, record)
        say(f"{env}: restarting the server: its settings changed")
        stop_server(settings, env)
    host, port = settings.serving.host, port_of(settings, env)
    owner = port_owner(host, port)
    if owner is not None:
        key = "deploy.staging_port" if env == "staging" else "serving.port"
        raise DeployError(f"port {port} on {host} is in use by {owner}; stop it or set {key}")
    folder = servers_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{env}.log"
    settings_file = folder / f"{env}.settings.json"
    descriptor = os.open(settings_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold credentials
    os.fchmod(descriptor, 0o600)  # also when the file was there before
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    command = [sys.executable, "-m", "churnops", "serve"]
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("CHURNOPS_")}
    env_vars["CHURNOPS_CONFIG"] = str(settings_file.resolve())
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env_vars,
            cwd=os.getcwd(),
            start_new_session=True,  # its own process group: `deploy stop` ends all of it
        )
    from churnops.data.lake import write_local_atomic

    record = ServerRecord(
        env=env,
        pid=process.pid,
        url=f"http://{host}:{port}",
        alias=alias,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings_sha256=digest,
        log=str(log_path.resolve()),  # also says which workspace the server is of (`_foreign`)
    )
    write_local_atomic(str(pid_file(settings, env)), json.dumps(asdict(record)).encode())
    say(f"{env}: started the server (pid {process.pid}) on {record.url}")
    try:
        return _wait_ready(settings, env, record, process)
    except DeployError:
        stop_server(settings, env)
        raise


def _wait_ready(
    settings: Settings, env: str, record: ServerRecord, process: subprocess.Popen[bytes] | None = None
) -> ServerStatus:
    deadline = time.monotonic() + settings.deploy.start_timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeployError(f"the {env} server exited with code {process.returncode}:\n{_tail(record.log)}")
        status = server_status(settings, env)
        if status.state == "running":
            return status
        if status.state in ("stopped", "stale"):
            raise DeployError(f"the {env} server went away:\n{_tail(record.log)}")
        time.sleep(0.3)
    raise DeployError(
        f"the {env} server was not ready after {settings.deploy.start_timeout_seconds:.0f} s:\n{_tail(record.log)}"
    )


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_server(settings: Settings, env: str, timeout: float = 60.0) -> ServerStatus:
    """Stop the environment's server: SIGTERM to its process group (it drains and flushes its
    log), SIGKILL after `timeout`; the pid file is removed."""
    record = _read_record(settings, env)
    if record is None:
        return ServerStatus(env, "stopped", note="was not running")
    foreign = _not_ours(settings, env, record, remove=True)
    if foreign is not None:
        return foreign
    note = "stopped"
    if _alive(record.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(record.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
            note = f"did not stop within {timeout:.0f} s; killed"
    else:
        note = f"process {record.pid} was already gone; its pid file was removed"
    pid_file(settings, env).unlink(missing_ok=True)
    return ServerStatus(env, "stopped", record.url, record.pid, note=note)


# --- the road --------------------------------------------------------------------------------


@dataclass
class Staged:
    """What the staging step did: the version on staging and the server serving it."""

    version: str | None
    url: str = ""
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Staged:
        """The inverse of `as_dict`."""
        return cls(**body)


@dataclass
class Production:
    """What the production server serves after a step: the champion and any A/B challenger."""

    champion: str | None
    challenger: str | None = None
    url: str = ""
    weight: float = 0.0
    mode: str = ""
    promoted: bool = False
    skipped: str = ""
    ab: dict[str, Any] = field(default_factory=dict)  # `ab_test.ABDecision`, when the step looked at the test
    note: str = ""  # what the user should know about what it serves (features stale on the wall clock)

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Production:
        """The inverse of `as_dict`."""
        return cls(**body)


def serving_as_of(settings: Settings, day: date) -> datetime | None:
    """The time local servers judge feature freshness against: the configured `serving.as_of`,
    the logical date for the simulated shop (whose calendar is not the wall clock), else None."""
    from churnops.pipelines.steps import simulated_sources

    if settings.serving.as_of is not None:
        return settings.serving.as_of
    if simulated_sources(settings):
        return datetime(day.year, day.month, day.day)
    return None


def clock_by_hand(settings: Settings) -> datetime | None:
    """The time a server started by hand (`churnops serve`) judges feature freshness against:
    the configured `serving.as_of`; for the simulated shop, whose calendar is not the wall clock,
    its newest feature snapshot (the logical date of its last run); else None (the wall clock).
    The shop is the simulated one when the workspace holds a published simulation, not merely
    when the settings name no sources of their own (a server's settings often name none)."""
    from churnops.pipelines.features import feature_table
    from churnops.pipelines.simulate import SimulationPaths, published_until

    if settings.serving.as_of is not None:
        return settings.serving.as_of
    if published_until(SimulationPaths.from_settings(settings).sources_dir)[1] is None:
        return None
    snapshots = feature_table(settings).manifest().snapshots
    return serving_as_of(settings, date.fromisoformat(max(snapshots))) if snapshots else None


def deploy_staging(settings: Settings, day: date, say: Callable[[str], None] | None = None) -> IntegrationTested:
    """Move `staging` to the challenger, serve it on the staging server, run the integration tests.

    A failing test stops the road (the version is tagged as failed, so production never A/B-tests
    it) and raises an alert. The daily steps run the two halves as steps of their own
    (`stage_challenger`, then `run_integration_tests`).
    """
    staged = stage_challenger(settings, day, say)
    if staged.skipped:
        return IntegrationTested(staged.version, staged.url, skipped=staged.skipped)
    return run_integration_tests(settings, day, staged, say)


def stage_challenger(settings: Settings, day: date, say: Callable[[str], None] | None = None) -> Staged:
    """Move `staging` to the challenger and serve it on the staging server (or wait for the
    configured remote staging server to serve it); no tests yet."""
    from churnops.pipelines.promotion import existing_registry

    say = say or (lambda _: None)
    registry = existing_registry(settings)
    challenger = registry.holder("challenger") if registry else None
    if registry is None or challenger is None:
        return Staged(None, skipped="no challenger to stage")
    if challenger == registry.holder("champion"):
        return Staged(challenger, skipped=f"the challenger (version {challenger}) is the champion already")
    if registry.holder("staging") != challenger:
        registry.promote("staging", challenger, "deploy staging", logical_date=day.isoformat())
        say(f"staging now holds version {challenger}")
    if not settings.deploy.servers and not settings.deploy.staging_url:
        return Staged(challenger, skipped="no staging server (deploy.servers is off and deploy.staging_url unset)")
    if settings.deploy.servers:
        status = start_server(settings, "staging", serving_as_of(settings, day), say)
        url = status.url
    else:
        url = str(settings.deploy.staging_url).rstrip("/")
        _wait_serving(settings, url, challenger, say)
    return Staged(challenger, url)


@dataclass
class IntegrationTested(Staged):
    """What the integration tests against the staging server found (`deploy staging`'s result)."""

    passed: bool = False
    checks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> IntegrationTested:
        """The inverse of `as_dict`."""
        return cls(**body)


def run_integration_tests(
    settings: Settings, day: date, staged: Staged, say: Callable[[str], None] | None = None
) -> IntegrationTested:
    """Run the integration tests over HTTP against the staged version on its server; tag the
    version with the verdict, and alert when a test failed (the version goes no further).

    With local servers (`deploy.servers`) the staging server is started again first, or made to
    follow its alias if it runs: this step may run long after the staging step, in another
    process (an Airflow retry, `churnops run --from integration`). A server that cannot be made
    ready raises `DeployError` (worth a retry), never a failed verdict.
    """
    from churnops.alerts import Alert, raise_alert
    from churnops.pipelines.promotion import existing_registry
    from churnops.serving.integration import integration_tests

    say = say or (lambda _: None)
    registry = existing_registry(settings)
    if registry is None or staged.version is None or staged.skipped:
        return IntegrationTested(staged.version, staged.url, skipped=staged.skipped or "nothing on staging")
    if registry.holder("staging") != staged.version:
        return IntegrationTested(
            staged.version,
            staged.url,
            skipped=f"staging holds version {registry.holder('staging')} now, not {staged.version}",
        )
    url = staged.url
    if settings.deploy.servers:
        url = start_server(settings, "staging", serving_as_of(settings, day), say).url
    checks = integration_tests(settings, url, staged.version, say)
    passed = all(c["passed"] for c in checks)
    registry.tag(staged.version, INTEGRATION_PASSED, "true" if passed else "false")
    registry.tag(staged.version, INTEGRATION_REPORT, json.dumps(checks, sort_keys=True)[:5000])
    if not passed:
        failed = [c for c in checks if not c["passed"]]
        raise_alert(
            settings.alerts,
            Alert(
                key=f"integration-failed-{settings.mlflow.model_name}-v{staged.version}-{day.isoformat()}",
                title=f"{settings.mlflow.model_name} version {staged.version} failed its integration tests on "
                "staging; it goes no further",
                details={c["name"]: c["detail"] for c in failed} | {"staging": url},
            ),
        )
    return IntegrationTested(staged.version, url, passed=passed, checks=checks)


def _wait_serving(settings: Settings, url: str, version: str, say: Callable[[str], None]) -> None:
    """Give a remote staging server (which follows its alias by polling) time to load `version`;
    the health check then says whether it did."""
    import httpx

    say(f"staging: waiting for {url} to serve version {version}")
    deadline = time.monotonic() + settings.deploy.start_timeout_seconds
    while time.monotonic() < deadline:
        try:
            meta = httpx.get(f"{url}/v2/models/{settings.mlflow.model_name}", timeout=5)
            if meta.status_code == 200 and meta.json().get("versions") == [version]:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1.0)


def serve_production(
    settings: Settings, day: date | None = None, say: Callable[[str], None] | None = None
) -> Production:
    """Make the production server serve the champion, and A/B-test a challenger that passed staging."""
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    champion = registry.holder("champion") if registry else None
    if registry is None or champion is None:
        return Production(None, skipped="no champion yet")
    challenger = ab_challenger(registry, settings)
    if not settings.deploy.servers:
        return Production(champion, challenger, skipped="deploy.servers is off; servers follow the aliases")
    as_of = serving_as_of(settings, day) if day is not None else settings.serving.as_of
    status = start_server(settings, "production", as_of, say)
    return Production(
        champion,
        challenger,
        status.url,
        settings.serving.ab_weight if challenger else 0.0,
        settings.serving.ab_mode if challenger else "",
        note=_stale_on_the_wall_clock(settings, day) if as_of is None and day is not None else "",
    )


def _stale_on_the_wall_clock(settings: Settings, day: date) -> str:
    """A warning when the logical date is so far behind the wall clock, which the server judges
    freshness by, that every customer's features are past the TTL."""
    behind = (datetime.now(UTC).date() - day).days
    if behind < settings.feast.ttl_days:  # the newest snapshot is the date's midnight: stale from ttl days on
        return ""
    return (
        f"{day} is {behind} days before today and the server judges freshness by the wall clock, so every "
        f"customer is served as stale_features (feast.ttl_days is {settings.feast.ttl_days}); for data of the "
        f"past, set serving.as_of: {day}"
    )


def ab_challenger(registry: Any, settings: Settings) -> str | None:
    """The challenger the production server A/B-tests: a version other than the champion that
    passed its integration tests on staging (none when `serving.ab_weight` is 0)."""
    if settings.serving.ab_weight <= 0:
        return None
    challenger = registry.holder("challenger")
    if challenger is None or challenger == registry.holder("champion"):
        return None
    record = registry.client.get_model_version(registry.model_name, challenger)
    return str(challenger) if dict(record.tags).get(INTEGRATION_PASSED) == "true" else None


def deploy_production(
    settings: Settings,
    day: date | None = None,
    reason: str = "deploy production",
    say: Callable[[str], None] | None = None,
) -> Production:
    """Move `champion` to the staged version (it must have passed staging); production hot-swaps.

    Raises:
        DeployError: Nothing on staging, or the staged version did not pass its integration tests.
    """
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    staged = registry.holder("staging") if registry else None
    if registry is None or staged is None:
        raise DeployError("nothing is on staging; run `churnops deploy staging` first")
    tags = dict(registry.client.get_model_version(registry.model_name, staged).tags)
    if tags.get(INTEGRATION_PASSED) != "true":
        raise DeployError(
            f"version {staged} has not passed its integration tests on staging "
            f"({'they failed' if tags.get(INTEGRATION_PASSED) == 'false' else 'not run'}); it cannot go to production"
        )
    promoted = registry.holder("champion") != staged
    if promoted:
        registry.promote("champion", staged, reason, logical_date=day.isoformat() if day else None)
    result = serve_production(settings, day, say)
    result.promoted = promoted
    return result
