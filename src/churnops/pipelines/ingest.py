"""Ingestion: every enabled source -> map, parse, validate -> one atomic raw-lake commit each."""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnops.data.contracts import CONTRACTS, TableContract
from churnops.data.lake import Part, RawLake, encode_parquet
from churnops.data.mapping import map_columns, parse_batch, parse_column, parse_timestamps
from churnops.data.sources import (
    DERIVED_ORDER_ID,
    BadFile,
    Batch,
    EventWindow,
    FileFailedError,
    ReadState,
    SourceError,
    decode_mark,
    read_source,
    stream_id_key,
)
from churnops.data.validation import (
    BatchRejectedError,
    KeyFlags,
    bad_file_rows,
    empty_quarantine,
    flag_keys,
    id_index,
    reason_counts,
    validate_batch,
)
from churnops.runlog import append_run
from churnops.settings import FileSource, IngestSettings, Settings, Source, StreamSource

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """A source batch failed; nothing of it was published. The message says what and where."""


@dataclass
class SourceReport:
    """The outcome of ingesting one source for one ingest date."""

    source: str
    table: str
    status: str
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    files_quarantined: int = 0
    rows_later: int = 0  # rows of later dates' data intervals, left for them
    warning: str = ""  # what the user should know though nothing failed (a path that matches no file)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""


NO_NEW_DATA = "no new data"
# what the steps after ingest say when the lake has no order: ingest may have run and read none
NO_ORDERS = (
    "the raw lake holds no orders; `churnops ingest` loads them (when it has run, its table says what each source read)"
)


def make_lake(settings: Settings) -> RawLake:
    """The raw lake the settings point at (on object storage, engines read local copies kept in
    `<workspace>/lake-cache`)."""
    return RawLake(settings.lake_uri, settings.lake_storage_options, cache_dir=settings.paths.root / "lake-cache")


def ingest(
    settings: Settings,
    ingest_date: date,
    only: list[str] | None = None,
    on_source: Callable[[SourceReport], None] | None = None,
) -> list[SourceReport]:
    """Ingest every enabled source (or those named in `only`) into the raw lake.

    Customers are ingested before orders so orders can be checked against them. The first
    failing source stops the run; sources before it stay published.

    Args:
        settings: The loaded settings.
        ingest_date: The logical date; the partition it writes or replaces.
        only: Source names to ingest; default all enabled.
        on_source: Called with each source's report as it finishes (for progress).

    Returns:
        One report per source.

    Raises:
        IngestError: A source failed to read or a batch-level rule rejected it.
    """
    sources = settings.enabled_sources()
    if only:
        wanted = set(only)
        unknown = wanted - {s.name for s in settings.sources}
        if unknown:
            raise IngestError(f"unknown source(s): {', '.join(sorted(unknown))}")
        sources = [s for s in sources if s.name in wanted]
    lake = make_lake(settings)
    reports: list[SourceReport] = []
    has_customer_source = any(s.table == "customers" for s in settings.enabled_sources())
    with settings.paths.lock("churnops ingest"):
        for source in sources:
            try:
                report = ingest_source(source, lake, ingest_date, settings.ingest, check_customers=has_customer_source)
            except (IngestError, SourceError, BatchRejectedError) as exc:
                report = SourceReport(source.name, source.table, "failed", message=str(exc))
                reports.append(report)
                _log_run(settings, ingest_date, reports, "failed")
                raise IngestError(str(exc)) from exc
            reports.append(report)
            if on_source:
                on_source(report)
    _log_run(settings, ingest_date, reports, "ok")
    return reports


