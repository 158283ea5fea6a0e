"""The model registry: MLflow registered-model versions moved between aliases, with an audit.

Aliases only, never stages: `challenger` (trained, passed the gate), `staging` (on the staging
server), `champion` (production). Every move is written as tags on the model version and as a
line in an append-only audit log; `rollback` moves `champion` back to its previous holder.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ALIASES = ("challenger", "staging", "champion")


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says why."""


@dataclass(frozen=True)
class AliasMove:
    """One audited alias move."""

    at: str
    model: str
    alias: str
    version: str
    previous: str | None
    actor: str
    reason: str
    metrics: dict[str, float]


def default_actor() -> str:
    """Who is acting: $CHURNOPS_ACTOR, else the OS user."""
    return os.environ.get("CHURNOPS_ACTOR") or getpass.getuser()


class ModelRegistry:
    """Register versions and move aliases of one registered model."""

    def __init__(self, tracking_uri: str, model_name: str, audit_log: Path) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.model_name = model_name
        self.audit_log = audit_log

    def register(self, model_uri: str, run_id: str, tags: dict[str, str] | None = None) -> str:
        """Create a new version of the registered model from a logged model."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name, description="Customer churn within the horizon.")
        version = self.client.create_model_version(self.model_name, model_uri, run_id=run_id, tags=tags or {})
        return str(version.version)

    def holder(self, alias: str) -> str | None:
        """The version that holds an alias, if any."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def move(
        self, alias: str, version: str, reason: str, metrics: dict[str, float] | None = None, actor: str | None = None
    ) -> AliasMove:
        """Point an alias at a version and record who, when, why and with which metrics."""
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
        self._version_or_fail(version)
        move = AliasMove(
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            model=self.model_name,
            alias=alias,
            version=str(version),
            previous=self.holder(alias),
            actor=actor or default_actor(),
            reason=reason,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
        )
        self.client.set_registered_model_alias(self.model_name, alias, str(version))
        prefix = f"alias.{alias}"
        for key, value in (
            ("at", move.at),
            ("actor", move.actor),
            ("reason", reason),
            ("previous", move.previous or ""),
            ("metrics", json.dumps(move.metrics)),
        ):
            self.client.set_model_version_tag(self.model_name, str(version), f"{prefix}.{key}", value)
        self._append(move)
        return move

    def history(self, alias: str | None = None) -> list[AliasMove]:
        """Audited moves, oldest first, optionally of one alias."""
        if not self.audit_log.exists():
            return []
        moves = []
        for line in self.audit_log.read_text(encoding="utf-8").splitlines():
            try:
                record = AliasMove(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            if record.model == self.model_name and (alias is None or record.alias == alias):
                moves.append(record)
        return moves

    def rollback(self, reason: str, actor: str | None = None) -> AliasMove:
        """Move `champion` back to the version that held it before the current one."""
        current = self.holder("champion")
        if current is None:
            raise RegistryError("no version holds `champion`; nothing to roll back")
        earlier = [m for m in self.history("champion") if m.version != current]
        if not earlier:
            raise RegistryError(f"version {current} is the only champion there has been; nothing to roll back to")
        return self.move("champion", earlier[-1].version, f"rollback: {reason}", actor=actor)

    def versions(self) -> list[dict[str, Any]]:
        """Every version with its aliases and run, newest first."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        if not found:
            return []
        # search results do not carry aliases in every store; the registered model does
        aliases = self.client.get_registered_model(self.model_name).aliases or {}
        rows = []
        for v in sorted(found, key=lambda v: int(v.version), reverse=True):
            rows.append(
                {
                    "version": str(v.version),
                    "aliases": sorted(a for a, holder in aliases.items() if str(holder) == str(v.version)),
                    "run_id": v.run_id,
                    "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                    "tags": dict(v.tags),
                }
            )
        return rows

    def _version_or_fail(self, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"{self.model_name} has no version {version}") from exc

    def _append(self, move: AliasMove) -> None:
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.audit_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(move)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
