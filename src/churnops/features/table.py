"""The feature table on disk: Parquet partitioned by snapshot, committed through a manifest.

Layout under `<workspace>/features/customer_features/`::

    _manifest.json                      snapshots -> file, rows, content hash; raw lineage
    snapshot=<YYYY-MM-DD>/part-<uuid>.parquet

Paths in the manifest are relative to the table's folder, so a moved or copied workspace reads
its own files.

As in the raw lake, files are written under fresh names first and the manifest is replaced
atomically; a rerun of a snapshot replaces its file. The content hash of a snapshot is
independent of row order (a sum of row hashes), so recomputing the same snapshot from the same
raw data gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churnops.data.lake import write_local_atomic

MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class SnapshotFile:
    """One committed snapshot partition."""

    snapshot: str
    path: str
    rows: int
    content_hash: str
    created_at: str


@dataclass
class FeatureManifest:
    """What the feature table holds and what it was built from."""

    snapshots: dict[str, SnapshotFile] = field(default_factory=dict)
    raw_partitions: list[dict[str, Any]] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    engine: str = ""
    committed_at: str = ""

    @property
    def content_hash(self) -> str:
        """Hash of the whole table: its snapshots' content hashes in order."""
        return self.content_hash_of(list(self.snapshots))

    def content_hash_of(self, names: list[str]) -> str:
        """Hash of some of its snapshots, in the same form as the whole table's."""
        digest = hashlib.sha256()
        for name in sorted(names):
            digest.update(f"{name}:{self.snapshots[name].content_hash};".encode())
        return digest.hexdigest()

    @property
    def rows(self) -> int:
        """Rows over all snapshots."""
        return sum(s.rows for s in self.snapshots.values())

    def to_json(self) -> str:
        """As stored, with the derived hash and row count for readers."""
        body = asdict(self)
        body["content_hash"] = self.content_hash
        body["rows"] = self.rows
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureManifest:
        """Parse a stored manifest."""
        body = json.loads(text)
        return cls(
            snapshots={k: SnapshotFile(**v) for k, v in body["snapshots"].items()},
            raw_partitions=body.get("raw_partitions", []),
            features=body.get("features", []),
            engine=body.get("engine", ""),
            committed_at=body.get("committed_at", ""),
        )


class FeatureTable:
    """Read and atomically replace snapshots of the customer feature table."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.root / MANIFEST

    @property
    def glob(self) -> str:
        """A glob over every snapshot file (what Feast's file source reads)."""
        return str(self.root / "snapshot=*" / "*.parquet")

    def manifest(self) -> FeatureManifest:
        """The committed manifest (empty if nothing is committed yet)."""
        if not self.manifest_path.exists():
            return FeatureManifest()
        return FeatureManifest.from_json(self.manifest_path.read_text())

    def files(self) -> list[str]:
        """Committed snapshot files (absolute paths), oldest snapshot first."""
        manifest = self.manifest()
        return [self.path_of(manifest.snapshots[k]) for k in sorted(manifest.snapshots)]

    def path_of(self, snapshot: SnapshotFile) -> str:
        """Where a snapshot's file is (the manifest stores it relative to the table, so a moved
        workspace keeps working)."""
        return str(self.root / snapshot.path)

    def staging_dir(self) -> Path:
        """A fresh folder for an engine to write partitioned output into."""
        path = self.root / f"_staging-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def commit(
        self,
        staged: dict[str, tuple[Path, int, str]],
        raw_partitions: list[dict[str, Any]],
        features: list[str],
        engine: str,
    ) -> FeatureManifest:
        """Move staged snapshot files into place and publish them in one manifest write.

        Args:
            staged: snapshot (YYYY-MM-DD) -> (staged file, rows, content hash).
            raw_partitions: The raw partitions (table, ingest date, sha256) read.
            features: Feature columns of the table.
            engine: Which engine computed it.

        Returns:
            The manifest now in force.
        """
        manifest = self.manifest()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        changed = (manifest.raw_partitions, manifest.features, manifest.engine) != (raw_partitions, features, engine)
        for snapshot, (path, rows, content_hash) in staged.items():
            held = manifest.snapshots.get(snapshot)
            same = held is not None and (held.rows, held.content_hash) == (rows, content_hash)
            if same and Path(self.path_of(held)).exists():  # type: ignore[arg-type]
                os.remove(path)  # the same content again: keep the file in place, so a rerun changes no byte
                continue
            changed = True
            folder = self.root / f"snapshot={snapshot}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{uuid.uuid4().hex}.parquet"
            os.replace(path, final)
            manifest.snapshots[snapshot] = SnapshotFile(
                snapshot, str(final.relative_to(self.root)), rows, content_hash, now
            )
        if not changed:
            self._remove_unreferenced(manifest)  # the emptied staging folder
            return manifest
        manifest.raw_partitions = raw_partitions
        manifest.features = features
        manifest.engine = engine
        manifest.committed_at = now
        write_local_atomic(str(self.manifest_path), manifest.to_json().encode())
        self._remove_unreferenced(manifest)
        return manifest

    def _remove_unreferenced(self, manifest: FeatureManifest) -> None:
        referenced = {self.path_of(s) for s in manifest.snapshots.values()}
        for path in self.root.glob("snapshot=*/*.parquet"):
            if str(path) not in referenced:
                path.unlink()
        for path in self.root.glob("_staging-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob(f"{MANIFEST}.tmp-*"):
            path.unlink()