def default_ingest_date(settings: Settings) -> date:
    """The logical date when none is given: the day after the newest order, in the lake or
    waiting in the order sources (never the wall clock), and never before the latest partition.

    Raises:
        IngestError: There is no order anywhere yet.
    """
    from churnops.data.tables import order_span

    lake = make_lake(settings)
    newest: list[pd.Timestamp] = []
    span = order_span(lake.data_files("orders"))
    if span is not None:
        newest.append(span[1])
    partitions = [m.ingest_date for table in lake.tables() for m in lake.manifests(table)]
    after_all = date.fromisoformat(max(partitions)) + timedelta(days=1) if partitions else date(9999, 12, 30)
    why: list[str] = []  # why a source gave no order time, for the message when none did
    for source in settings.enabled_sources("orders"):
        state = read_state(lake, source, after_all)
        if state.events is not None:  # every order waiting counts, not only those before after_all
            state = replace(state, events=replace(state.events, until=datetime.max))
        try:
            batch = read_source(source, state)
        except SourceError as exc:
            raise IngestError(str(exc)) from exc
        column = source_columns(source).get("order_date", "order_date")
        fmt = source.date_formats.get("order_date")
        newest_of = functools.partial(_newest, column=column, fmt=fmt)
        found = [last for last in batch.scan(settings.ingest.chunk_rows, [column], newest_of) if last is not NO_ROWS]
        newest.extend(last for last in found if last is not None)
        if batch.warning:
            why.append(f"source {source.name!r}: {batch.warning}")
        elif found and all(last is None for last in found):
            how = f"date_formats.order_date {fmt!r}" if fmt else "no date_formats.order_date"
            why.append(f"source {source.name!r}: no {column} value parses as a time ({how})")
    if not newest:
        detail = f" ({'; '.join(why)})" if why else ""
        raise IngestError(f"there are no orders in the lake or in the order sources yet{detail}; give --date")
    day = max(newest).date() + timedelta(days=1)
    return max([day, *(date.fromisoformat(p) for p in partitions)])


NO_ROWS: Any = object()  # `_newest` of a chunk without rows


def _newest(chunk: pd.DataFrame, column: str, fmt: str | None) -> Any:
    """The newest time in a chunk's `column`; None when none parses, `NO_ROWS` without rows."""
    if column not in chunk.columns:
        return None
    if chunk.empty:
        return NO_ROWS
    parsed = parse_timestamps(chunk[column], fmt).dropna()
    return None if parsed.empty else parsed.max()


def _log_run(settings: Settings, ingest_date: date, reports: list[SourceReport], status: str) -> None:
    append_run(
        settings.paths,
        {
            "command": "ingest",
            "ingest_date": ingest_date.isoformat(),
            "status": status,
            "sources": [r.__dict__ for r in reports],
        },
    )


def read_state(lake: RawLake, source: Source, ingest_date: date) -> ReadState:
    """Where this source's read starts and stops, from the parts other dates hold.

    Rows of an event table (orders) belong to the date whose data interval holds their event
    time: a date reads those before its midnight that no earlier date read, and leaves later
    ones for later dates, so the partitions do not depend on when or in which order the dates
    ran (see `EventWindow`). A stream's entries are consumed once: those of its parts set
    aside are read again by id range until a read takes them all (`RawLake.recovered`).
    """
    day = ingest_date.isoformat()
    before: list[Part] = []
    after: list[Part] = []
    files_elsewhere: set[str] = set()
    file_from: dict[str, datetime] = {}
    file_cap: dict[str, datetime] = {}
    capped: set[str] = set()
    stream_parts: list[tuple[tuple[int, int], tuple[int, int]]] = []
    reread: list[tuple[str, str, int, str, str]] = []
    for manifest in lake.manifests(source.table):
        for aside in manifest.set_aside:
            mark = aside.part.watermark
            if aside.part.source == source.name and mark.get("last_id") and not aside.recovered:
                entries = mark.get("entries", 0)
                reread.append((mark["first_id"], mark["last_id"], entries, manifest.ingest_date, aside.part.data.path))
        for part in manifest.parts:
            if part.source != source.name:
                continue
            mark = part.watermark
            if manifest.ingest_date < day:
                before.append(part)
                files_elsewhere.update(mark.get("files", []))
                for name, end in mark.get("partial", {}).items():
                    file_from[name] = max(file_from.get(name, datetime.min), datetime.fromisoformat(end))
            elif manifest.ingest_date > day:
                after.append(part)
                for name in [*mark.get("files", []), *mark.get("partial", {})]:
                    if name in capped:
                        continue  # the nearest later date that read the file decides
                    capped.add(name)
                    if name in mark.get("resumed", {}):
                        file_cap[name] = datetime.fromisoformat(mark["resumed"][name])
                    else:
                        files_elsewhere.add(name)  # a later date read it from its start
            if mark.get("last_id"):
                stream_parts.append((stream_id_key(mark["first_id"]), stream_id_key(mark["last_id"])))
    low = decode_mark(before[-1].watermark.get("high")) if before else None
    cap = decode_mark(after[0].watermark.get("low")) if after else None
    # a later date started from nothing: this earlier date has nothing of its own left
    exhausted = bool(after) and cap is None and not isinstance(source, FileSource | StreamSource)
    events = None
    event_time = CONTRACTS[source.table].event_time
    if event_time:
        until = datetime.combine(ingest_date, datetime.min.time())
        column = source_columns(source).get(event_time, event_time)
        fmt = source.date_formats.get(event_time)
        events = EventWindow(column, fmt, until, file_from, file_cap)
    return ReadState(low, cap, frozenset(files_elsewhere), tuple(stream_parts), events, tuple(reread), exhausted)


