"""The prediction log: every prediction, written off the request's hot path by a batching writer.

A request puts its records on a bounded in-memory queue and returns; one writer thread drains the
queue in batches into a SQL table (SQLite in the workspace by default, PostgreSQL by URL).
When the queue is full the new records are dropped, counted (`dropped`, also a Prometheus
metric) and reported once through `on_full`: serving never waits on the log. `close()` stops
taking records and writes everything queued, so a clean shutdown loses nothing.

Columns (DESIGN.md): request_id, ts, customer_id, model, version, variant, features (JSON of the
values used), probability, label, latency_ms.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

import pandas as pd

log = logging.getLogger(__name__)

TABLE = "predictions"
REFUSALS = "refusals"
_STOP = object()
# After the first record of a batch arrives the writer waits this long for more, so that under
# load it writes one transaction per batch rather than one per request.
LINGER_SECONDS = 0.05


class LogRecord(NamedTuple):
    """One prediction, as the request path hands it over (the writer turns it into a row)."""

    request_id: str
    ts: datetime
    customer_id: int | None
    model: str
    version: str
    variant: str
    feature_names: Sequence[str]
    feature_values: Any  # a sequence (or array row) of floats, NaN for a missing value
    probability: float
    label: int
    latency_ms: float

    def features(self) -> dict[str, float | None]:
        """The feature values used, by name (None for a missing one)."""
        return {
            n: (None if math.isnan(v) else v)
            for n, v in zip(self.feature_names, map(float, self.feature_values), strict=True)
        }


class Refusal(NamedTuple):
    """A request the server refused or failed (4xx/5xx): what the day's error rate counts."""

    ts: datetime
    alias: str  # the alias the server serves: production's is `champion`
    endpoint: str  # a bounded label (`metrics.endpoint_label`)
    status: int


def _refusals_table(metadata: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        REFUSALS,
        metadata,
        sa.Column("ts", sa.DateTime, nullable=False, index=True),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
    )


def _table(metadata: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        TABLE,
        metadata,
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime, nullable=False, index=True),
        sa.Column("customer_id", sa.BigInteger, nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False, index=True),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class PredictionLog:
    """A bounded queue and one writer thread in front of a SQL table."""

    def __init__(
        self,
        url: str,
        queue_size: int = 100_000,
        batch_size: int = 1000,
        on_full: Callable[[int], None] | None = None,
    ) -> None:
        import sqlalchemy as sa

        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url)
        if url.startswith("sqlite"):
            # In WAL mode NORMAL sync survives a crash of the process (only a power cut can lose
            # the last commits), and spares an fsync per batch.
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            with self.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # readers do not block the writer
        metadata = sa.MetaData()
        self.table = _table(metadata)
        refusals = _refusals_table(metadata)
        metadata.create_all(self.engine)
        marker = {"qmark": "?", "numeric": ":{}", "named": ":c{}"}.get(self.engine.dialect.paramstyle, "%s")

        def insert(table: Any) -> str:
            names = [c.name for c in table.columns]
            markers = ", ".join(marker.format(i + 1) for i in range(len(names)))
            return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({markers})"

        self._insert, self._insert_refusal = insert(self.table), insert(refusals)
        self.batch_size = batch_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._on_full = on_full
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return self._queue.qsize()

    def put(self, records: Sequence[LogRecord | Refusal]) -> int:
        """Queue records without waiting; return how many were dropped because the queue was full."""
        lost = 0
        for record in records:
            if self._closed:
                lost += 1
                continue
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                lost += 1
        if lost:
            with self._lock:
                first = self.dropped == 0
                self.dropped += lost
            log.warning("prediction log queue full: %d prediction(s) not logged", lost)
            if first and self._on_full is not None:
                self._on_full(lost)
        return lost

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking records and write every queued one."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self.engine.dispose()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if not self._closed and self._queue.qsize() < self.batch_size:
                time.sleep(LINGER_SECONDS)  # let a batch gather
            batch = [first]
            stop = False
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[LogRecord | Refusal]) -> None:
        """One transaction through the driver's own executemany (SQLAlchemy's per-row work would
        cost the serving thread its share of the interpreter)."""
        sqlite = self.engine.dialect.name == "sqlite"

        def stamp(ts: datetime) -> Any:
            return ts.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else ts  # SQLAlchemy's SQLite format

        refusals = [(stamp(r.ts), r.alias, r.endpoint, int(r.status)) for r in batch if isinstance(r, Refusal)]
        rows = [
            (
                r.request_id,
                stamp(r.ts),
                None if r.customer_id is None else int(r.customer_id),  # never a numpy scalar: drivers differ
                r.model,
                r.version,
                r.variant,
                json.dumps(r.features(), allow_nan=False),
                float(r.probability),
                int(r.label),
                float(r.latency_ms),
            )
            for r in batch
            if isinstance(r, LogRecord)
        ]
        try:
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                if rows:
                    cursor.executemany(self._insert, rows)
                if refusals:
                    cursor.executemany(self._insert_refusal, refusals)
                connection.commit()
            finally:
                connection.close()
            self.written += len(rows)
        except Exception:  # the writer must outlive a bad batch; the loss is counted and logged
            log.exception("prediction log: a batch of %d could not be written", len(batch))
            with self._lock:
                self.dropped += len(rows)


def read_refusals(url: str, day: date) -> pd.DataFrame:
    """The requests refused or failed on a day (ts, alias, endpoint, status), oldest first."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        table = _refusals_table(sa.MetaData())
        if not sa.inspect(engine).has_table(REFUSALS):
            return pd.DataFrame(columns=[c.name for c in table.columns])
        start = datetime.combine(day, datetime.min.time())
        query = sa.select(table).where(table.c.ts >= start, table.c.ts < start + timedelta(days=1)).order_by(table.c.ts)
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()


def find_prediction(url: str, request_id: str) -> dict[str, Any] | None:
    """One logged prediction by its request_id (`<request>-<index>`), or None."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        table = _table(sa.MetaData())
        if not sa.inspect(engine).has_table(TABLE):
            return None
        with engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.request_id == request_id)).mappings().first()
    finally:
        engine.dispose()
    if row is None:
        return None
    found = dict(row)
    found["features"] = json.loads(found["features"])
    return found


def newest_logged_day(url: str) -> date | None:
    """The UTC day of the newest logged prediction; None when nothing is logged."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table(TABLE):
            return None
        table = _table(sa.MetaData())
        with engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(table.c.ts))).scalar()
    finally:
        engine.dispose()
    return None if newest is None else pd.Timestamp(newest).date()


def read_predictions(
    url: str, day: date | None = None, version: str | None = None, until: date | None = None
) -> pd.DataFrame:
    """Logged predictions of a day (or [day, until)) and/or a version, oldest first."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        table = _table(metadata)
        if not sa.inspect(engine).has_table(TABLE):
            return pd.DataFrame(columns=[c.name for c in table.columns])
        query = sa.select(table).order_by(table.c.ts)
        if day is not None:
            start = datetime.combine(day, datetime.min.time())
            end = datetime.combine(until, datetime.min.time()) if until else start + timedelta(days=1)
            query = query.where(table.c.ts >= start, table.c.ts < end)
        if version is not None:
            query = query.where(table.c.version == version)
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn)
    finally:
        engine.dispose()
    frame["features"] = frame["features"].map(json.loads)
    return frame
