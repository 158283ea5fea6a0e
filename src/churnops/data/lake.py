"""The raw lake: Parquet partitioned by table and ingest date, committed through a manifest.

Layout under the lake URI (a local directory or s3://bucket/prefix, through fsspec)::

    raw/<table>/ingest_date=<YYYY-MM-DD>/_manifest.json
    raw/<table>/ingest_date=<YYYY-MM-DD>/part-<uuid>.parquet
    raw/<table>/ingest_date=<YYYY-MM-DD>/_quarantine/quarantine-<uuid>.parquet

Data files are written first under fresh names that no manifest references; the manifest is
then replaced in one atomic step (rename on a local disk, a single PUT on object storage). A
reader sees only files a manifest lists, so a writer killed at any moment leaves the previous
state intact, and the next commit of the partition removes the unreferenced files. Manifests
name files relative to the lake root, so a moved or copied lake reads its own files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
QUARANTINE_DIR = "_quarantine"


@dataclass(frozen=True)
class PartFile:
    """One committed Parquet file: where it is, what it holds, and its content hash."""

    path: str
    rows: int
    sha256: str
    schema: list[list[str]]


@dataclass(frozen=True)
class Part:
    """What one source contributed to a partition in one run."""

    source: str
    data: PartFile
    quarantine: PartFile | None
    rows_read: int
    watermark: dict[str, Any] = field(default_factory=dict)
    written_at: str = ""

    @property
    def rows_quarantined(self) -> int:
        """Rows of the batch that went to quarantine."""
        return self.quarantine.rows if self.quarantine else 0


@dataclass(frozen=True)
class SetAside:
    """A part taken out of its partition, kept with why and when (see `RawLake.set_aside`)."""

    part: Part
    reason: str
    at: str
    recovered: str = ""  # when a stream read took its entries again whole


@dataclass(frozen=True)
class Manifest:
    """The committed content of one (table, ingest date) partition.

    `set_aside` holds parts taken out of the partition that are kept, not read: an older date
    run after this one reads their rows again, and this date then ingests again after it.
    """

    table: str
    ingest_date: str
    parts: list[Part]
    committed_at: str
    set_aside: list[SetAside] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Accepted rows over all parts."""
        return sum(p.data.rows for p in self.parts)

    @property
    def sha256(self) -> str:
        """Hash of the partition's content: the sorted content hashes of its data files."""
        digest = hashlib.sha256()
        for sha in sorted(p.data.sha256 for p in self.parts):
            digest.update(sha.encode())
        return digest.hexdigest()

    def to_json(self) -> str:
        """The manifest as stored, with the derived row count and hash for readers."""
        body = asdict(self)
        body["rows"] = self.rows
        body["sha256"] = self.sha256
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a stored manifest."""
        body = json.loads(text)
        parts = [_part(p) for p in body["parts"]]
        aside = [
            SetAside(_part(a["part"]), a["reason"], a["at"], a.get("recovered", "")) for a in body.get("set_aside", [])
        ]
        return cls(body["table"], body["ingest_date"], parts, body["committed_at"], aside)


def _part(body: dict[str, Any]) -> Part:
    return Part(
        source=body["source"],
        data=PartFile(**body["data"]),
        quarantine=PartFile(**body["quarantine"]) if body["quarantine"] else None,
        rows_read=body["rows_read"],
        watermark=body.get("watermark", {}),
        written_at=body.get("written_at", ""),
    )


class LakeError(RuntimeError):
    """The lake holds something its manifests do not vouch for."""


class RawLake:
    """Read and atomically publish raw partitions, locally or on object storage."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, cache_dir: Path | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self._local = "file" in _protocols(self.fs)
        self.cache_dir = cache_dir

    def partition_dir(self, table: str, ingest_date: date) -> str:
        """Directory of one partition (inside the filesystem, without protocol)."""
        return f"{self.root}/{self._partition(table, ingest_date)}"

    @staticmethod
    def _partition(table: str, ingest_date: date) -> str:
        return f"raw/{table}/ingest_date={ingest_date.isoformat()}"

    def locate(self, path: str) -> str:
        """A file named in a manifest (relative to the lake root) as a path in the filesystem."""
        return f"{self.root}/{path}" if path.startswith("raw/") else path  # older manifests: absolute

    def tables(self) -> list[str]:
        """Tables that have at least one directory in the lake."""
        base = f"{self.root}/raw"
        if not self.fs.exists(base):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))

    def manifests(self, table: str) -> list[Manifest]:
        """Committed partitions of `table`, oldest ingest date first."""
        pattern = f"{self.root}/raw/{table}/ingest_date=*/{MANIFEST}"
        paths = sorted(self.fs.glob(pattern))
        return [Manifest.from_json(self.fs.cat_file(p).decode()) for p in paths]

    def manifest(self, table: str, ingest_date: date) -> Manifest | None:
        """The committed manifest of one partition, if any."""
        path = f"{self.partition_dir(table, ingest_date)}/{MANIFEST}"
        if not self.fs.exists(path):
            return None
        return Manifest.from_json(self.fs.cat_file(path).decode())

    def write_encoded(self, table: str, ingest_date: date, encoded: EncodedFile, *, quarantine: bool) -> PartFile:
        """Write an already encoded file (see `encode_parquet`) into the partition, uncommitted."""
        folder = self._partition(table, ingest_date)
        if quarantine:
            folder = f"{folder}/{QUARANTINE_DIR}"
        name = f"{'quarantine' if quarantine else 'part'}-{uuid.uuid4().hex}.parquet"
        path = f"{folder}/{name}"
        self._write_bytes(self.locate(path), encoded.payload)
        return PartFile(path=path, rows=encoded.rows, sha256=encoded.sha256, schema=encoded.schema)

    def stage_file(self, table: str, ingest_date: date) -> StagedFile:
        """A local file to stream a new data file into, placed in the partition by `StagedFile.place`.

        On a local lake it sits in the partition under a temporary name (the next commit of the
        partition removes it if the writer dies); on object storage it sits in the cache folder
        (or the system's temporary folder) until it is uploaded whole.
        """
        name = f"part-{uuid.uuid4().hex}.parquet"
        path = f"{self._partition(table, ingest_date)}/{name}"
        if self._local:
            target = self.locate(path)
            folder = os.path.dirname(target)
            os.makedirs(folder, exist_ok=True)
            for stale in Path(folder).glob("*.tmp-*"):  # a writer killed mid-write (ingest holds the lock)
                stale.unlink(missing_ok=True)
            return StagedFile(self, path, f"{target}.tmp-{uuid.uuid4().hex}")
        if self.cache_dir is not None:
            staging = self.cache_dir / "staging"
            if staging.exists():  # a writer that died before uploading (ingest holds the workspace lock)
                for stale in staging.iterdir():
                    stale.unlink(missing_ok=True)
            staging.mkdir(parents=True, exist_ok=True)
            return StagedFile(self, path, str(staging / name))
        handle, local = tempfile.mkstemp(suffix=".parquet")
        os.close(handle)
        return StagedFile(self, path, local)

    def commit(self, table: str, ingest_date: date, parts: list[Part], replace_source: str | None) -> Manifest:
        """Publish parts in one atomic step and remove files no manifest references.

        Args:
            table: Raw table.
            ingest_date: The partition's date.
            parts: New parts, their files already written (`write_encoded`, `stage_file`).
            replace_source: If given, that source's existing parts in the partition are
                replaced (a rerun of a batch source); otherwise parts are added (a stream).

        Returns:
            The manifest now in force.
        """
        current = self.manifest(table, ingest_date)
        kept = [p for p in (current.parts if current else []) if p.source != replace_source]
        held = {(p.source, p.data.sha256) for p in kept + parts}
        # a part set aside whose content the partition holds again is not kept twice
        aside = [a for a in (current.set_aside if current else []) if (a.part.source, a.part.data.sha256) not in held]
        return self._publish(Manifest(table, ingest_date.isoformat(), kept + parts, _now(), aside))

    def set_aside(self, table: str, ingest_date: date, sources: Iterable[str], reason: str) -> list[Part]:
        """Take the parts of `sources` out of a partition in one atomic step, keeping their files.

        Readers no longer see their rows, and the sources' next ingest of the date starts as if
        they had never been read; the files stay, listed under the manifest's `set_aside`.

        Returns:
            The parts set aside (none when the partition holds none of those sources).
        """
        current = self.manifest(table, ingest_date)
        names = set(sources)
        moved = [p for p in (current.parts if current else []) if p.source in names]
        if current is None or not moved:
            return []
        at = _now()
        aside = current.set_aside + [SetAside(p, reason, at) for p in moved]
        kept = [p for p in current.parts if p.source not in names]
        self._publish(Manifest(table, current.ingest_date, kept, at, aside))
        return moved

    def recovered(self, table: str, ingest_date: date, path: str) -> None:
        """Record that a stream read took the entries of the part set aside at `path` again."""
        current = self.manifest(table, ingest_date)
        if current is None:
            return
        at = _now()
        aside = [
            replace(a, recovered=at) if a.part.data.path == path and not a.recovered else a for a in current.set_aside
        ]
        if aside != current.set_aside:
            self._publish(replace(current, set_aside=aside))

    def _publish(self, manifest: Manifest) -> Manifest:
        day = date.fromisoformat(manifest.ingest_date)
        path = f"{self.partition_dir(manifest.table, day)}/{MANIFEST}"
        self._write_bytes(path, manifest.to_json().encode())
        self._remove_unreferenced(manifest.table, day, manifest)
        return manifest

    def data_files(self, table: str) -> list[str]:
        """Committed data files of `table` for a query engine, oldest partition first.

        On object storage with a `cache_dir`, these are local copies, fetched once per file and
        checked against the manifest's sha256 (data files are immutable, so a copy never goes
        stale); DuckDB and a local Spark then read them without an S3 extension or connector.
        Without a cache they are full URIs.
        """
        parts = [p for m in self.manifests(table) for p in m.parts]
        if self._local or self.cache_dir is None:
            return self._data_uris(parts)
        folder = self.cache_dir / table
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {f"{p.data.sha256}.parquet": p for p in parts}
        for stale in set(os.listdir(folder)) - set(wanted):
            (folder / stale).unlink(missing_ok=True)  # a replaced partition's file
        for name, part in wanted.items():
            if not (folder / name).exists():
                payload = self.fs.cat_file(self.locate(part.data.path))
                if hashlib.sha256(payload).hexdigest() != part.data.sha256:
                    raise LakeError(f"{self._full(self.locate(part.data.path))} does not match its manifest's sha256")
                write_local_atomic(str(folder / name), payload)
        return [str(folder / f"{p.data.sha256}.parquet") for p in parts]

    def _data_uris(self, parts: list[Part]) -> list[str]:
        return [self._full(self.locate(p.data.path)) for p in parts]

    def quarantine_files(self, table: str) -> list[str]:
        """Committed quarantine files of `table` as full URIs."""
        return [
            self._full(self.locate(p.quarantine.path))
            for m in self.manifests(table)
            for p in m.parts
            if p.quarantine is not None
        ]

    def read(self, table: str, columns: list[str] | None = None, *, quarantine: bool = False) -> pd.DataFrame:
        """All committed rows of a table (or its quarantine) as one frame."""
        if quarantine:
            files = self.quarantine_files(table)
        else:  # the objects themselves (read through the lake's filesystem), not cached copies
            files = self._data_uris([p for m in self.manifests(table) for p in m.parts])
        if not files:
            return pd.DataFrame(columns=columns or [])
        tables = [pq.read_table(p.split("://", 1)[-1], columns=columns, filesystem=self.fs) for p in files]
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def read_column(self, table: str, column: str, exclude: Iterable[str] = ()) -> pa.ChunkedArray:
        """One column over all committed data files, skipping the paths in `exclude`."""
        skip = set(exclude)
        arrays: list[pa.ChunkedArray] = []
        for m in self.manifests(table):
            for p in m.parts:
                if p.data.path in skip or column not in {name for name, _ in p.data.schema}:
                    continue
                arrays.append(pq.read_table(self.locate(p.data.path), columns=[column], filesystem=self.fs)[column])
        if not arrays:
            return pa.chunked_array([], type=pa.null())
        return pa.chunked_array([c for a in arrays for c in a.chunks])

    def _full(self, path: str) -> str:
        if self._local:
            return path
        protocol = _protocols(self.fs)[0]
        return f"{protocol}://{path}"

    def _write_bytes(self, path: str, payload: bytes) -> None:
        if self._local:
            write_local_atomic(path, payload)
        else:
            self.fs.pipe_file(path, payload)

    def _remove_unreferenced(self, table: str, ingest_date: date, manifest: Manifest) -> None:
        folder = self.partition_dir(table, ingest_date)
        parts = manifest.parts + [a.part for a in manifest.set_aside]
        referenced = {self.locate(p.data.path) for p in parts}
        referenced |= {self.locate(p.quarantine.path) for p in parts if p.quarantine}
        for path in self.fs.find(folder):
            name = path.rsplit("/", 1)[-1]
            if (name.endswith(".parquet") and path not in referenced) or ".tmp-" in name:
                self.fs.rm_file(path)


