"""Readers for the four source kinds: SQL, files, HTTP JSON API and Redis stream.

Each reader returns a `Batch` in the source's own column names plus the watermark that
identifies what it read, so a rerun of the same ingest date reads the same range again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, TypeAlias, TypeVar

import fsspec
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from churnops.data.mapping import TEXT, parse_timestamps
from churnops.settings import FileSource, HttpSource, Source, SqlSource, StreamSource

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source could not be read; the message names the source and the cause."""


class FileFailedError(RuntimeError):
    """A file that read well once failed part-way through a later read of the same batch."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


T = TypeVar("T")


@dataclass(frozen=True)
class EventWindow:
    """The rows of an event table that belong to one ingest date: those whose event time is
    before the end of its data interval, and not read by an earlier date.

    Attributes:
        column: The source's event-time column.
        fmt: Its date format (`Source.date_formats`), or None for ISO 8601.
        until: End of the data interval (the ingest date's midnight, UTC): later rows wait.
        file_from: Files earlier dates read part of -> the time their rows start from here.
        file_cap: Files a later date read part of -> the time it read from (rows before it only).
    """

    column: str
    fmt: str | None
    until: datetime
    file_from: Mapping[str, datetime] = field(default_factory=dict)
    file_cap: Mapping[str, datetime] = field(default_factory=dict)

    def times(self, values: pd.Series) -> pd.Series:
        """The event times of a column's raw values (NaT where unparseable)."""
        return parse_timestamps(values.reset_index(drop=True), self.fmt)


@dataclass(frozen=True)
class ReadState:
    """What earlier runs read from a source, as recorded in the lake's manifests.

    Attributes:
        low: Watermark after which this run starts (the high mark before its ingest date).
        cap: Watermark this run must not pass (the low mark of a later ingest date), so a
            rerun of an earlier date reads exactly its own range again.
        files_elsewhere: Files already ingested under other ingest dates.
        stream_parts: The first and last entry id (as `stream_id_key`s) of each stream part
            in the lake.
        events: For an event table (orders): the rows of this date's data interval.
        exhausted: A later date read this incremental source from its start: nothing is left
            for this date.
        stream_reread: Stream parts set aside and not yet read again whole: first and last
            entry id, entry count, partition date and data file. Their entries were acknowledged
            when first read; they are read again by id range.
    """

    low: Any = None
    cap: Any = None
    files_elsewhere: frozenset[str] = frozenset()
    stream_parts: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = ()
    events: EventWindow | None = None
    stream_reread: tuple[tuple[str, str, int, str, str], ...] = ()
    exhausted: bool = False


@dataclass
class Batch:
    """Rows read from a source, what identifies them, and what to do once they are durable.

    A file source's rows stay in their files (`files`) and are read chunk by chunk; the other
    kinds hold theirs in `frame`. Read them through `chunks` either way.
    """

    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    watermark: dict[str, Any] = field(default_factory=dict)
    on_committed: Callable[[], None] | None = None
    bad_files: list[BadFile] = field(default_factory=list)
    files: FileRows | None = None
    recheck: Any = None  # a stream's rows that may be in the lake already (see `read_stream`)
    recovered: list[tuple[str, str]] = field(default_factory=list)  # parts set aside now read again whole
    warning: str = ""  # what the user should know though nothing failed (a path that matches no file)

    def chunks(self, rows: int, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """The batch in frames of at most `rows` rows, each labelled by its rows' batch positions.

        Args:
            rows: The largest chunk.
            columns: Only these source columns (those the batch has); default all.

        Raises:
            FileFailedError: A file read well before failed part-way this time (it is not set aside
                here: the caller sets it aside and starts again).
        """
        if self.files is not None:
            yield from self.files.chunks(rows, columns)
            return
        frame = self.frame.reset_index(drop=True)
        if columns is not None:
            frame = frame[[c for c in columns if c in frame.columns]]
        for start in range(0, len(frame), rows):
            yield frame.iloc[start : start + rows]

    def located(self, quarantined: pd.DataFrame) -> pd.DataFrame:
        """Quarantine rows of the last `chunks` with the file and the row in it each came from
        (file sources; other sources' rows keep them empty)."""
        if self.files is None or quarantined.empty:
            return quarantined
        files, rows = self.files.locate(quarantined["row_number"].to_numpy(dtype=np.int64))
        return quarantined.assign(file=pd.array(files, dtype="string"), file_row=pd.array(rows, dtype="Int64"))

    def scan(self, rows: int, columns: Sequence[str], each: Callable[[pd.DataFrame], T]) -> list[T]:
        """`each` of every chunk of `columns`, in order; first read of a file source's files.

        A file that fails part-way, or has no rows, is set aside whole with its reason and what
        `each` made of it is dropped, so the batch's positions count the readable files only.
        """
        if self.files is not None:
            return self.files.scan(rows, columns, each, self.bad_files)
        return [each(chunk) for chunk in self.chunks(rows, columns)]

    def set_aside(self, failure: FileFailedError) -> None:
        """Set a file aside whole after it failed part-way through a read."""
        if self.files is None:
            raise failure
        self.files.drop(failure.name)
        self.bad_files.append(BadFile(failure.name, failure.reason))


def read_source(source: Source, state: ReadState, required: Mapping[str, str] | None = None) -> Batch:
    """Read the next batch from any configured source.

    Args:
        source: The source's settings.
        state: What earlier runs read (see `ReadState`).
        required: Contract column -> source column a batch must have (files lacking one are
            set aside whole).

    Returns:
        The batch, with raw values in the source's own column names.
    """
    if isinstance(source, SqlSource):
        return read_sql(source, state)
    if isinstance(source, FileSource):
        return read_files(source, state, required or {})
    if isinstance(source, HttpSource):
        return read_http(source, state)
    return read_stream(source, state)


def encode_mark(value: Any) -> Any:
    """A watermark value as stored in a manifest (JSON)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return {"datetime": pd.Timestamp(value).isoformat()}
    if hasattr(value, "item"):
        return value.item()
    return value


def decode_mark(value: Any) -> Any:
    """The inverse of `encode_mark`."""
    if isinstance(value, dict) and "datetime" in value:
        return pd.Timestamp(value["datetime"]).to_pydatetime()
    return value


# --- SQL ---------------------------------------------------------------------------------


def read_sql(source: SqlSource, state: ReadState) -> Batch:
    """Read a table or query through SQLAlchemy, incrementally by the watermark column."""
    import sqlalchemy as sa

    base = source.query or f"SELECT * FROM {_quote_ident(source.source_table or '')}"
    try:
        engine = sa.create_engine(source.url)
        with engine.connect() as conn:
            if source.watermark is None:
                frame = _read_sql_chunks(conn, sa.text(base), {}, source.chunk_size)
                return Batch(*within_interval(frame, {"mode": "snapshot"}, None, state))
            wm = _quote_ident(source.watermark)
            high = None if state.exhausted else conn.execute(sa.text(f"SELECT MAX({wm}) FROM ({base}) AS q")).scalar()
            if high is None:
                mark = {"mode": "incremental", "column": source.watermark}
                mark |= {"low": encode_mark(state.low), "high": encode_mark(state.low)}
                return Batch(pd.DataFrame(), mark)
            if state.cap is not None and _after(high, state.cap):
                high = state.cap
            where = [f"{wm} <= :high"]
            params: dict[str, Any] = {"high": high}
            if state.low is not None:
                where.append(f"{wm} > :low")
                params["low"] = _like(state.low, high)
            sql = sa.text(f"SELECT * FROM ({base}) AS q WHERE {' AND '.join(where)} ORDER BY {wm}")
            frame = _read_sql_chunks(conn, sql, params, source.chunk_size)
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(f"source {source.name!r}: SQL read failed: {exc}") from exc
    mark = {"mode": "incremental", "column": source.watermark}
    mark |= {"low": encode_mark(state.low), "high": encode_mark(high)}
    return Batch(*within_interval(frame, mark, source.watermark, state))


def within_interval(
    frame: pd.DataFrame, mark: dict[str, Any], watermark: str | None, state: ReadState
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of a read that belong to its date's data interval (`ReadState.events`).

    Rows are taken in watermark order up to the first row of a later interval, and the high
    mark stops before it, so the next date reads that row and everything after it: nothing is
    skipped even when the watermark is not the event time (an id, an update time). A row
    whose event time cannot be parsed stays (validation quarantines it). Without a watermark
    (a snapshot) the rows of later intervals are left out.

    Returns:
        The rows kept and the watermark, with `held_back` rows counted when any wait.
    """
    events = state.events
    if events is None or frame.empty or events.column not in frame.columns:
        return frame, mark
    later = (events.times(frame[events.column]) >= events.until).to_numpy()
    if not later.any():
        return frame, mark
    if watermark is None or watermark not in frame.columns:
        return frame[~later].reset_index(drop=True), mark | {"held_back": int(later.sum())}
    marks = frame[watermark].reset_index(drop=True)
    first = marks[later].dropna().min()
    # a later row without a watermark cannot stop the read: it waits, the others are cut as usual
    keep = ~later if pd.isna(first) else (marks < first).to_numpy()
    kept = frame[keep].reset_index(drop=True)
    high = kept[watermark].max() if len(kept) else state.low
    return kept, mark | {"high": encode_mark(high), "held_back": int((~keep).sum())}


def _read_sql_chunks(conn: Any, sql: Any, params: dict[str, Any], chunk_size: int) -> pd.DataFrame:
    chunks = list(pd.read_sql(sql, conn, params=params, chunksize=chunk_size))
    if not chunks:
        return pd.DataFrame()
    return pd.concat(chunks, ignore_index=True)


def _quote_ident(name: str) -> str:
    if not name.replace("_", "").replace(".", "").isalnum():
        raise SourceError(f"not a plain SQL identifier: {name!r}")
    return ".".join(f'"{part}"' for part in name.split("."))


def _after(value: Any, other: Any) -> bool:
    return bool(_like(value, other) > _like(other, value))


def _like(value: Any, reference: Any) -> Any:
    """Convert a stored watermark to the type the database returns, for comparison."""
    if isinstance(reference, datetime) and isinstance(value, str):
        return datetime.fromisoformat(value)
    if isinstance(reference, str) and isinstance(value, datetime):
        return value.isoformat(sep=" ") if " " in reference else value.isoformat()
    return value


# --- files -------------------------------------------------------------------------------

DERIVED_ORDER_ID = "__churnops_order_id"  # the column `derive_order_id` adds
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class BadFile:
    """A file quarantined whole: it could not be read as a batch of rows."""

    name: str
    reason: str


def source_base(path: str) -> str:
    """The folder a file source's names are relative to: the path up to its first glob part."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARS):
            return "/".join(parts[:i])
    return "/".join(parts[:-1])


def read_files(source: FileSource, state: ReadState, required: Mapping[str, str] | None = None) -> Batch:
    """Open CSV, Parquet or JSONL files matched by a path or glob, local or remote.

    Files are named relative to the source's folder (the path up to its first glob part), so a
    moved or copied workspace recognises the files it already ingested. A file that cannot be
    read as rows (unreadable, binary, empty, header only, a field longer than the reader's
    block, a required column missing) is set aside whole with its reason, and the others are
    read. Parquet and CSV files are read in chunks when the batch is read (`Batch.chunks`),
    so memory does not grow with a file's size; JSONL and whitespace-aligned files are read
    whole.

    Args:
        source: The source's settings.
        state: What earlier runs read.
        required: Contract column -> source column every file must have.

    Returns:
        The batch, its rows still in the files, with `bad_files` for the rest.
    """
    try:
        fs, pattern = fsspec.core.url_to_fs(source.path, **source.storage_options)
        matched = sorted(fs.glob(pattern))
    except (OSError, ValueError) as exc:
        raise SourceError(f"source {source.name!r}: cannot list {source.path}: {exc}") from exc
    base = source_base(pattern)
    named = [(path, path[len(base) :].lstrip("/") if base else path) for path in matched]
    if source.mode == "incremental":
        named = [(path, name) for path, name in named if name not in state.files_elsewhere]
    opened: list[_SourceFile] = []
    bad: list[BadFile] = []
    for path, name in named:
        try:
            one = _open_file(fs, path, name, source)
        except _BadFileError as exc:
            bad.append(BadFile(name, str(exc)))
            continue
        missing = [
            f"{c} (looked for {s!r})"
            for c, s in (required or {}).items()
            if s not in one.columns and s != DERIVED_ORDER_ID
        ]
        if missing:
            has = ", ".join(map(str, one.columns))
            bad.append(BadFile(name, f"missing required column(s) {', '.join(missing)}; it has: {has}"))
            continue
        if one.whole is not None and one.whole.empty:
            bad.append(BadFile(name, "no rows (header only)"))
            continue
        opened.append(one)
    if named and not opened and all(b.reason.startswith("missing required column") for b in bad):
        # every file lacks a column: the configuration's mapping is wrong, not one file
        raise SourceError(
            f"source {source.name!r}: no file has the required columns: {bad[0].reason}; nothing published"
        )
    mark = {"mode": source.mode, "files": [name for _, name in named]}
    events = state.events
    if events is not None and source.mode == "snapshot":  # the files as of the date, whole each time
        events = replace(events, file_from={}, file_cap={})
    warning = "" if matched else f"{_shown_path(source.path)} matches no file"
    return Batch(watermark=mark, bad_files=bad, files=FileRows(fs, opened, source, events), warning=warning)


def _shown_path(path: str) -> str:
    """A source path as the user should read it: a local relative path made absolute, since it
    is read from the current directory, not the settings file's."""
    if "://" in path or os.path.isabs(path):
        return path
    return f"{path} (from {os.getcwd()})"


@dataclass
class _SourceFile:
    """One readable file of a file source: where, its name in the manifest, format and columns."""

    path: str
    name: str
    fmt: str
    columns: list[str]
    whole: pd.DataFrame | None = None  # formats read whole (JSONL, whitespace-aligned text)
    meta: Any = None  # a Parquet file's metadata (its row groups' statistics)


@dataclass
class _FileWindow:
    """The event-time range of one file this date reads, and what its first read found."""

    start: datetime | None
    end: datetime
    masks: list[Any] | None = None  # per piece, from the first read; later reads reuse them
    taken: int = 0
    later: int = 0


@dataclass(frozen=True)
class _Origin:
    """Where one piece of a chunk came from: its file, the file row (from 0) the piece's read
    began at, and which of the rows read from there it kept (None: all)."""

    name: str
    first: int
    keep: Any


class FileRows:
    """The rows of a file source's readable files, read chunk by chunk in file order.

    With an `EventWindow`, only the rows of the date's data interval are read: each file's
    rows from where an earlier date stopped reading it (`file_from`) to the interval's end, or
    to where a later date started (`file_cap`). What a file holds past the end waits for a
    later date, which reads the file again from there (`marks`).
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        files: list[_SourceFile],
        source: FileSource,
        events: EventWindow | None = None,
    ) -> None:
        self.fs = fs
        self.files = files
        self.source = source
        self.events = events
        self.windows: dict[str, _FileWindow] = {}
        self._origins: list[_Origin] = []  # of the pieces of the last `chunks`, by position
        self._starts: list[int] = []
        if events is not None:
            for one in files:
                start = events.file_from.get(one.name)
                end = min(events.until, events.file_cap.get(one.name, events.until))
                if start is not None or not _all_before(one, events.column, end):
                    self.windows[one.name] = _FileWindow(start, end)

    def drop(self, name: str) -> None:
        """Stop reading the file `name` (it is set aside whole: no row of it waits)."""
        self.files = [f for f in self.files if f.name != name]
        self.windows.pop(name, None)

    def marks(self, named: list[str]) -> dict[str, Any]:
        """The watermark of the files read (`named`, every file listed, set aside or not): those
        read to their end (`files`), those with rows left for later dates (`partial`: where
        they stop), those read from where an earlier date stopped (`resumed`); a file that
        gave this date no row and has rows for a later one is not listed (it waits)."""
        waiting = {n for n, w in self.windows.items() if w.taken == 0 and w.later}
        partial = {n: w.end.isoformat() for n, w in self.windows.items() if w.taken and w.later}
        resumed = {n: w.start.isoformat() for n, w in self.windows.items() if w.start is not None and w.taken}
        mark: dict[str, Any] = {"files": [n for n in named if n not in waiting and n not in partial]}
        if partial:
            mark["partial"] = partial
        if resumed:
            mark["resumed"] = resumed
        if waiting:
            mark["waiting"] = len(waiting)
        later = sum(w.later for w in self.windows.values())
        if later:
            mark["held_back"] = later
        return mark

    def scan(self, rows: int, columns: Sequence[str], each: Callable[[pd.DataFrame], T], bad: list[BadFile]) -> list[T]:
        """See `Batch.scan`. Files smaller than `rows` are joined once read whole (a failing one
        then has nothing to undo); a larger file's chunks go to `each` as they come."""
        results: list[T] = []
        pending: list[_Piece] = []
        held = 0

        def flush() -> None:
            nonlocal held
            if pending:
                results.append(each(_joined(pending)))
                pending.clear()
                held = 0

        for one in list(self.files):
            pieces: list[_Piece] = []  # while the file may still be small
            mine: list[T] = []  # once it is not
            count = 0
            try:
                for piece in self._read(one, rows, columns):
                    count += len(piece)
                    pieces.append(piece)
                    if count >= rows:
                        mine.extend(each(_joined([p])) for p in pieces)
                        pieces = []
            except _BadFileError as exc:
                self.drop(one.name)
                bad.append(BadFile(one.name, str(exc)))
                continue
            if count == 0:
                window = self.windows.get(one.name)
                if window is not None and window.later:  # its rows are a later date's: it waits
                    self.files = [f for f in self.files if f.name != one.name]
                else:
                    self.drop(one.name)
                    bad.append(BadFile(one.name, "no rows (header only)"))
                continue
            if mine:
                flush()
                results.extend(mine)
                results.extend(each(_joined([p])) for p in pieces)
                continue
            for piece in pieces:
                if held and held + len(piece) > rows:
                    flush()
                pending.append(piece)
                held += len(piece)
        flush()
        return results

    def chunks(self, rows: int, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """See `Batch.chunks`. Small files are joined into chunks of up to `rows` rows: a year of
        daily files is a few chunks to validate, not hundreds."""
        position = 0
        pending: list[_Piece] = []
        held = 0
        self._origins, self._starts = [], []

        def joined() -> pd.DataFrame:
            frame = _joined(pending)
            frame.index = pd.RangeIndex(position, position + len(frame))
            return frame

        for one in self.files:
            try:
                for piece in self._read(one, rows, columns, self._origins):
                    if held and held + len(piece) > rows:
                        yield joined()
                        position += held
                        pending, held = [], 0
                    self._starts.append(position + held)
                    pending.append(piece)
                    held += len(piece)
            except _BadFileError as exc:
                raise FileFailedError(one.name, str(exc)) from exc
        if pending:
            yield joined()

    def locate(self, positions: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The file and the row in it (counted from 1 after any header, as `derive_order_id`
        counts) of batch positions that the last `chunks` read."""
        files: list[str] = [""] * len(positions)
        file_rows = np.zeros(len(positions), dtype=np.int64)
        which = np.searchsorted(np.asarray(self._starts, dtype=np.int64), positions, side="right") - 1
        for segment in np.unique(which):
            at = np.flatnonzero(which == segment)
            origin = self._origins[segment]
            offsets = positions[at] - self._starts[segment]
            taken = offsets if origin.keep is None else np.flatnonzero(origin.keep)[offsets]
            file_rows[at] = origin.first + taken + 1
            for i in at:
                files[i] = origin.name
        return files, file_rows

    def _read(
        self, one: _SourceFile, rows: int, columns: Sequence[str] | None, origins: list[_Origin] | None = None
    ) -> Iterator[_Piece]:
        """A file's pieces (the date's rows only, with a window); with `origins`, each piece's
        origin is appended there before the piece is yielded."""
        wanted = None if columns is None else [c for c in columns if c in one.columns]
        derive = self.source.derive_order_id and (columns is None or DERIVED_ORDER_ID in columns)
        window = self.windows.get(one.name)
        masks: list[Any] = []  # of this first read, when the window has none yet
        later = 0
        event = self.events.column if self.events is not None else ""
        extra = window is not None and window.masks is None and wanted is not None and event not in wanted
        read = [*wanted, event] if extra and wanted is not None else wanted
        numbered = 0
        for index, piece in enumerate(self._pieces(one, rows, read)):
            if derive:
                ids = [f"{one.name}#{i}" for i in range(numbered + 1, numbered + len(piece) + 1)]
                if isinstance(piece, pa.Table):
                    piece = piece.append_column(DERIVED_ORDER_ID, pa.array(ids, pa.string()))
                else:
                    piece[DERIVED_ORDER_ID] = pd.array(ids, dtype=TEXT)
            first = numbered
            numbered += len(piece)
            keep = None
            if window is not None:
                if window.masks is None:
                    keep, waiting = self._keep(window, piece, event)
                    masks.append(keep)
                    later += waiting
                elif index < len(window.masks) and len(window.masks[index]) == len(piece):
                    keep = window.masks[index]
                else:  # pieces cut otherwise than the first read's: choose again
                    keep, _ = self._keep(window, piece, event)
                piece = _filtered(piece, keep, event if extra else None)
            if origins is not None:
                origins.append(_Origin(one.name, first, keep))
            yield piece
        if window is not None and window.masks is None:  # the first read of the file ended well
            window.masks = masks
            window.taken = sum(int(m.sum()) for m in masks)
            window.later = later

    def _keep(self, window: _FileWindow, piece: _Piece, event: str) -> tuple[Any, int]:
        """Which rows of a piece the date reads, and how many a later date reads."""
        assert self.events is not None
        values = (
            piece.column(event).to_pandas(types_mapper=_text_types) if isinstance(piece, pa.Table) else piece[event]
        )
        times = self.events.times(values)
        keep = (times < window.end) | times.isna()
        if window.start is not None:  # an earlier date read the rows before, and those without a time
            keep &= times >= window.start
        return keep.to_numpy(), int((times >= window.end).sum())

    def _pieces(self, one: _SourceFile, rows: int, columns: list[str] | None) -> Iterator[_Piece]:
        """A file's rows, at most `rows` at a time: Arrow tables for Parquet and CSV (joined in
        Arrow and turned into pandas once per chunk), frames for the formats read whole."""
        if one.whole is not None:
            picked = one.whole if columns is None else one.whole[columns]
            for start in range(0, len(picked), rows):
                yield picked.iloc[start : start + rows].copy()
            return
        try:
            with self.fs.open(one.path, "rb", compression="infer") as handle:
                if one.fmt == "parquet":
                    # a local file without pre-buffering: it holds each row group's raw column
                    # chunks besides the decoded batches (140 MB more at 10M orders), to save
                    # round trips that only object stores have
                    local = isinstance(self.fs, LocalFileSystem)
                    batches = pq.ParquetFile(handle, pre_buffer=not local).iter_batches(
                        batch_size=rows, columns=columns
                    )
                else:
                    batches = _csv_batches(handle, _delimiter(self.source, one.path), one.columns, columns)
                for record_batch in batches:
                    yield pa.Table.from_batches([record_batch])
        except (OSError, ValueError, EOFError, zlib.error, pa.ArrowException) as exc:  # a broken file, not a bug
            raise _BadFileError(_reading_problem(one.fmt, exc)) from exc


_Piece: TypeAlias = pd.DataFrame | pa.Table


def _filtered(piece: _Piece, keep: Any, drop: str | None) -> _Piece:
    """The rows of a piece to keep, without the column `drop` (read only to choose them)."""
    if isinstance(piece, pa.Table):
        table = piece.filter(pa.array(keep))
        return table.drop_columns([drop]) if drop else table
    frame = piece[keep].reset_index(drop=True)
    return frame.drop(columns=[drop]) if drop else frame


def _all_before(one: _SourceFile, column: str, end: datetime) -> bool:
    """A Parquet file whose statistics show every event time before `end` (no row needs a
    look); False when they cannot tell (other formats, text times, missing statistics)."""
    if one.meta is None or column not in one.columns:
        return False
    meta = one.meta
    if not pa.types.is_timestamp(meta.schema.to_arrow_schema().field(column).type):
        return False
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if column not in paths:
        return False
    position = paths.index(column)
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(position).statistics
        if stats is None or not stats.has_min_max:
            return False
        newest = pd.Timestamp(stats.max)
        if newest.tzinfo is not None:
            newest = newest.tz_convert("UTC").tz_localize(None)
        if newest >= pd.Timestamp(end):
            return False
    return True


def _joined(pieces: Sequence[_Piece]) -> pd.DataFrame:
    """Pieces of one or more files as one frame, columns in order of first appearance.

    Arrow pieces are joined in Arrow when their types agree (one conversion to pandas, not one
    a file); otherwise, or with frames among them, each becomes a frame and pandas joins them.
    """
    tables = [p for p in pieces if isinstance(p, pa.Table)]
    if len(tables) == len(pieces):
        try:
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
            joined: pd.DataFrame = table.to_pandas(types_mapper=_text_types)
            return joined
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # files whose columns differ in type: pandas' rules decide, as for any frames
    frames = [p.to_pandas(types_mapper=_text_types) if isinstance(p, pa.Table) else p for p in pieces]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


class _BadFileError(ValueError):
    """This one file cannot be read as rows."""


def _text_types(arrow_type: pa.DataType) -> Any:
    """Arrow text stays Arrow text in pandas (see `mapping.TEXT`)."""
    return TEXT if arrow_type in (pa.string(), pa.large_string()) else None


def _open_file(fs: fsspec.AbstractFileSystem, path: str, name: str, source: FileSource) -> _SourceFile:
    """Check a file can be read as rows and learn its columns, without reading its rows."""
    fmt = source.format or _format_from_suffix(path)
    delimiter = _delimiter(source, path)
    try:
        with fs.open(path, "rb", compression="infer") as handle:
            head = handle.read(8192)
            if not head:
                raise _BadFileError("empty file")
            if fmt != "parquet" and b"\x00" in head:
                raise _BadFileError(f"binary content, not {fmt} text")
            handle.seek(0)
            whole, meta = None, None
            if fmt == "parquet":
                meta = pq.ParquetFile(handle).metadata
                columns = meta.schema.to_arrow_schema().names
            elif fmt == "jsonl":
                whole = pd.read_json(handle, lines=True, dtype=False, convert_dates=False)
                columns = list(whole.columns)
            elif delimiter == "whitespace":
                whole = pd.read_csv(
                    handle, sep=r"\s+", dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
                )
                columns = list(whole.columns)
            else:
                first = handle.readline().decode("utf-8-sig")
                columns = next(csv.reader(io.StringIO(first), delimiter=delimiter), [])
    except _BadFileError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, pa.ArrowException) as exc:  # a broken file, not a bug
        raise _BadFileError(_reading_problem(fmt, exc)) from exc
    if not columns:
        raise _BadFileError("no rows")
    return _SourceFile(path, name, fmt, [str(c) for c in columns], whole, meta if fmt == "parquet" else None)


def _reading_problem(fmt: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "straddling" in text or ("block" in text.lower() and "size" in text.lower()):
        return f"a field is longer than the reader's block of {_block_bytes():,} bytes ({text})"
    return f"cannot be read as {fmt}: {text}"


CSV_BLOCK_BYTES = 1 << 24  # pyarrow reads CSV in blocks; a row may span two of them, not more


def _block_bytes() -> int:
    return CSV_BLOCK_BYTES


def _csv_batches(handle: Any, delimiter: str, names: list[str], columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """Record batches of a CSV file with every column read as text, so parsing, not the reader,
    decides what is valid; CRLF line ends are read like LF."""
    import pyarrow.csv as pacsv

    size = getattr(handle, "size", None)  # unknown for compressed files
    reader = pacsv.open_csv(
        handle,
        # a file within one block has nothing to read ahead: threads only cost their start (0.4 ms)
        read_options=pacsv.ReadOptions(
            block_size=_block_bytes(), encoding="utf8", use_threads=size is None or size > _block_bytes()
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            include_columns=columns,
        ),
    )
    yield from reader


SUFFIXES = ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "csv"))


def _format_from_suffix(path: str) -> str:
    for suffix, fmt in SUFFIXES:
        if _has_suffix(path, suffix):
            return fmt
    raise SourceError(f"cannot tell the format of {path}; set `format` on the source")


def _has_suffix(path: str, suffix: str) -> bool:
    lowered = path.lower()
    return lowered.endswith(suffix) or lowered.endswith(suffix + ".gz")


def _delimiter(source: FileSource, path: str) -> str:
    """The source's `csv_delimiter`; unset, a tab for a `.tsv` file and a comma for any other."""
    if source.csv_delimiter is not None:
        return source.csv_delimiter
    return "\t" if _has_suffix(path, ".tsv") else ","


# --- HTTP --------------------------------------------------------------------------------


RETRY_STATUS = {429, 500, 502, 503, 504}


def read_http(source: HttpSource, state: ReadState) -> Batch:
    """Read every page of a JSON API, with timeouts, retries and exponential backoff."""
    if state.exhausted and source.watermark:
        nothing = {"mode": "incremental", "column": source.watermark, "low": state.low, "high": encode_mark(state.low)}
        return Batch(pd.DataFrame(), nothing)
    params: dict[str, Any] = {source.page_size_param: source.page_size}
    if source.watermark and state.low is not None:
        params[source.watermark_param] = state.low
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    page = 1
    with httpx.Client(timeout=source.timeout_s, headers=source.headers) as client:
        while True:
            query = dict(params)
            if source.pagination == "cursor" and cursor is not None:
                query[source.cursor_param] = cursor
            elif source.pagination == "page":
                query[source.page_param] = page
            body = _get_json(client, source, query)
            page_items = _dig(body, source.items_field, source)
            items.extend(page_items)
            if source.pagination == "none":
                break
            if source.pagination == "page":
                if not page_items:
                    break
                page += 1
                continue
            cursor = body.get(source.next_cursor_field) if isinstance(body, dict) else None
            if not cursor:
                break
    frame = pd.DataFrame.from_records(items) if items else pd.DataFrame()
    mark: dict[str, Any] = {"mode": "incremental" if source.watermark else "snapshot"}
    if source.watermark:
        if not frame.empty and source.watermark in frame.columns and state.cap is not None:
            frame = frame[frame[source.watermark] <= state.cap].reset_index(drop=True)
        high = frame[source.watermark].max() if not frame.empty and source.watermark in frame.columns else state.low
        mark.update({"column": source.watermark, "low": state.low, "high": encode_mark(high)})
    return Batch(*within_interval(frame, mark, source.watermark, state))


def _get_json(client: httpx.Client, source: HttpSource, params: dict[str, Any]) -> Any:
    last_error = ""
    for attempt in range(source.retries + 1):
        try:
            response = client.get(source.url, params=params)
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}"
            elif response.status_code >= 400:
                raise SourceError(
                    f"source {source.name!r}: GET {source.url} answered HTTP "
                    f"{response.status_code}: {response.text[:200]}"
                )
            else:
                return response.json()
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        except json.JSONDecodeError as exc:
            raise SourceError(f"source {source.name!r}: {source.url} did not return JSON: {exc}") from exc
        if attempt < source.retries:
            delay = source.backoff_s * (2**attempt)
            log.warning("source %s: %s; retry %d in %.1fs", source.name, last_error, attempt + 1, delay)
            time.sleep(delay)
    raise SourceError(
        f"source {source.name!r}: GET {source.url} failed after {source.retries + 1} attempts: {last_error}"
    )


def _dig(body: Any, dotted: str, source: HttpSource) -> list[dict[str, Any]]:
    node = body
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict) or part not in node:
            raise SourceError(f"source {source.name!r}: response has no field {dotted!r}")
        node = node[part]
    if not isinstance(node, list):
        raise SourceError(f"source {source.name!r}: field {dotted!r} is not a list")
    return node