def ingest_source(
    source: Source,
    lake: RawLake,
    ingest_date: date,
    limits: IngestSettings,
    check_customers: bool = True,
) -> SourceReport:
    """Read, validate and publish one source's batch for one ingest date.

    The batch is read twice, chunk by chunk: its key column first (repeated keys and keys
    already in the lake are rules over the whole batch), then every column, each chunk parsed,
    validated and streamed into one new Parquet file. Memory follows `limits.chunk_rows`, not
    the batch, apart from the key column. Nothing reaches the lake until the manifest commit.

    Args:
        source: The source's settings.
        lake: The raw lake.
        ingest_date: The partition to write (a rerun replaces this source's part of it).
        limits: Bad-share and volume-drop limits, and the chunk size.
        check_customers: Quarantine orders whose customer is not in the lake.

    Returns:
        The report; status is `published`, `unchanged` (a snapshot equal to the last one),
        `no new data`, or `files set aside` (every new file was quarantined whole).

    Raises:
        IngestError: A batch-level rule rejected the batch; nothing was published.
    """
    started = time.perf_counter()
    contract = CONTRACTS[source.table]
    state = read_state(lake, source, ingest_date)
    columns = source_columns(source)
    batch = read_source(source, state, {c: columns.get(c, c) for c in contract.required})
    while True:
        try:
            report = _ingest_batch(batch, source, contract, lake, ingest_date, limits, check_customers)
        except FileFailedError as failure:
            # it read well the first time: set it aside whole and start the batch again without it
            log.warning("source %r: %s; the file is set aside and the batch read again", source.name, failure)
            batch.set_aside(failure)
            continue
        report.seconds = time.perf_counter() - started
        return report


@dataclass
class _Tally:
    """What the accepted and quarantined rows of a batch add up to, chunk by chunk."""

    rows_read: int = 0
    rows_accepted: int = 0
    quarantined: list[pd.DataFrame] = field(default_factory=list)
    event_days: set[Any] = field(default_factory=set)
    event_first: Any = None
    event_last: Any = None

    @property
    def rows_quarantined(self) -> int:
        return sum(len(q) for q in self.quarantined)

    def quarantine(self) -> pd.DataFrame:
        return pd.concat(self.quarantined, ignore_index=True) if self.quarantined else empty_quarantine()

    def add(self, accepted: pd.DataFrame, quarantined: pd.DataFrame, contract: TableContract) -> None:
        self.rows_read += len(accepted) + len(quarantined)
        self.rows_accepted += len(accepted)
        if len(quarantined):
            self.quarantined.append(quarantined)
        if contract.event_time and contract.event_time in accepted.columns:
            self.event_days.update(accepted[contract.event_time].dt.normalize().dropna().unique())
        column = _event_column(contract)
        if column and column in accepted.columns:
            values = accepted[column].dropna()
            if len(values):
                first, last = values.min(), values.max()
                self.event_first = first if self.event_first is None else min(first, self.event_first)
                self.event_last = last if self.event_last is None else max(last, self.event_last)

    def watermark(self, contract: TableContract) -> dict[str, Any]:
        mark: dict[str, Any] = {"event_days": self.days(contract)}
        if self.event_first is not None:
            mark |= {"event_first": self.event_first.isoformat(), "event_last": self.event_last.isoformat()}
        return mark

    def days(self, contract: TableContract) -> int | None:
        return len(self.event_days) if contract.event_time else None


