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


def read_runs(workspace: Workspace, last: int = 10) -> list[dict[str, Any]]:
    """The last `last` run records, oldest first."""
    return read_lines(workspace.runs_log)[-last:]
