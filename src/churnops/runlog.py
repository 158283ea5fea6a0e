"""An append-only log of pipeline runs in the workspace, read by `churnops status`."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class WorkspaceBusyError(RuntimeError):
    """Another churnops process holds the workspace lock."""


def append_run(workspace: Path, record: dict[str, Any]) -> None:
    """Append one run record (JSON line) to `<workspace>/runs.jsonl`."""
    workspace.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"logged_at": datetime.now(UTC).isoformat(timespec="seconds"), **record})
    with open(workspace / "runs.jsonl", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_runs(workspace: Path, last: int = 10) -> list[dict[str, Any]]:
    """The last `last` run records, oldest first; a torn final line is ignored."""
    path = workspace / "runs.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records[-last:]


@contextmanager
def workspace_lock(workspace: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock so two runs never write the same workspace state at once."""
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / f".{name}.lock"
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise WorkspaceBusyError(f"another `churnops {name}` is running on {workspace}") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