def _ingest_batch(
    batch: Batch,
    source: Source,
    contract: TableContract,
    lake: RawLake,
    ingest_date: date,
    limits: IngestSettings,
    check_customers: bool,
) -> SourceReport:
    where = f"source {source.name!r} ({source.kind}) -> {source.table}, ingest date {ingest_date}"
    if batch.files is None and len(batch.frame.columns):
        _mapped(batch.frame.iloc[:0], source, contract, ingest_date)  # a missing column fails before any work
    in_lake = _leave_out_held(batch, source, contract, lake)
    keys = _scan_keys(batch, source, contract, limits.chunk_rows)
    if batch.files is not None and batch.files.events is not None:
        batch.watermark.update(batch.files.marks(batch.watermark["files"]))
    if (
        len(keys) == 0
        and not batch.bad_files
        and (isinstance(source, StreamSource | FileSource) or not batch.watermark)
    ):
        # nothing arrived: no volume check, nothing published (a rerun of this date reads the same)
        if batch.on_committed:
            batch.on_committed()
        _recovered(batch, source, lake)
        return SourceReport(
            source.name,
            source.table,
            NO_NEW_DATA,
            rows_later=batch.watermark.get("held_back", 0),
            warning=batch.warning,
        )
    known = None
    existing = None
    if contract.name == "orders":
        if check_customers:
            known = id_index(_as_int_array(lake.read_column("customers", "customer_id")))
        existing = (
            in_lake
            if in_lake is not None
            else lake.read_column("orders", "order_id", exclude=_own_files(lake, source, ingest_date))
        )
    flags = flag_keys(keys, existing if existing is not None and len(existing) else None)
    previous = _previous_part(lake, source, ingest_date)
    staged = lake.stage_file(source.table, ingest_date)
    try:
        tally, schema = _validate_into(staged.local, batch, source, contract, known, flags, limits, len(keys), where)
        quarantined = tally.quarantine()
        _check_bad_share(quarantined, tally.rows_read, limits, where, contract)
        if len(keys):
            _check_volume(tally.rows_accepted, tally.days(contract), contract, previous, limits, where)
        report = SourceReport(
            source.name,
            source.table,
            "published" if len(keys) else ("files set aside" if batch.bad_files else NO_NEW_DATA),
            rows_read=tally.rows_read,
            rows_accepted=tally.rows_accepted,
            rows_quarantined=len(quarantined),
            files_quarantined=len(batch.bad_files),
            rows_later=batch.watermark.get("held_back", 0),
            reasons={**reason_counts(quarantined), **_file_reasons(batch.bad_files)},
        )
        if batch.bad_files:
            whole_files = bad_file_rows(source.name, batch.bad_files)
            quarantined = pd.concat([quarantined, whole_files], ignore_index=True) if len(quarantined) else whole_files
        sha256 = staged.sha256()
        # encoded before any comparison: a rerun that quarantines the same rows again is a rerun
        # over the same data, and leaves the partition as it is
        quarantine = encode_parquet(quarantined) if not quarantined.empty else None
        quarantine_sha256 = quarantine.sha256 if quarantine else None
        if (
            previous is not None
            and not _own_files(lake, source, ingest_date)  # a rerun of the date compares with its own part
            and previous.watermark.get("mode") == "snapshot"
            and previous.data.sha256 == sha256
            and (previous.quarantine.sha256 if previous.quarantine else None) == quarantine_sha256
        ):
            report.status = "unchanged"
            report.message = "same content as the last snapshot; nothing published"
            return report
        replace = None if isinstance(source, StreamSource) else source.name
        if replace is not None and _holds_already(lake, source, ingest_date, sha256, quarantine_sha256):
            # a rerun of the date over the same data: leave the partition byte for byte as it is, so
            # content-addressed tools (DVC, the lineage hashes) see nothing new
            if batch.on_committed:
                batch.on_committed()
            report.status = "unchanged"
            report.message = "this date's partition already holds the same content; nothing published"
            return report
        data_file = staged.place(tally.rows_accepted, schema, sha256)
    finally:
        staged.discard()
    quarantine_file = lake.write_encoded(source.table, ingest_date, quarantine, quarantine=True) if quarantine else None
    watermark: dict[str, Any] = dict(batch.watermark)
    watermark.update(tally.watermark(contract))
    if batch.bad_files:
        watermark["bad_files"] = [f.name for f in batch.bad_files]
    part = Part(
        source=source.name,
        data=data_file,
        quarantine=quarantine_file,
        rows_read=tally.rows_read,
        watermark=watermark,
        written_at=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    )
    lake.commit(source.table, ingest_date, [part], replace_source=replace)
    if batch.on_committed:
        batch.on_committed()
    _recovered(batch, source, lake)
    log.info(
        "%s: %d read, %d accepted, %d quarantined, %d files set aside",
        where,
        report.rows_read,
        report.rows_accepted,
        report.rows_quarantined,
        report.files_quarantined,
    )
    return report


