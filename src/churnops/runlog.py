"""The append-only log of step runs in the workspace, read by `churnops status`.

Each record carries the step, its logical date and its result, plus `logged_at`: the wall-clock
time it ran, which is recorded and never used to compute anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from churnops.jsonl import append_line, read_lines
from churnops.workspace import Workspace


def append_run(workspace: Workspace, record: dict[str, Any]) -> None:
    """Append one run record to the workspace's run log."""
    append_line(workspace.runs_log, {"logged_at": datetime.now(UTC).isoformat(timespec="seconds"), **record})


def newest_runs(workspace: Workspace) -> list[dict[str, Any]]:
    """The newest record of each step, oldest first: a daily ingest does not push the last
    training out of view."""
    newest: dict[str, dict[str, Any]] = {}
    for record in read_lines(workspace.runs_log):
        newest.pop(str(record.get("command", "")), None)  # re-insert: the order is the newest's
        newest[str(record.get("command", ""))] = record
    return list(newest.values())
