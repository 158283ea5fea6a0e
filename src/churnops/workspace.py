"""The workspace: the one directory that holds all state, the paths inside it, and its lock.

Every module asks `Workspace` where things live instead of joining paths itself, so the
layout is written down once. Steps that write hold the one workspace-wide lock; a second
process that wants it fails at once with `WorkspaceBusyError` (exit status 75), never waits
or corrupts.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

BUSY_EXIT_CODE = 75  # EX_TEMPFAIL: try again later


class WorkspaceBusyError(RuntimeError):
    """Another churnops process holds the workspace lock."""


class WorkspaceError(RuntimeError):
    """The workspace cannot be used (for example, its path is a file)."""


@dataclass(frozen=True)
class Workspace:
    """Paths of everything under the workspace directory."""

    root: Path

    def check(self) -> None:
        """Raise a clear error when the path exists but is not a directory."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"the workspace {self.root} is a file, not a directory; set `workspace` elsewhere")

    @property
    def sources(self) -> Path:
        """Where the simulated shop writes its sources."""
        return self.root / "sources"

    @property
    def simulation_cache(self) -> Path:
        """The simulated world, cached per configuration."""
        return self.root / "simulation"

    @property
    def lake(self) -> Path:
        """The default raw lake."""
        return self.root / "lake"

    @property
    def feature_table(self) -> Path:
        """The customer feature table."""
        return self.root / "features" / "customer_features"

    @property
    def feature_repo(self) -> Path:
        """Feast's repository: feature_store.yaml, the definitions, registry and online store."""
        return self.root / "feature_repo"

    @property
    def mlflow_db(self) -> Path:
        """MLflow's embedded tracking and registry store."""
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        """MLflow's artifacts (models, lineage, holdout predictions)."""
        return self.root / "mlartifacts"

    @property
    def runs_log(self) -> Path:
        """The append-only log of step runs."""
        return self.root / "runs.jsonl"

    @property
    def registry_audit(self) -> Path:
        """The append-only log of alias moves."""
        return self.root / "registry_audit.jsonl"

    @property
    def alerts(self) -> Path:
        """The append-only alert file."""
        return self.root / "alerts.jsonl"

    @property
    def backtests(self) -> Path:
        """One JSON result per backtest cutoff."""
        return self.root / "backtests"

    @property
    def location_file(self) -> Path:
        """Where the workspace was last used from, to notice a move or a copy."""
        return self.root / "workspace.json"

    def recorded_root(self) -> Path | None:
        """The absolute path the workspace was last used from, if recorded."""
        try:
            return Path(json.loads(self.location_file.read_text())["root"])
        except (OSError, ValueError, KeyError):
            return None

    def record_root(self) -> None:
        """Remember the workspace's current absolute path."""
        from churnops.data.lake import write_local_atomic

        body = json.dumps({"root": str(self.root.resolve())}).encode()
        write_local_atomic(str(self.location_file), body)

    @contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        """Hold the workspace-wide write lock (re-entrant within one process).

        Args:
            holder: What holds it, for the message another process gets (e.g. "churnops train").

        Raises:
            WorkspaceBusyError: Another process holds it.
        """
        self.check()
        self.root.mkdir(parents=True, exist_ok=True)
        with _LOCKS.hold(self.root / ".lock", holder):
            yield


class _ProcessLocks:
    """flock-based locks held by this process, counted so nested steps re-enter them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, tuple[IO[str], int]] = {}

    @contextmanager
    def hold(self, path: Path, holder: str) -> Iterator[None]:
        key = str(path.resolve())
        with self._guard:
            if key in self._held:
                handle, count = self._held[key]
                self._held[key] = (handle, count + 1)
            else:
                handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held across the block
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    handle.seek(0)
                    who = handle.read().strip() or "another churnops process"
                    handle.close()
                    raise WorkspaceBusyError(
                        f"the workspace {path.parent} is busy: {who}; try again when it has finished"
                    ) from exc
                handle.seek(0)
                handle.truncate()
                since = datetime.now(UTC).strftime("%H:%M:%S UTC")
                handle.write(f"`{holder}` (pid {os.getpid()}) holds it since {since}")
                handle.flush()
                self._held[key] = (handle, 1)
        try:
            yield
        finally:
            with self._guard:
                handle, count = self._held[key]
                if count > 1:
                    self._held[key] = (handle, count - 1)
                else:
                    del self._held[key]
                    handle.seek(0)
                    handle.truncate()
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()


_LOCKS = _ProcessLocks()