# --- Redis stream ------------------------------------------------------------------------


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a Redis stream entry id ('<ms>-<seq>')."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def read_stream(source: StreamSource, state: ReadState) -> Batch:
    """Read pending then new entries through a consumer group; ack only once committed.

    An entry of a later date's data interval (`ReadState.events`) is neither read nor
    acknowledged: it stays pending for the date it belongs to. The entries of parts set aside
    (`ReadState.stream_reread`, acknowledged when first read) are read again by id range. Of an
    event table's stream, the pending entries and those read again are marked in
    `Batch.recheck`: ingest leaves out those whose key the lake holds already (a run that died
    before its acknowledgement committed them). Of another table's stream, pending entries a
    part's id range holds are acknowledged and not read again.
    """
    import redis

    client = redis.Redis.from_url(source.url, decode_responses=True)
    read: list[tuple[str, dict[str, str]]] = []
    origin: list[int] = []  # per entry: -2 new, -1 pending, else the index of the range read again
    try:
        try:
            client.xgroup_create(source.stream, source.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        for phase in ("pending", "new"):
            cursor = "0" if phase == "pending" else ">"
            while len(read) < source.max_messages:
                count = min(source.batch_size, source.max_messages - len(read))
                reply: Any = client.xreadgroup(
                    source.group,
                    source.consumer,
                    {source.stream: cursor},
                    count=count,
                    block=source.block_ms if phase == "new" else None,
                )
                entries = [(i, f) for i, f in (reply[0][1] if reply else []) if f is not None]
                if not entries:
                    break
                read.extend(entries)
                origin.extend([-1 if phase == "pending" else -2] * len(entries))
                if phase == "pending":
                    # pending entries are re-read from after the last one returned
                    cursor = entries[-1][0]
        seen = {entry_id for entry_id, _ in read}
        for index, (first, last, entries_held, _, _) in enumerate(state.stream_reread):
            returned, start = 0, first
            while True:
                ranged: Any = client.xrange(source.stream, min=start, max=last, count=source.batch_size)
                fresh = [(i, f) for i, f in ranged if f is not None and i not in seen]
                read.extend(fresh)
                origin.extend([index] * len(fresh))
                seen.update(i for i, _ in ranged)
                returned += len(ranged)
                if len(ranged) < source.batch_size:
                    break
                start = "(" + ranged[-1][0]  # exclusive: after the last one returned
            if returned < entries_held:
                log.warning(
                    "source %r: the stream no longer holds every entry of a part set aside (%s to %s, trimmed?): "
                    "what is missing stays only in that part, under the lake manifest's set_aside",
                    source.name,
                    first,
                    last,
                )
    except redis.RedisError as exc:
        raise SourceError(f"source {source.name!r}: Redis stream read failed: {exc}") from exc
    finally:
        client.close()
    order = sorted(range(len(read)), key=lambda i: stream_id_key(read[i][0]))
    read, origins = [read[i] for i in order], np.array([origin[i] for i in order], dtype=np.int64)
    stale, later = _stream_entries(read, origins, state)
    fresh = ~stale & ~later
    fresh_ids = [entry_id for (entry_id, _), take in zip(read, fresh, strict=True) if take]
    stale_ids = [entry_id for (entry_id, _), old in zip(read, stale, strict=True) if old]
    records = [fields for (_, fields), take in zip(read, fresh, strict=True) if take]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    mark: dict[str, Any] = {
        "stream": source.stream,
        "group": source.group,
        "first_id": fresh_ids[0] if fresh_ids else None,
        "last_id": fresh_ids[-1] if fresh_ids else None,
        "entries": len(fresh_ids),
    }
    recheck = None
    if state.events is not None:
        if later.any():
            mark["held_back"] = int(later.sum())
        recheck = origins[fresh] != -2
    # a range none of whose entries waits for a later date is read again no more (ranges overlap:
    # an entry counts for every range it lies in, not only the one that read it first)
    waits = [stream_id_key(entry_id) for (entry_id, _), wait in zip(read, later, strict=True) if wait]
    ms = np.array([k[0] for k in waits], dtype=np.int64)
    seq = np.array([k[1] for k in waits], dtype=np.int64)
    recovered = [r[3:] for r in state.stream_reread if not _within(ms, seq, r[0], r[1]).any()]

    def acknowledge() -> None:
        ids = stale_ids + fresh_ids
        ack = redis.Redis.from_url(source.url, decode_responses=True)
        try:
            for i in range(0, len(ids), 10_000):
                ack.xack(source.stream, source.group, *ids[i : i + 10_000])
        finally:
            ack.close()

    on_committed = acknowledge if (fresh_ids or stale_ids) else None
    return Batch(frame, mark, on_committed=on_committed, recheck=recheck, recovered=recovered)


def _stream_entries(read: list[tuple[str, dict[str, str]]], origins: Any, state: ReadState) -> tuple[Any, Any]:
    """Which entries to acknowledge without reading, and which belong to a later interval.

    Of an event table's stream none is skipped here (ingest checks the keys of the pending ones
    and of those read again, `Batch.recheck`). Of another table's stream, a pending entry inside
    a part's id range was read by that part, which died before acknowledging it.
    """
    events = state.events
    if events is not None:
        times = events.times(pd.Series([fields.get(events.column) for _, fields in read], dtype=object))
        return np.zeros(len(read), dtype=bool), (times >= events.until).to_numpy()
    ms = np.array([stream_id_key(i)[0] for i, _ in read], dtype=np.int64)
    seq = np.array([stream_id_key(i)[1] for i, _ in read], dtype=np.int64)
    stale = np.zeros(len(read), dtype=bool)
    pending = origins == -1
    for first, last in state.stream_parts:
        stale |= pending & _within(ms, seq, first, last)
    return stale, np.zeros(len(read), dtype=bool)


def _within(ms: Any, seq: Any, first: str | tuple[int, int], last: str | tuple[int, int]) -> Any:
    """Which stream entry ids (as millisecond and sequence arrays) lie in [first, last]."""
    low = stream_id_key(first) if isinstance(first, str) else first
    high = stream_id_key(last) if isinstance(last, str) else last
    return ((ms > low[0]) | ((ms == low[0]) & (seq >= low[1]))) & (
        (ms < high[0]) | ((ms == high[0]) & (seq <= high[1]))
    )
