"""Write the simulated business into real sources, up to a date, in the sources' own names.

- customers -> a SQL table (`id, signup_ts, account_status, updated_at`), upserted
- products  -> one CSV file (`sku, category_name, list_price`), rewritten
- orders    -> one file per day (`order_ref, customer, ordered_at, amount, sku, category`)
- orders    -> optionally a Redis stream (one entry per order) and a paginated HTTP API

Advancing from one date to a later one writes only what happened in between, so a source
sees the business grow day by day. Every file is written to a temp name and renamed.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churnops.data.simulation import World
from churnops.settings import SIMULATOR_ORDER_COLUMNS


@dataclass(frozen=True)
class PublishReport:
    """What one `publish_until` call wrote."""

    since: date | None
    until: date
    customers_upserted: int
    orders_written: int
    order_files: int
    stream_entries: int


def orders_in_source_names(orders: pd.DataFrame) -> pd.DataFrame:
    """Orders as the shop's own systems name and format them."""
    out = orders.rename(columns=SIMULATOR_ORDER_COLUMNS)
    out["order_ref"] = "O" + out["order_ref"].astype(str)
    out["ordered_at"] = out["ordered_at"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return out[list(SIMULATOR_ORDER_COLUMNS.values())]


def customers_as_of(customers: pd.DataFrame, until: date) -> pd.DataFrame:
    """The customers table as the shop's database holds it at the end of `until`."""
    cutoff = pd.Timestamp(until) + pd.Timedelta(days=1)
    known = customers[customers["created_at"] < cutoff]
    closed = known["closed_at"].notna() & (known["closed_at"] < cutoff)
    return pd.DataFrame(
        {
            "id": known["customer_id"].to_numpy(),
            "signup_ts": known["created_at"].to_numpy(),
            "account_status": np.where(closed, "closed", "active"),
            "updated_at": np.where(closed, known["closed_at"], known["created_at"]),
        }
    ).astype({"updated_at": "datetime64[us]", "signup_ts": "datetime64[us]"})


def publish_until(
    world: World,
    sources_dir: Path,
    database_url: str,
    until: date,
    since: date | None,
    start: date,
    orders_format: str = "csv",
    stream_url: str | None = None,
    stream_name: str = "churnops:orders",
) -> PublishReport:
    """Write everything that happened in (since, until] into the sources.

    Args:
        world: The simulated business.
        sources_dir: Folder for the products CSV and the daily order files.
        database_url: SQLAlchemy URL of the shop database (customers).
        until: Last day to publish, inclusive.
        since: Last day already published, or None for a first publication.
        start: First day of the business (a first publication writes a file per day from it).
        orders_format: csv, parquet or jsonl for the daily order files.
        stream_url: If given, also append the orders to this Redis stream.
        stream_name: Stream key.

    Returns:
        Counts of what was written.
    """
    sources_dir.mkdir(parents=True, exist_ok=True)
    customers = customers_as_of(world.customers, until)
    if since is not None:
        lower = pd.Timestamp(since) + pd.Timedelta(days=1)
        customers = customers[customers["updated_at"] >= lower]
    upserted = _upsert_customers(database_url, customers)
    _write_atomic_csv(
        world.products.rename(columns={"product_id": "sku", "category": "category_name"}),
        sources_dir / "products.csv",
    )
    first_day = (since + timedelta(days=1)) if since else start
    orders = _orders_between(world.orders, first_day, until)
    files = _write_daily_orders(orders, sources_dir / "orders", first_day, until, orders_format)
    entries = publish_stream(orders, stream_url, stream_name) if stream_url else 0
    return PublishReport(since, until, upserted, len(orders), files, entries)


def _orders_between(orders: pd.DataFrame, first_day: date, until: date) -> pd.DataFrame:
    dates = orders["order_date"].to_numpy()
    lo = np.searchsorted(dates, np.datetime64(pd.Timestamp(first_day)), side="left")
    hi = np.searchsorted(dates, np.datetime64(pd.Timestamp(until) + pd.Timedelta(days=1)), side="left")
    return orders.iloc[lo:hi]


def _upsert_customers(database_url: str, customers: pd.DataFrame) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    meta = sa.MetaData()
    table = sa.Table(
        "customers",
        meta,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("signup_ts", sa.DateTime),
        sa.Column("account_status", sa.String(16)),
        sa.Column("updated_at", sa.DateTime, index=True),
    )
    meta.create_all(engine)
    if customers.empty:
        engine.dispose()
        return 0
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={"account_status": stmt.excluded.account_status, "updated_at": stmt.excluded.updated_at},
    )
    rows = [
        {"id": int(i), "signup_ts": s.to_pydatetime(), "account_status": st, "updated_at": u.to_pydatetime()}
        for i, s, st, u in zip(
            customers["id"],
            customers["signup_ts"],
            customers["account_status"],
            customers["updated_at"],
            strict=True,
        )
    ]
    with engine.begin() as conn:
        for i in range(0, len(rows), 50_000):
            conn.execute(stmt, rows[i : i + 50_000])
    engine.dispose()
    return len(rows)