@dataclass(frozen=True)
class StagedFile:
    """A data file being written locally before it joins its partition (see `RawLake.stage_file`)."""

    lake: RawLake
    path: str
    local: str

    def sha256(self) -> str:
        """The hash of the bytes written so far (the whole file once its writer is closed)."""
        digest = hashlib.sha256()
        with open(self.local, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()

    def place(self, rows: int, schema: pa.Schema, sha256: str) -> PartFile:
        """Move the finished file into its partition, still uncommitted; returns its manifest entry."""
        lake = self.lake
        if lake._local:
            with open(self.local, "rb") as handle:
                os.fsync(handle.fileno())
            target = lake.locate(self.path)
            os.replace(self.local, target)
            _fsync_dir(os.path.dirname(target))
        else:
            lake.fs.put_file(self.local, lake.locate(self.path))
            os.unlink(self.local)
        return PartFile(path=self.path, rows=rows, sha256=sha256, schema=[[f.name, str(f.type)] for f in schema])

    def discard(self) -> None:
        """Remove the local file (nothing of it reached the partition)."""
        Path(self.local).unlink(missing_ok=True)


@dataclass(frozen=True)
class EncodedFile:
    """A frame encoded as Parquet bytes, with what its manifest entry records."""

    payload: bytes
    rows: int
    sha256: str
    schema: list[list[str]]


def encode_parquet(frame: pd.DataFrame) -> EncodedFile:
    """Encode a frame (index dropped) as zstd Parquet and hash the bytes, before writing anything."""
    table_arrow = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table_arrow, buffer, compression="zstd")
    payload = buffer.getvalue()
    schema = [[f.name, str(f.type)] for f in table_arrow.schema]
    return EncodedFile(payload, len(frame), hashlib.sha256(payload).hexdigest(), schema)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def write_local_atomic(path: str, payload: bytes) -> None:
    """Write to a temp name, fsync, rename over the target, fsync the directory."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