def _leave_out_held(batch: Batch, source: Source, contract: TableContract, lake: RawLake) -> pa.ChunkedArray | None:
    """Leave out the stream rows (pending, or read again from a part set aside) whose key the
    lake holds already: a run that died before acknowledging them committed them, or the date
    they belong to ingested them again. They are acknowledged with the rest.

    Returns:
        The keys the lake holds, when it read them (a stream replaces no part of the lake:
        they are the keys the batch's other rows are checked against too), else None.
    """
    if batch.recheck is None or not batch.recheck.any():
        return None
    column = source_columns(source).get(contract.key, contract.key)
    keys = parse_column(batch.frame[column], contract.columns[contract.key], source.date_formats.get(contract.key))
    in_lake = lake.read_column(source.table, contract.key)
    drop = batch.recheck & keys.isin(pd.Index(in_lake.to_pandas())).to_numpy()
    if drop.any():
        log.info("source %r: %d entries read again are in the lake already", source.name, int(drop.sum()))
        batch.frame = batch.frame[~drop].reset_index(drop=True)
        batch.recheck = batch.recheck[~drop]
    return in_lake


def _recovered(batch: Batch, source: Source, lake: RawLake) -> None:
    """Parts set aside whose entries this read took whole are read again no more."""
    for day, path in batch.recovered:
        lake.recovered(source.table, date.fromisoformat(day), path)


def _scan_keys(batch: Batch, source: Source, contract: TableContract, chunk_rows: int) -> pd.Series:
    """The batch's parsed key column, labelled by position; the first read of its files."""
    column = source_columns(source).get(contract.key, contract.key)
    kind = contract.columns[contract.key]

    def parse(chunk: pd.DataFrame) -> pd.Series:
        return parse_column(chunk[column], kind, source.date_formats.get(contract.key))

    parts = batch.scan(chunk_rows, [column], parse)
    return pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)