def _write_daily_orders(orders: pd.DataFrame, folder: Path, first_day: date, until: date, fmt: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    named = orders_in_source_names(orders)
    days = orders["order_date"].dt.floor("D").to_numpy()
    written = 0
    day = first_day
    suffix = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}[fmt]
    while day <= until:
        stamp = np.datetime64(pd.Timestamp(day))
        lo = np.searchsorted(days, stamp, side="left")
        hi = np.searchsorted(days, stamp, side="right")
        if hi > lo:  # a day without orders has no file, as a shop's daily export would not
            _write_atomic(named.iloc[lo:hi], folder / f"orders-{day.isoformat()}.{suffix}", fmt)
            written += 1
        day += timedelta(days=1)
    return written


def _write_atomic(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    if fmt == "csv":
        pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    else:
        frame.to_json(tmp, orient="records", lines=True)
    os.replace(tmp, path)


def _write_atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    _write_atomic(frame, path, "csv")


def publish_stream(orders: pd.DataFrame, url: str, stream: str) -> int:
    """Append orders to a Redis stream, one entry per order, fields as text."""
    import redis

    named = orders_in_source_names(orders)
    client = redis.Redis.from_url(url)
    try:
        records = named.astype(str).to_dict(orient="records")
        for i in range(0, len(records), 5_000):
            pipe = client.pipeline(transaction=False)
            for record in records[i : i + 5_000]:
                pipe.xadd(stream, record)  # type: ignore[arg-type]
            pipe.execute()
    finally:
        client.close()
    return len(named)


class OrdersApi:
    """A paginated JSON API over orders, as a shop's order service would offer it.

    `GET /orders?since=<ISO time>&limit=<n>&cursor=<token>` answers
    `{"data": [...], "next_cursor": "<token>" | null}`, oldest first; `since` is exclusive.
    """

    def __init__(self, orders: pd.DataFrame, host: str = "127.0.0.1", port: int = 0) -> None:
        self.records = orders_in_source_names(orders).to_dict(orient="records")
        self.stamps = [r["ordered_at"] for r in self.records]
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the orders endpoint."""
        host, port = self.server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}/orders"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        """Answer one GET."""
        parsed = urlparse(request.path)
        if parsed.path != "/orders":
            self._send(request, 404, {"error": f"no such path {parsed.path}"})
            return
        query = parse_qs(parsed.query)
        try:
            limit = int(query.get("limit", ["1000"])[0])
            start = int(query.get("cursor", ["0"])[0])
        except ValueError:
            self._send(request, 400, {"error": "limit and cursor must be integers"})
            return
        if not 1 <= limit <= 10_000:
            self._send(request, 400, {"error": "limit must be between 1 and 10000"})
            return
        if start == 0 and "since" in query:
            import bisect

            start = bisect.bisect_right(self.stamps, pd.Timestamp(query["since"][0]).strftime("%Y-%m-%dT%H:%M:%S"))
        page = self.records[start : start + limit]
        nxt = start + limit if start + limit < len(self.records) else None
        self._send(request, 200, {"data": page, "next_cursor": str(nxt) if nxt is not None else None})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body, default=str).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def start(self) -> OrdersApi:
        """Serve in a background thread."""
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
