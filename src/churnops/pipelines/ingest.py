"""Ingestion: every enabled source -> map, parse, validate -> one atomic raw-lake commit each."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from churnops.data.contracts import CONTRACTS, TableContract
from churnops.data.lake import Part, RawLake, encode_parquet
from churnops.data.mapping import map_columns, parse_batch, parse_timestamps
from churnops.data.sources import (
    DERIVED_ORDER_ID,
    BadFile,
    ReadState,
    SourceError,
    decode_mark,
    read_source,
    stream_id_key,
)
from churnops.data.validation import BatchRejectedError, ValidationResult, bad_file_rows, validate_batch
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
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""


NO_NEW_DATA = "no new data"


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
    for source in settings.enabled_sources("orders"):
        try:
            batch = read_source(source, read_state(lake, source, after_all))
        except SourceError as exc:
            raise IngestError(str(exc)) from exc
        if batch.frame.empty:
            continue
        column = source_columns(source).get("order_date", "order_date")
        if column in batch.frame.columns:
            parsed = parse_timestamps(batch.frame[column], source.date_formats.get("order_date")).dropna()
            if not parsed.empty:
                newest.append(parsed.max())
    if not newest:
        raise IngestError("there are no orders in the lake or in the order sources yet; give --date")
    day = max(newest).date() + timedelta(days=1)
    return max([day, *(date.fromisoformat(p) for p in partitions)])


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
    """Where this source's read starts and stops, from the parts other dates hold."""
    day = ingest_date.isoformat()
    before: list[Part] = []
    after: list[Part] = []
    files_elsewhere: set[str] = set()
    stream_ids: list[str] = []
    for manifest in lake.manifests(source.table):
        for part in manifest.parts:
            if part.source != source.name:
                continue
            if manifest.ingest_date < day:
                before.append(part)
            elif manifest.ingest_date > day:
                after.append(part)
            if manifest.ingest_date != day:
                files_elsewhere.update(part.watermark.get("files", []))
            if part.watermark.get("last_id"):
                stream_ids.append(part.watermark["last_id"])
    low = decode_mark(before[-1].watermark.get("high")) if before else None
    cap = decode_mark(after[0].watermark.get("low")) if after else None
    if after and cap is None and not isinstance(source, FileSource | StreamSource):
        # a later date started from nothing: this earlier date has nothing of its own left
        cap = low
    last_id = max(stream_ids, key=stream_id_key) if stream_ids else None
    return ReadState(low=low, cap=cap, files_elsewhere=frozenset(files_elsewhere), stream_last_id=last_id)


