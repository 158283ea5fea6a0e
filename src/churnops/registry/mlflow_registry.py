"""The model registry: MLflow registered-model versions moved between aliases, with an audit.

Aliases only, never stages: `challenger` (trained, passed the gate), `staging` (on the staging
server), `champion` (production). The promotion chain is challenger -> staging -> champion.

A version is usable only once fully recorded: its tag `churnops.complete` is written last, after
its feature service; aliases move only to complete versions, and `remove_incomplete` deletes
what a killed run left half-recorded. Every move is written as tags on the version and as a line
in an append-only audit log; `rollback` walks that log backwards and never returns to a version
it just left.

`rewind_plan` and `apply_rewind` undo what the pipeline's days from a date on did (the versions
they registered, the moves they made), for a day run after later days (`pipelines.replay`).
MLflow never reuses a version number, so the registered model is rebuilt: the versions kept are
registered again under their own numbers, from their own runs and logged models.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churnops.jsonl import append_line, read_lines

ALIASES = ("challenger", "staging", "champion")
# Where an alias is promoted from by default: staging takes the challenger, champion the staging.
PROMOTED_FROM = {"staging": "challenger", "champion": "staging"}
COMPLETE = "churnops.complete"


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
    kind: str = "move"  # or "rollback", or "release" (the alias taken off its version)
    logical_date: str | None = None


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

    # --- versions ------------------------------------------------------------------------

    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
        """Create a new, not yet complete version from a logged model."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name, description="Customer churn within the horizon.")
        from mlflow.store.artifact.utils.models import _parse_model_id_if_present

        # a logged model (`models:/m-...`) is named by its id too: a tracking server requires it
        model_id = _parse_model_id_if_present(model_uri)
        version = self.client.create_model_version(
            self.model_name, model_uri, run_id=run_id, tags=tags, model_id=model_id
        )
        return str(version.version)

    def tag(self, version: str, key: str, value: str) -> None:
        """Set one tag on a version."""
        self.client.set_model_version_tag(self.model_name, version, key, value)

    def version_tags(self, version: str) -> dict[str, str]:
        """A version's tags.

        Raises:
            RegistryError: No such version.
        """
        return dict(self._version(version).tags)

    def mark_complete(self, version: str) -> None:
        """Write the last tag: from now on the version may hold aliases."""
        self.tag(version, COMPLETE, "true")

    def is_complete(self, version: str) -> bool:
        """Whether the version was fully recorded."""
        return self._version(version).tags.get(COMPLETE) == "true"

    def version_of_run(self, run_id: str) -> str | None:
        """The complete version registered from this run, if any."""
        for v in self.versions():
            if v["run_id"] == run_id and v["tags"].get(COMPLETE) == "true":
                return str(v["version"])
        return None

    def remove_incomplete(self) -> list[str]:
        """Delete versions a killed run left without their last tag; return their numbers."""
        removed = []
        for v in self.versions():
            if v["tags"].get(COMPLETE) != "true":
                for alias in v["aliases"]:
                    self.client.delete_registered_model_alias(self.model_name, alias)
                self.client.delete_model_version(self.model_name, v["version"])
                removed.append(str(v["version"]))
        return removed

    def versions(self) -> list[dict[str, Any]]:
        """Every version with its aliases and run, newest first."""
        from mlflow.exceptions import MlflowException

        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        if not found:
            return []
        try:  # search results do not carry aliases in every store; the registered model does
            aliases = self.client.get_registered_model(self.model_name).aliases or {}
        except MlflowException:
            aliases = {}
        rows = []
        for v in sorted(found, key=lambda v: int(v.version), reverse=True):
            rows.append(
                {
                    "version": str(v.version),
                    "aliases": sorted(a for a, holder in aliases.items() if str(holder) == str(v.version)),
                    "run_id": v.run_id,
                    "source": v.source,
                    "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                    "tags": dict(v.tags),
                }
            )
        return rows

    # --- aliases -------------------------------------------------------------------------

    def holder(self, alias: str) -> str | None:
        """The version that holds an alias, if any."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def move(
        self,
        alias: str,
        version: str,
        reason: str,
        metrics: dict[str, float] | None = None,
        actor: str | None = None,
        logical_date: str | None = None,
        kind: str = "move",
    ) -> AliasMove:
        """Point an alias at a complete version and record who, when, why and with which metrics.

        When `champion` leaves a version that also holds `challenger` (it won its A/B test and
        kept the alias), `challenger` is released too: the version was taken off production (a
        rollback, a promotion by hand), and the production server would otherwise A/B-test it
        again, and the next A/B decision promote it back on its old labels.

        Raises:
            RegistryError: Unknown alias or version, or the version is not fully recorded.
        """
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
        if not self.is_complete(version):
            raise RegistryError(
                f"{self.model_name} version {version} is not fully recorded (a run stopped while registering it); "
                "the next `churnops register` removes it"
            )
        move = AliasMove(
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            model=self.model_name,
            alias=alias,
            version=str(version),
            previous=self.holder(alias),
            actor=actor or default_actor(),
            reason=reason,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            kind=kind,
            logical_date=logical_date,
        )
        self.client.set_registered_model_alias(self.model_name, alias, str(version))
        self._tag_move(move)
        append_line(self.audit_log, asdict(move))
        left = move.previous
        if alias == "champion" and left not in (None, move.version) and self.holder("challenger") == left:
            self.release(
                "challenger",
                f"version {left} left champion ({reason}); it is not A/B-tested again",
                actor=actor,
                logical_date=logical_date,
            )
        return move

    def promote(
        self, to: str, version: str | None = None, reason: str = "promotion", logical_date: str | None = None
    ) -> AliasMove:
        """Move an alias along the chain: by default to the holder of the alias before it.

        Raises:
            RegistryError: Nothing to promote, or the version cannot hold the alias.
        """
        version = version or self.next_in_line(to)
        if version is None:
            raise RegistryError(f"give --version: no version holds the alias before {to!r}")
        metrics = _json_metrics(self._version(version).tags.get("holdout_metrics"))
        return self.move(to, version, reason, metrics, logical_date=logical_date)

    def next_in_line(self, to: str) -> str | None:
        """The version `promote(to)` moves the alias to by default: the holder of the alias
        before it in the chain (challenger -> staging -> champion), else the challenger."""
        source = PROMOTED_FROM.get(to)
        for alias in (source, "challenger") if source else ():
            if version := self.holder(alias):
                return version
        return None

    def release(
        self,
        alias: str,
        reason: str,
        metrics: dict[str, float] | None = None,
        actor: str | None = None,
        logical_date: str | None = None,
    ) -> AliasMove | None:
        """Take an alias off its version (an A/B test ended: the challenger is no longer one),
        recorded like every move (kind `release`); None if no version held it."""
        holder = self.holder(alias)
        if holder is None:
            return None
        move = AliasMove(
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            model=self.model_name,
            alias=alias,
            version=holder,
            previous=holder,
            actor=actor or default_actor(),
            reason=reason,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            kind="release",
            logical_date=logical_date,
        )
        self.client.delete_registered_model_alias(self.model_name, alias)
        self._tag_move(move)
        append_line(self.audit_log, asdict(move))
        return move

    def history(self, alias: str | None = None) -> list[AliasMove]:
        """Audited moves, oldest first, optionally of one alias."""
        moves = []
        for record in read_lines(self.audit_log):
            try:
                move = AliasMove(**record)
            except TypeError:
                continue
            if move.model == self.model_name and (alias is None or move.alias == alias):
                moves.append(move)
        return moves

    def champion_lineage(self) -> list[str]:
        """The versions `champion` went through, undoing rolled-back ones: the last is current."""
        stack: list[str] = []
        for move in self.history("champion"):
            if move.kind == "rollback":
                while stack and stack[-1] != move.version:
                    stack.pop()
                if not stack:
                    stack.append(move.version)
            elif not stack or stack[-1] != move.version:
                stack.append(move.version)
        return stack

    def rollback(self, reason: str, actor: str | None = None) -> AliasMove:
        """Move `champion` back to the version that held it before the current one.

        Rolled-back versions are taken off the line, so a second rollback goes further back
        (3 -> 2 -> 1), never forth to the version it just left.

        Raises:
            RegistryError: No champion, or nothing earlier to go back to.
        """
        current = self.holder("champion")
        if current is None:
            raise RegistryError("no version holds `champion`; nothing to roll back")
        line = self.champion_lineage()
        if line and line[-1] == current:
            line = line[:-1]
        earlier = [v for v in line if v != current]
        if not earlier:
            raise RegistryError(
                f"nothing earlier to roll back to: version {current} is the oldest champion on record "
                "(rolled-back versions are not returned to; promote one with `registry promote`)"
            )
        return self.move("champion", earlier[-1], f"rollback: {reason}", actor=actor, kind="rollback")

    # --- rewinding -----------------------------------------------------------------------

    def rewind_plan(self, since: str) -> dict[str, Any] | None:
        """What undoing the pipeline's days from `since` (YYYY-MM-DD) on takes, as JSON-able data:
        the versions registered for those dates go, and the audit log is cut at the first move
        made for one of them (moves by hand after it are undone too: the days after them run
        again). The aliases return to where the moves before the cut left them. None when those
        days left nothing in the registry.
        """
        from mlflow.exceptions import MlflowException

        moves = self.history()
        cut = next((i for i, m in enumerate(moves) if m.logical_date and m.logical_date >= since), len(moves))
        found = sorted(self.client.search_model_versions(f"name = '{self.model_name}'"), key=lambda v: int(v.version))
        dropped = [int(v.version) for v in found if v.tags.get("logical_date", "") >= since]
        if not dropped and cut == len(moves):
            return None
        aliases: dict[str, str] = {}
        for move in moves[:cut]:
            if move.kind == "release":
                aliases.pop(move.alias, None)
            else:
                aliases[move.alias] = move.version
        from mlflow.store.artifact.utils.models import _parse_model_id_if_present

        try:
            model = self.client.get_registered_model(self.model_name)
            description, model_tags = model.description, dict(model.tags)
        except MlflowException:  # no model yet: nothing registered, only moves to undo
            description, model_tags = None, {}
        return {
            "since": since,
            "at": datetime.now(UTC).isoformat(),  # when it was planned: what was served before it, by what
            "rebuild": bool(dropped),
            "description": description,
            "model_tags": model_tags,
            "versions": [
                {
                    "version": int(v.version),
                    "source": v.source,
                    "run_id": v.run_id,
                    # search results of the SQL store leave it out; a tracking server requires it
                    "model_id": getattr(v, "model_id", None) or _parse_model_id_if_present(v.source or ""),
                    "description": v.description,
                    "tags": _tags_kept(str(v.version), dict(v.tags), moves[cut:]),
                }
                for v in found
                if int(v.version) not in dropped
            ],
            "dropped": dropped,
            # what the numbers removed were, for what was served under them (`registry_audit.rewound.jsonl`)
            "removed": [
                {
                    "version": str(v.version),
                    "run_id": v.run_id,
                    "logical_date": v.tags.get("logical_date"),
                    "source": v.source,
                    "tags": dict(v.tags),
                }
                for v in found
                if int(v.version) in dropped
            ],
            "aliases": aliases,
            "hand_moves": sum(1 for m in moves[cut:] if not m.logical_date),
            "moves": [asdict(m) for m in moves[:cut]],
            "undone": [asdict(m) for m in moves[cut:]],
        }

    def apply_rewind(self, plan: dict[str, Any]) -> None:
        """Carry out a `rewind_plan`. Calling it again with the same plan (after a crash part-way)
        ends in the same registry: a rebuild starts over from an empty registered model."""
        from contextlib import suppress

        from mlflow.exceptions import MlflowException

        kept = plan["versions"]
        if plan["rebuild"]:
            with suppress(MlflowException):  # a crash part-way may have left none
                self.client.delete_registered_model(self.model_name)
            self.client.create_registered_model(
                self.model_name, tags=plan["model_tags"], description=plan["description"]
            )
            by_number = {v["version"]: v for v in kept}
            for number in range(1, max(by_number, default=0) + 1):
                # a number deleted long ago (a half-recorded version) is taken and deleted again
                v = by_number.get(number) or kept[-1]
                created = self.client.create_model_version(
                    self.model_name,
                    v["source"],
                    run_id=v["run_id"],
                    tags=v["tags"] if number in by_number else {},
                    description=v["description"] if number in by_number else None,
                    model_id=v["model_id"],
                )
                if int(created.version) != number:
                    raise RegistryError(
                        f"rebuilding {self.model_name}: MLflow numbered a version {created.version}, not {number}"
                    )
                if number not in by_number:
                    self.client.delete_model_version(self.model_name, str(number))
        else:
            for v in kept:
                for key in self._version(str(v["version"])).tags:
                    if key not in v["tags"]:
                        self.client.delete_model_version_tag(self.model_name, str(v["version"]), key)
        for alias in ALIASES:
            holder, wanted = self.holder(alias), plan["aliases"].get(alias)
            if wanted is None and holder is not None:
                self.client.delete_registered_model_alias(self.model_name, alias)
            elif wanted is not None and wanted != holder:
                self.client.set_registered_model_alias(self.model_name, alias, wanted)
        numbers = {str(v["version"]) for v in kept}
        for record in plan["moves"]:  # the alias tags as the kept moves wrote them
            move = AliasMove(**record)
            if move.version in numbers:
                self._tag_move(move)
        self._rewrite_audit(plan)

    def _tag_move(self, move: AliasMove) -> None:
        """Record a move on its version's tags (a release: when and why the alias came off)."""
        if move.kind == "release":
            self.tag(move.version, f"alias.{move.alias}.released", _json({"at": move.at, "reason": move.reason}))
            return
        for key, value in (
            ("at", move.at),
            ("actor", move.actor),
            ("reason", move.reason),
            ("previous", move.previous or ""),
            ("metrics", _json(move.metrics)),
        ):
            self.tag(move.version, f"alias.{move.alias}.{key}", value)

    @property
    def rewound_log(self) -> Path:
        """Where a rewind keeps the moves it undid and the versions it removed."""
        return self.audit_log.with_name(f"{self.audit_log.stem}.rewound.jsonl")

    def removed_as(self, version: str) -> list[dict[str, Any]]:
        """Versions a rewind removed that had this number (the number now names another model)."""
        return [
            r
            for r in read_lines(self.rewound_log)
            if r.get("model") == self.model_name and r.get("kind") == "removed" and r.get("version") == str(version)
        ]

    def _rewrite_audit(self, plan: dict[str, Any]) -> None:
        """The audit log keeps the moves before the cut and other models' lines, in their order;
        every other line of this model (the moves undone, and any written since the plan was
        made) goes to `<audit log>.rewound.jsonl`, with the versions removed: nothing is lost."""
        from collections import Counter

        from churnops.data.lake import write_local_atomic

        def key(record: dict[str, Any]) -> str:
            return json.dumps(record, sort_keys=True, default=str)

        kept_moves = Counter(key(m) for m in plan["moves"])
        kept, cut = [], []
        for record in read_lines(self.audit_log):
            if record.get("model") != self.model_name:
                kept.append(record)
            elif kept_moves[key(record)] > 0:
                kept_moves[key(record)] -= 1
                kept.append(record)
            else:
                cut.append(record)
        removed = [{"model": self.model_name, "kind": "removed", **v} for v in plan.get("removed", [])]
        present = {key(r) for r in read_lines(self.rewound_log)}
        for record in [*cut, *removed]:
            line = {**record, "rewound_since": plan["since"], "rewound_at": plan["at"]}
            if key(line) not in present:  # once, even if the plan is applied again
                append_line(self.rewound_log, line)
        write_local_atomic(str(self.audit_log), "".join(key(r) + "\n" for r in kept).encode())

    def _version(self, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"{self.model_name} has no version {version}") from exc


def _tags_kept(version: str, tags: dict[str, str], undone: list[AliasMove]) -> dict[str, str]:
    """A kept version's tags once the moves undone are undone: without the alias tags (written
    again from the moves kept), and without the verdicts written beside an undone move: the
    A/B outcome of an undone A/B decision, the integration tests of an undone staging."""
    mine = [m for m in undone if m.version == version]
    decided = any(
        (m.alias == "champion" and m.kind == "move" and m.reason.startswith("A/B test"))
        or (m.alias == "challenger" and m.kind == "release")
        for m in mine
    )
    staged = any(m.alias == "staging" for m in mine)
    return {
        k: t
        for k, t in tags.items()
        if not k.startswith("alias.")
        and not (decided and k.startswith("ab."))
        and not (staged and k.startswith("integration."))
    }


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def holdout_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The holdout metrics recorded on a version's tags (empty when none or unreadable)."""
    return _json_metrics(tags.get("holdout_metrics"))


def _json_metrics(text: str | None) -> dict[str, float]:
    import json

    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {k: float(v) for k, v in body.items() if isinstance(v, int | float)}