def _validate_into(
    path: str,
    batch: Batch,
    source: Source,
    contract: TableContract,
    known: pd.Index | None,
    flags: KeyFlags,
    limits: IngestSettings,
    rows: int,
    where: str,
) -> tuple[_Tally, pa.Schema]:
    """Validate the batch chunk by chunk, streaming accepted rows into a Parquet file at `path`."""
    tally = _Tally()
    sink: _ParquetSink | None = None
    try:
        for raw in batch.chunks(limits.chunk_rows):
            mapped = _mapped(raw, source, contract, None)
            decimal = source.csv_decimal if isinstance(source, FileSource) else "."
            parsed = parse_batch(mapped, contract, source.date_formats, decimal)
            result = validate_batch(parsed, mapped, raw, contract, source.name, known, flags=flags)
            if sink is None:
                sink = _ParquetSink(path, _lake_schema(contract, list(parsed.columns)), contract.key)
            sink.write(result.accepted)
            tally.add(result.accepted, batch.located(result.quarantined), contract)
            if tally.rows_read < rows and tally.rows_quarantined > limits.max_bad_share * rows:
                # certain to be rejected already: stop reading
                _check_bad_share(tally.quarantine(), rows, limits, where, contract, at_least=True)
        if tally.rows_read != rows:
            raise IngestError(f"{where}: read {tally.rows_read} rows, but the key column had {rows}; nothing published")
        if sink is None:
            sink = _ParquetSink(path, _lake_schema(contract, list(contract.columns)), contract.key)
        sink.close()
        return tally, sink.schema
    finally:
        if sink is not None:
            sink.abort()


class _ParquetSink:
    """Writes frames as zstd Parquet row groups on a thread of its own: Arrow encodes and
    compresses without the GIL, so writing one chunk overlaps validating the next."""

    def __init__(self, path: str, schema: pa.Schema, key: str) -> None:
        self.schema = schema
        # a unique key gains nothing from a dictionary; trying one first costs time
        dictionary = [name for name in schema.names if name != key]
        self._writer = pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=dictionary)
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="churnops-parquet-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # re-raised on the caller's thread
                    self._error = exc

    def write(self, frame: pd.DataFrame) -> None:
        if self._error is not None:
            raise self._error
        table = pa.Table.from_pandas(frame, preserve_index=False).cast(self.schema)
        self._queue.put(table)

    def close(self) -> None:
        self._stop()
        self._writer.close()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self._stop()
        self._writer.close()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _lake_schema(contract: TableContract, names: list[str]) -> pa.Schema:
    """The Arrow schema of a table's data files: contract types, contract order, pandas metadata."""
    empty = pd.DataFrame({n: pd.Series(dtype=_dtype(contract.columns[n])) for n in contract.columns if n in names})
    return pa.Schema.from_pandas(empty, preserve_index=False)


def _mapped(raw: pd.DataFrame, source: Source, contract: TableContract, ingest_date: date | None) -> pd.DataFrame:
    from churnops.data.mapping import MissingColumnError

    try:
        return map_columns(raw, contract, source_columns(source), source.name)
    except MissingColumnError as exc:
        when = f" (ingest date {ingest_date})" if ingest_date else ""
        raise IngestError(f"{exc}{when}; nothing published") from exc


def _holds_already(lake: RawLake, source: Source, ingest_date: date, sha256: str, quarantine: str | None) -> bool:
    """The partition already holds exactly this data from this source, and the same quarantine
    (`quarantine`: its hash, None for none)."""
    current = lake.manifest(source.table, ingest_date)
    mine = [p for p in (current.parts if current else []) if p.source == source.name]
    if len(mine) != 1 or mine[0].data.sha256 != sha256:
        return False
    held = mine[0].quarantine
    if (held.sha256 if held else None) != quarantine:
        return False
    # the files themselves, not only their manifest: a file edited in place is rewritten
    return all(_file_holds(lake, part.path, part.sha256) for part in (mine[0].data, held) if part is not None)


def _file_holds(lake: RawLake, path: str, sha256: str) -> bool:
    try:
        held = lake.fs.cat_file(lake.locate(path))
    except FileNotFoundError:
        return False
    return hashlib.sha256(held).hexdigest() == sha256


def source_columns(source: Source) -> dict[str, str]:
    """Contract column -> the source's column, with a derived order id where configured."""
    columns = dict(source.columns)
    if isinstance(source, FileSource) and source.derive_order_id:
        columns["order_id"] = DERIVED_ORDER_ID
    return columns