def ingest_source(
    source: Source,
    lake: RawLake,
    ingest_date: date,
    limits: IngestSettings,
    check_customers: bool = True,
) -> SourceReport:
    """Read, validate and publish one source's batch for one ingest date.

    Args:
        source: The source's settings.
        lake: The raw lake.
        ingest_date: The partition to write (a rerun replaces this source's part of it).
        limits: Bad-share and volume-drop limits.
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
    raw = batch.frame.reset_index(drop=True)
    where = f"source {source.name!r} ({source.kind}) -> {source.table}, ingest date {ingest_date}"
    if raw.empty and not batch.bad_files and (isinstance(source, StreamSource | FileSource) or not batch.watermark):
        # nothing arrived: no volume check, nothing published (a rerun of this date reads the same)
        if batch.on_committed:
            batch.on_committed()
        return SourceReport(source.name, source.table, NO_NEW_DATA, seconds=time.perf_counter() - started)
    result = _validate(source, contract, raw, lake, ingest_date, check_customers)
    _check_bad_share(result, limits, where)
    previous = _previous_part(lake, source, ingest_date)
    if not raw.empty:
        _check_volume(result.accepted, contract, previous, limits, where)
    quarantined: pd.DataFrame = result.quarantined
    if batch.bad_files:
        whole_files = bad_file_rows(source.name, batch.bad_files)
        quarantined = pd.concat([quarantined, whole_files], ignore_index=True) if len(quarantined) else whole_files
    report = SourceReport(
        source.name,
        source.table,
        "published" if not raw.empty else ("files set aside" if batch.bad_files else NO_NEW_DATA),
        rows_read=result.rows_read,
        rows_accepted=len(result.accepted),
        rows_quarantined=len(result.quarantined),
        files_quarantined=len(batch.bad_files),
        reasons={**result.reason_counts(), **_file_reasons(batch.bad_files)},
    )
    encoded = encode_parquet(result.accepted)
    if (
        previous is not None
        and previous.watermark.get("mode") == "snapshot"
        and previous.data.sha256 == encoded.sha256
        and quarantined.empty
    ):
        report.status = "unchanged"
        report.message = "same content as the last snapshot; nothing published"
        report.seconds = time.perf_counter() - started
        return report
    replace = None if isinstance(source, StreamSource) else source.name
    if replace is not None and quarantined.empty and _holds_already(lake, source, ingest_date, encoded.sha256):
        # a rerun of the date over the same data: leave the partition byte for byte as it is, so
        # content-addressed tools (DVC, the lineage hashes) see nothing new
        if batch.on_committed:
            batch.on_committed()
        report.status = "unchanged"
        report.message = "this date's partition already holds the same content; nothing published"
        report.seconds = time.perf_counter() - started
        return report
    data_file = lake.write_encoded(source.table, ingest_date, encoded, quarantine=False)
    quarantine_file = (
        lake.write_file(source.table, ingest_date, quarantined, quarantine=True) if not quarantined.empty else None
    )
    watermark: dict[str, Any] = dict(batch.watermark)
    watermark["event_days"] = _event_days(result.accepted, contract)
    watermark.update(_event_range(result.accepted, contract))
    if batch.bad_files:
        watermark["bad_files"] = [f.name for f in batch.bad_files]
    part = Part(
        source=source.name,
        data=data_file,
        quarantine=quarantine_file,
        rows_read=result.rows_read,
        watermark=watermark,
        written_at=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    )
    lake.commit(source.table, ingest_date, [part], replace_source=replace)
    if batch.on_committed:
        batch.on_committed()
    report.seconds = time.perf_counter() - started
    log.info(
        "%s: %d read, %d accepted, %d quarantined, %d files set aside",
        where,
        report.rows_read,
        report.rows_accepted,
        report.rows_quarantined,
        report.files_quarantined,
    )
    return report


def _holds_already(lake: RawLake, source: Source, ingest_date: date, sha256: str) -> bool:
    """The partition already holds exactly this data from this source, and nothing quarantined."""
    current = lake.manifest(source.table, ingest_date)
    mine = [p for p in (current.parts if current else []) if p.source == source.name]
    if len(mine) != 1 or mine[0].data.sha256 != sha256 or mine[0].quarantine is not None:
        return False
    try:  # the file itself, not only its manifest: a file edited in place is rewritten
        held = lake.fs.cat_file(lake.locate(mine[0].data.path))
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


def _event_range(accepted: pd.DataFrame, contract: TableContract) -> dict[str, str]:
    """First and last event time of the rows (order_date; created_at for customers)."""
    column = contract.event_time or ("created_at" if "created_at" in contract.columns else None)
    if column is None or column not in accepted.columns or accepted.empty:
        return {}
    values = accepted[column].dropna()
    if values.empty:
        return {}
    return {"event_first": values.min().isoformat(), "event_last": values.max().isoformat()}


def _validate(
    source: Source,
    contract: TableContract,
    raw: pd.DataFrame,
    lake: RawLake,
    ingest_date: date,
    check_customers: bool,
) -> ValidationResult:
    from churnops.data.mapping import MissingColumnError

    if raw.empty:
        empty = pd.DataFrame({c: pd.Series(dtype=_dtype(k)) for c, k in contract.columns.items()})
        mapped = empty
    else:
        try:
            mapped = map_columns(raw, contract, source_columns(source), source.name)
        except MissingColumnError as exc:
            raise IngestError(f"{exc} (ingest date {ingest_date}); nothing published") from exc
    parsed = parse_batch(mapped, contract, source.date_formats)
    known = None
    existing = None
    if contract.name == "orders":
        if check_customers:
            known = _as_int_array(lake.read_column("customers", "customer_id"))
        replaced = _own_files(lake, source, ingest_date)
        existing = _as_str_array(lake.read_column("orders", "order_id", exclude=replaced))
    return validate_batch(parsed, mapped, raw, contract, source.name, known, existing)


def _own_files(lake: RawLake, source: Source, ingest_date: date) -> list[str]:
    """Files this run replaces: the source's own parts of the same partition."""
    if isinstance(source, StreamSource):
        return []
    manifest = lake.manifest(source.table, ingest_date)
    if manifest is None:
        return []
    return [p.data.path for p in manifest.parts if p.source == source.name]


def _check_bad_share(result: ValidationResult, limits: IngestSettings, where: str) -> None:
    if result.rows_read and result.bad_share > limits.max_bad_share:
        top = ", ".join(f"{reason}: {n}" for reason, n in list(result.reason_counts().items())[:5])
        sample = result.quarantined["source_row"].head(3).tolist()
        raise IngestError(
            f"{where}: {len(result.quarantined)} of {result.rows_read} rows are invalid "
            f"({result.bad_share:.2%} > limit {limits.max_bad_share:.2%}); reasons: {top}; "
            f"examples: {sample}; nothing published"
        )


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


def _event_days(accepted: pd.DataFrame, contract: TableContract) -> int | None:
    if contract.event_time is None or contract.event_time not in accepted.columns:
        return None
    return int(accepted[contract.event_time].dt.normalize().nunique())


def _check_volume(
    accepted: pd.DataFrame,
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
        days = _event_days(accepted, contract) or 0
        prev_rate = previous.data.rows / prev_days
        rate = len(accepted) / days if days else 0.0
        unit = "rows per day of data"
    else:
        prev_rate, rate, unit = float(previous.data.rows), float(len(accepted)), "rows"
    if rate < (1 - limits.max_volume_drop) * prev_rate:
        drop = 1 - rate / prev_rate
        raise IngestError(
            f"{where}: volume fell {drop:.0%} against the previous run ({rate:,.1f} vs "
            f"{prev_rate:,.1f} {unit}; limit {limits.max_volume_drop:.0%}); nothing published. "
            "If this is expected, raise ingest.max_volume_drop or set it to null."
        )


def _dtype(kind: str) -> str:
    return {"int": "Int64", "string": "string", "timestamp": "datetime64[us]", "float": "float64"}[kind]


def _as_int_array(column: Any) -> np.ndarray:
    if len(column) == 0:
        return np.array([], dtype="int64")
    return np.asarray(column.drop_null().to_numpy(), dtype="int64")


def _as_str_array(column: Any) -> np.ndarray:
    if len(column) == 0:
        return np.array([], dtype=object)
    return np.asarray(column.drop_null().to_numpy(zero_copy_only=False), dtype=object)
