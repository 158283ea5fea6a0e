"""A copied or moved workspace holds the pid files of the original's servers: they are not its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from churnops.serving.deploy import ServerRecord, pid_file, server_status, servers_dir, stop_server
from churnops.settings import Settings, load_settings


def _record_of(settings: Settings, pid: int) -> ServerRecord:
    return ServerRecord(
        env="production",
        pid=pid,
        url="http://127.0.0.1:8000",
        alias="champion",
        started="2024-01-01T00:00:00+00:00",
        log=str((servers_dir(settings) / "production.log").resolve()),
    )


def _write(settings: Settings, record: ServerRecord) -> None:
    pid_file(settings, "production").parent.mkdir(parents=True, exist_ok=True)
    pid_file(settings, "production").write_text(json.dumps(asdict(record)))


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for a server."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_copys_pid_file_is_reported_as_the_originals_and_its_server_is_left_alone(
    tmp_path: Path, server: subprocess.Popen[bytes]
) -> None:
    original = load_settings(None, workspace=str(tmp_path / "original"))
    copy = load_settings(None, workspace=str(tmp_path / "copy"))
    _write(original, _record_of(original, server.pid))
    _write(copy, _record_of(original, server.pid))  # as `cp -a` leaves it

    looked = server_status(copy, "production", remove_stale=False)
    assert looked.state == "stopped"
    assert str(tmp_path / "original") in looked.note
    assert "left alone" in looked.note
    assert pid_file(copy, "production").exists()  # a read-only look removes nothing

    stopped = stop_server(copy, "production")
    assert "left alone" in stopped.note
    assert server.poll() is None  # still running: not the copy's to stop
    os.kill(server.pid, 0)
    assert not pid_file(copy, "production").exists()
    assert server_status(copy, "production").note == "no server started"


def test_a_workspaces_own_pid_file_is_still_its_own(tmp_path: Path) -> None:
    """The same record in the workspace that wrote it: its process is gone, so the file is stale."""
    settings = load_settings(None, workspace=str(tmp_path / "ws"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write(settings, _record_of(settings, int(gone.stdout)))
    status = server_status(settings, "production")
    assert status.state == "stale"
    assert not pid_file(settings, "production").exists()


def test_a_moved_workspaces_pid_file_is_still_its_own(tmp_path: Path, server: subprocess.Popen[bytes]) -> None:
    """After `mv`, the folder the record names is gone: the server is the moved workspace's to stop."""
    moved = load_settings(None, workspace=str(tmp_path / "moved"))
    gone = load_settings(None, workspace=str(tmp_path / "before-the-move"))
    _write(moved, _record_of(gone, server.pid))
    status = server_status(moved, "production", remove_stale=False)
    assert "left alone" not in status.note
    assert status.state == "stale"  # not a churnops server here, so gone for its purposes; but its own