def _file_reasons(bad_files: list[BadFile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for bad in bad_files:
        kind = f"file: {bad.reason.split(' (')[0].split(';')[0]}"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _own_files(lake: RawLake, source: Source, ingest_date: date) -> list[str]:
    """Files this run replaces: the source's own parts of the same partition."""
    if isinstance(source, StreamSource):
        return []
    manifest = lake.manifest(source.table, ingest_date)
    if manifest is None:
        return []
    return [p.data.path for p in manifest.parts if p.source == source.name]


def _check_bad_share(
    quarantined: pd.DataFrame,
    rows: int,
    limits: IngestSettings,
    where: str,
    contract: TableContract,
    at_least: bool = False,
) -> None:
    share = len(quarantined) / rows if rows else 0.0
    if share > limits.max_bad_share:
        reasons = list(reason_counts(quarantined).items())[:5]
        top = ", ".join(f"{reason}: {n}" for reason, n in reasons)
        sample = quarantined["source_row"].head(3).tolist()
        count = f"at least {len(quarantined)}" if at_least else str(len(quarantined))
        hints = "".join(f"; {hint}" for reason, _ in reasons if (hint := _hint(reason, contract)))
        raise IngestError(
            f"{where}: {count} of {rows} rows are invalid "
            f"({'at least ' if at_least else ''}{share:.2%} > limit {limits.max_bad_share:.2%}); "
            f"reasons: {top}; examples: {sample}{hints}; nothing published"
        )


def _hint(reason: str, contract: TableContract) -> str:
    """What usually fixes a reason that makes most of a batch invalid (a column's type or format)."""
    column = reason.removeprefix("unparseable ")
    kind = contract.columns.get(column) if reason.startswith("unparseable ") else None
    if kind == "int":
        return (
            f"{column} must be a whole number (the feature store and the server key customers by integer ids): "
            "give the source's ids as numbers"
        )
    if kind == "timestamp":
        return f"set date_formats.{column} to the source's format (for example '%d/%m/%Y' or '%Y-%m-%d %H:%M')"
    if kind == "float":
        return "amounts with a decimal comma (12,50) need csv_decimal: ','"
    return ""


def _previous_part(lake: RawLake, source: Source, ingest_date: date) -> Part | None:
    day = ingest_date.isoformat()
    previous = None
    for manifest in lake.manifests(source.table):
        if manifest.ingest_date >= day:
            break
        for part in manifest.parts:
            if part.source == source.name:
                previous = part
    return previous


def _check_volume(
    accepted: int,
    days: int | None,
    contract: TableContract,
    previous: Part | None,
    limits: IngestSettings,
    where: str,
) -> None:
    """Reject a batch whose volume fell more than the limit against the previous run.

    Tables with an event time (orders) compare rows per day of data covered, so a backfill
    of many days followed by one daily batch is not a drop. Snapshot sources (full dumps)
    compare row counts. Incremental dimension sources (new and changed customers) have no
    steady volume and are not checked.
    """
    if limits.max_volume_drop is None or previous is None or previous.data.rows == 0:
        return
    if not contract.event_time and previous.watermark.get("mode") != "snapshot":
        return
    prev_days = previous.watermark.get("event_days")
    if contract.event_time and prev_days:
        prev_rate = previous.data.rows / prev_days
        rate = accepted / days if days else 0.0
        unit = "rows per day of data"
    else:
        prev_rate, rate, unit = float(previous.data.rows), float(accepted), "rows"
    if rate < (1 - limits.max_volume_drop) * prev_rate:
        drop = 1 - rate / prev_rate
        raise IngestError(
            f"{where}: volume fell {drop:.0%} against the previous run ({rate:,.1f} vs "
            f"{prev_rate:,.1f} {unit}; limit {limits.max_volume_drop:.0%}); nothing published. "
            "If this is expected, raise ingest.max_volume_drop or set it to null."
        )


def _event_column(contract: TableContract) -> str | None:
    """The column whose first and last value a part records (order_date; created_at for customers)."""
    return contract.event_time or ("created_at" if "created_at" in contract.columns else None)


def _dtype(kind: str) -> str:
    return {"int": "Int64", "string": "string", "timestamp": "datetime64[us]", "float": "float64"}[kind]


def _as_int_array(column: Any) -> np.ndarray:
    if len(column) == 0:
        return np.array([], dtype="int64")
    return np.asarray(column.drop_null().to_numpy(), dtype="int64")
