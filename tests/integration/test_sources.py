"""Each source kind against a real server on loopback: PostgreSQL, HTTP, Redis Streams, S3."""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnops.data.publish import OrdersApi, publish_stream
from churnops.data.sources import ReadState, SourceError, read_http
from churnops.pipelines.ingest import SourceReport, ingest, ingest_source, make_lake
from churnops.pipelines.simulate import SimulationPaths, load_world, simulate
from churnops.settings import HttpSource, Settings, load_settings

pytestmark = pytest.mark.integration

ORDER_MAPPING = {
    "order_id": "order_ref",
    "customer_id": "customer",
    "order_date": "ordered_at",
    "total_amount": "amount",
    "product_id": "sku",
}


def _world(settings: Settings):  # type: ignore[no-untyped-def]
    return load_world(settings.simulation, SimulationPaths.from_settings(settings).cache_dir)


def test_postgres_customers_incremental_by_watermark(settings: Settings, postgres_url: str) -> None:
    """Customers in PostgreSQL: the first run reads all, the next only new and changed rows."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS customers"))
    engine.dispose()
    sources = [
        {
            "kind": "sql",
            "name": "pg_customers",
            "table": "customers",
            "url": postgres_url,
            "source_table": "customers",
            "watermark": "updated_at",
            "columns": {"customer_id": "id", "created_at": "signup_ts", "status": "account_status"},
        }
    ]
    pg = load_settings(
        None, workspace=str(settings.workspace), simulation=settings.simulation.model_dump(), sources=sources
    )
    from churnops.data.publish import publish_until

    world = _world(settings)
    paths = SimulationPaths.from_settings(pg)
    publish_until(world, paths.sources_dir, postgres_url, date(2024, 3, 1), None, start=date(2024, 1, 1))
    first = ingest(pg, date(2024, 3, 2))[0]
    publish_until(world, paths.sources_dir, postgres_url, date(2024, 4, 30), date(2024, 3, 1), start=date(2024, 1, 1))
    second = ingest(pg, date(2024, 5, 1))[0]
    again = ingest(pg, date(2024, 5, 1))[0]
    cut1 = pd.Timestamp("2024-03-02")
    known1 = world.customers[world.customers["created_at"] < cut1]
    assert first.rows_read == len(known1)
    closed_between = world.customers["closed_at"].between(cut1, pd.Timestamp("2024-05-01"), inclusive="left")
    new_between = world.customers["created_at"].between(cut1, pd.Timestamp("2024-05-01"), inclusive="left")
    assert second.rows_read == int((closed_between | new_between).sum())
    assert again.rows_read == second.rows_read
    lake = make_lake(pg)
    versions = lake.read("customers")
    latest = versions.drop_duplicates("customer_id", keep="last").set_index("customer_id")
    assert len(latest) == int((world.customers["created_at"] < pd.Timestamp("2024-05-01")).sum())
    closed = world.customers.loc[closed_between, "customer_id"].tolist()
    assert (latest.loc[closed, "status"] == "closed").all()


def test_http_source_pages_through_the_api_incrementally(simulated: Settings) -> None:
    world = _world(simulated)
    cut = pd.Timestamp("2024-03-01")
    api = OrdersApi(world.orders[world.orders["order_date"] < cut]).start()
    try:
        source = {
            "kind": "http",
            "name": "orders_api",
            "table": "orders",
            "url": api.url,
            "page_size": 500,
            "watermark": "ordered_at",
            "columns": ORDER_MAPPING,
        }
        cfg = load_settings(None, workspace=str(simulated.workspace), sources=[simulated.sources[0], source])
        reports = {r.source: r for r in ingest(cfg, date(2024, 3, 1))}
        assert reports["orders_api"].rows_read == len(world.orders[world.orders["order_date"] < cut])
        api.records = OrdersApi(world.orders).records
        api.stamps = [r["ordered_at"] for r in api.records]
        later = {r.source: r for r in ingest(cfg, date(2024, 5, 1))}
        assert later["orders_api"].rows_read == int((world.orders["order_date"] >= cut).sum())
        rerun = {r.source: r for r in ingest(cfg, date(2024, 3, 1))}
        assert rerun["orders_api"].rows_read == reports["orders_api"].rows_read
        orders = make_lake(cfg).read("orders")
        assert len(orders) == len(world.orders)
        assert orders["order_id"].is_unique
    finally:
        api.stop()


class _Flaky(BaseHTTPRequestHandler):
    """Fails the first `failures` requests with 503, then answers one page."""

    calls = 0
    failures = 2
    delay = 0.0

    def do_GET(self) -> None:
        type(self).calls += 1
        if type(self).calls <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            return
        time.sleep(type(self).delay)
        body = json.dumps({"data": [{"order_ref": "a"}], "next_cursor": None}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _http(url: str, **kw: Any) -> HttpSource:
    return HttpSource(kind="http", name="api", table="orders", url=url, **kw)


def test_http_retries_with_backoff_then_succeeds() -> None:
    _Flaky.calls, _Flaky.failures, _Flaky.delay = 0, 2, 0.0
    server = _serve(_Flaky)
    try:
        batch = read_http(_http(f"http://127.0.0.1:{server.server_port}/", retries=3, backoff_s=0.01), ReadState())
        assert len(batch.frame) == 1
        assert _Flaky.calls == 3
    finally:
        server.shutdown()


def test_http_gives_up_after_its_retries_with_a_clear_error() -> None:
    _Flaky.calls, _Flaky.failures, _Flaky.delay = 0, 100, 0.0
    server = _serve(_Flaky)
    try:
        with pytest.raises(SourceError, match=r"'api'.*failed after 3 attempts: HTTP 503"):
            read_http(_http(f"http://127.0.0.1:{server.server_port}/", retries=2, backoff_s=0.01), ReadState())
    finally:
        server.shutdown()


def test_http_timeout_is_retried_and_reported() -> None:
    _Flaky.calls, _Flaky.failures, _Flaky.delay = 0, 0, 1.0
    server = _serve(_Flaky)
    try:
        with pytest.raises(SourceError, match=r"failed after 2 attempts: ReadTimeout"):
            read_http(
                _http(f"http://127.0.0.1:{server.server_port}/", retries=1, backoff_s=0.01, timeout_s=0.2),
                ReadState(),
            )
    finally:
        server.shutdown()


def test_http_client_error_is_not_retried() -> None:
    api = OrdersApi(
        pd.DataFrame(
            columns=["order_id", "customer_id", "order_date", "total_amount", "product_id", "category"]
        ).astype({"order_date": "datetime64[us]"})
    ).start()
    try:
        # "answered HTTP 400" is the immediate refusal; a retried request would end in
        # "failed after N attempts" instead (and take the backoff first)
        with pytest.raises(SourceError, match="answered HTTP 400"):
            read_http(_http(api.url, page_size=99999, retries=5, backoff_s=5), ReadState())
    finally:
        api.stop()


def _stream_settings(simulated: Settings, redis_url: str, stream: str, workspace: Path | None = None) -> Settings:
    """The shop's customers and a stream of orders, in the shop's workspace or `workspace`."""
    source = {
        "kind": "stream",
        "name": "order_events",
        "table": "orders",
        "url": redis_url,
        "stream": stream,
        "batch_size": 300,
        "block_ms": 10,
        "columns": ORDER_MAPPING,
    }
    where = str(workspace or simulated.workspace)
    cfg = load_settings(None, workspace=where, sources=[simulated.sources[0], source])
    ingest(cfg, date(2024, 5, 1), only=["shop_customers"])
    return cfg


def _ingest_dying_before_the_ack(cfg: Settings, day: date, monkeypatch: pytest.MonkeyPatch) -> SourceReport:
    """A run that dies after its commit but before its ack: the entries it read stay pending."""
    import churnops.pipelines.ingest as ingest_module
    from churnops.data import sources as source_module

    def read_without_ack(src, state, *_):  # type: ignore[no-untyped-def]
        batch = source_module.read_stream(src, state)
        batch.on_committed = None
        return batch

    with monkeypatch.context() as patched:
        patched.setattr(ingest_module, "read_source", read_without_ack)
        return ingest_source(cfg.source("order_events"), make_lake(cfg), day, cfg.ingest)


def _pending(redis_url: str, stream: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).xpending(stream, "churnops-ingest")["pending"])


def test_stream_source_acks_only_after_commit_and_never_duplicates(
    simulated: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = f"orders-{time.time_ns()}"
    world = _world(simulated)
    first, rest = world.orders.iloc[:400], world.orders.iloc[400:600]
    publish_stream(first, redis_url, stream)
    cfg = _stream_settings(simulated, redis_url, stream)
    stream_source = cfg.source("order_events")
    lake = make_lake(cfg)
    report = _ingest_dying_before_the_ack(cfg, date(2024, 5, 1), monkeypatch)
    assert report.rows_read == 400
    assert _pending(redis_url, stream) == 400

    publish_stream(rest, redis_url, stream)
    report = ingest_source(stream_source, lake, date(2024, 5, 1), cfg.ingest)
    assert report.rows_read == 200  # the 400 redelivered entries were already in the lake
    assert _pending(redis_url, stream) == 0
    again = ingest_source(stream_source, lake, date(2024, 5, 1), cfg.ingest)
    assert again.status == "no new data"
    orders = lake.read("orders")
    assert len(orders) == 600
    assert orders["order_id"].is_unique


def test_stream_entries_of_a_later_interval_stay_pending_for_their_date(
    simulated: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries arrive out of time order. A date reads those before its midnight and leaves the
    later ones pending; a run that died before its ack is read again without its own entries
    twice and without dropping the ones it left pending; the last date reads the rest."""
    stream = f"orders-{time.time_ns()}"
    orders = _world(simulated).orders
    march = orders[orders["order_date"].between("2024-03-01", "2024-03-06", inclusive="left")]
    publish_stream(march.sample(frac=1.0, random_state=7), redis_url, stream)
    cfg = _stream_settings(simulated, redis_url, stream)
    lake = make_lake(cfg)
    days = [date(2024, 3, 3), date(2024, 3, 5), date(2024, 3, 6)]

    def before(day: date) -> int:
        return int((march["order_date"] < pd.Timestamp(day)).sum())

    first = ingest_source(cfg.source("order_events"), lake, days[0], cfg.ingest)
    assert first.rows_read == before(days[0])
    assert first.rows_later == _pending(redis_url, stream) == len(march) - before(days[0])

    died = _ingest_dying_before_the_ack(cfg, days[1], monkeypatch)
    assert died.rows_read == before(days[1]) - before(days[0])
    again = ingest_source(cfg.source("order_events"), lake, days[1], cfg.ingest)
    assert again.status == "no new data"  # what the run that died read is in the lake
    assert _pending(redis_url, stream) == len(march) - before(days[1])

    last = ingest_source(cfg.source("order_events"), lake, days[2], cfg.ingest)
    assert last.rows_read == len(march) - before(days[1])
    assert _pending(redis_url, stream) == 0
    read = lake.read("orders")
    assert read["order_id"].is_unique
    assert len(read) == len(march)
    for day in days:
        manifest = lake.manifest("orders", day)
        assert manifest is not None
        held = pd.read_parquet(lake.locate(manifest.parts[0].data.path), columns=["order_date"])["order_date"]
        assert held.max() < pd.Timestamp(day)


def test_file_source_and_lake_on_s3(settings: Settings, s3_options: dict[str, Any]) -> None:
    """Order files read from s3:// and a raw lake kept on s3://, both through fsspec."""
    import s3fs

    simulate(settings, date(2024, 2, 29))
    import boto3

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"shop-{time.time_ns()}"
    endpoint = s3_options["client_kwargs"]["endpoint_url"]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    local = settings.workspace / "sources" / "orders"
    for path in sorted(local.glob("orders-*.csv")):
        fs.put_file(str(path), f"{bucket}/orders/{path.name}")
    source = {
        "kind": "file",
        "name": "s3_orders",
        "table": "orders",
        "path": f"s3://{bucket}/orders/orders-*.csv",
        "storage_options": s3_options,
        "columns": ORDER_MAPPING,
    }
    cfg = load_settings(
        None,
        workspace=str(settings.workspace),
        lake_uri=f"s3://{bucket}/lake",
        lake_storage_options=s3_options,
        sources=[settings.sources[0], source],
    )
    reports = {r.source: r for r in ingest(cfg, date(2024, 3, 1))}
    expected = sum(len(pd.read_csv(p)) for p in local.glob("orders-*.csv"))
    assert reports["s3_orders"].rows_read == expected
    assert reports["s3_orders"].rows_quarantined == 0
    ingest(cfg, date(2024, 3, 1))  # rerun replaces
    lake = make_lake(cfg)
    assert lake.uri.startswith("s3://")
    assert len(lake.read("orders")) == expected
    assert fs.exists(f"{bucket}/lake/raw/orders/ingest_date=2024-03-01/_manifest.json")
    assert len(fs.glob(f"{bucket}/lake/raw/orders/ingest_date=2024-03-01/*.parquet")) == 1


def test_stream_dates_out_of_order_with_a_replay_end_as_in_order(
    simulated: Settings, redis_url: str, tmp_path: Path
) -> None:
    """The newest date read first, then an older one with the later dates owed (as a run of it
    does: `pipelines.replay`): the later date's parts are set aside, the older date and then the
    later one read their entries again by id range, and each partition holds the orders of its
    own interval, as in order; the parts set aside stay with their files."""
    from churnops.pipelines import replay

    orders = _world(simulated).orders
    march = orders[orders["order_date"].between("2024-03-01", "2024-03-06", inclusive="left")]
    shuffled = march.sample(frac=1.0, random_state=11)
    days = [date(2024, 3, 3), date(2024, 3, 6)]

    def stream_partitions(cfg: Settings) -> dict[str, str]:
        return {m.ingest_date: m.sha256 for m in make_lake(cfg).manifests("orders") if m.parts}

    in_order = _stream_settings(simulated, redis_url, f"a-{time.time_ns()}", tmp_path / "in-order")
    publish_stream(shuffled, redis_url, in_order.source("order_events").stream)  # type: ignore[union-attr]
    for day in days:
        ingest(in_order, day, only=["order_events"])

    late = _stream_settings(simulated, redis_url, f"b-{time.time_ns()}", tmp_path / "late")
    publish_stream(shuffled, redis_url, late.source("order_events").stream)  # type: ignore[union-attr]
    ingest(late, days[1], only=["order_events"])
    assert make_lake(late).manifest("orders", days[1]).rows == int((march["order_date"] < pd.Timestamp(days[1])).sum())  # type: ignore[union-attr]
    replay.owe(late, days[0], [days[1]])
    replay.set_aside_later(late, [days[1]], lambda _: None)
    ingest(late, days[0], only=["order_events"])
    replay.done(late, days[0])
    ingest(late, days[1], only=["order_events"])
    replay.paid(late, days[1])

    assert stream_partitions(late) == stream_partitions(in_order)
    assert len(stream_partitions(in_order)) == 2
    lake = make_lake(late)
    assert lake.read("orders")["order_id"].is_unique
    assert len(lake.read("orders")) == len(march)
    assert _pending(redis_url, late.source("order_events").stream) == 0  # type: ignore[union-attr]
    (aside,) = lake.manifest("orders", days[1]).set_aside  # type: ignore[union-attr]
    assert aside.part.source == "order_events"
    assert Path(lake.locate(aside.part.data.path)).exists()
    assert aside.recovered  # a read took its entries again whole: it is read again no more
    assert ingest(late, days[1], only=["order_events"])[0].status == "no new data"


@pytest.mark.parametrize(
    ("order", "waves"),
    [((3, 1, 0, 2), 1), ((1, 2, 0, 3), 1), ((3, 2, 1, 0), 2), ((2, 3, 1, 0), 2), ((1, 3, 2, 0), 3)],
)
def test_stream_dates_in_any_order_take_every_entry_once(
    simulated: Settings, redis_url: str, tmp_path: Path, order: tuple[int, ...], waves: int
) -> None:
    """Four dates in a given order, the entries arriving at once or in waves between runs; a
    date run before later ones sets their parts aside and runs them again, as `churnops run`
    does, except one later date ingested on its own (no run of it to replay). Every entry ends
    in the lake once, nothing stays pending, and each partition holds only its interval."""
    from churnops.pipelines import replay

    orders = _world(simulated).orders
    march = orders[orders["order_date"].between("2024-03-01", "2024-03-05", inclusive="left")]
    entries = march.sample(frac=1.0, random_state=sum(order))
    stream = f"d-{time.time_ns()}"
    cfg = _stream_settings(simulated, redis_url, stream, tmp_path / "ws")
    # a few orders a day arriving in waves: no volume rule
    cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"max_volume_drop": None})})
    days = [date(2024, 3, d) for d in (2, 3, 4, 5)]
    parts = np.array_split(np.arange(len(entries)), waves)
    publish_stream(entries.iloc[parts[0]], redis_url, stream)
    ran: list[date] = []
    for step, index in enumerate(order):
        day = days[index]
        later = [d for d in sorted(ran) if d > day and d != days[2]]  # days[2] was only ingested
        if later:
            replay.owe(cfg, day, later)
            replay.set_aside_later(cfg, later, lambda _: None)
        ingest(cfg, day, only=["order_events"])
        replay.done(cfg, day)
        for again in later:
            ingest(cfg, again, only=["order_events"])
            replay.paid(cfg, again)
        ran.append(day)
        if step + 1 < waves:
            publish_stream(entries.iloc[parts[step + 1]], redis_url, stream)
    ingest(cfg, days[-1], only=["order_events"])  # what waits for the last date
    lake = make_lake(cfg)
    read = lake.read("orders")
    assert read["order_id"].is_unique
    assert len(read) == len(entries)
    assert _pending(redis_url, stream) == 0
    for manifest in lake.manifests("orders"):
        for part in manifest.parts:
            held = pd.read_parquet(lake.locate(part.data.path), columns=["order_date"])["order_date"]
            assert held.max() < pd.Timestamp(manifest.ingest_date)


def test_a_stream_trimmed_since_its_part_was_set_aside_is_named(
    simulated: Settings, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries of a part set aside that the stream no longer holds cannot be read again: the read
    says so and where they are kept."""
    import redis

    from churnops.pipelines import replay

    stream = f"c-{time.time_ns()}"
    publish_stream(_world(simulated).orders.iloc[:50], redis_url, stream)
    cfg = _stream_settings(simulated, redis_url, stream, tmp_path / "ws")
    ingest(cfg, date(2024, 5, 1), only=["order_events"])
    replay.owe(cfg, date(2024, 4, 1), [date(2024, 5, 1)])
    replay.set_aside_later(cfg, [date(2024, 5, 1)], lambda _: None)
    redis.Redis.from_url(redis_url).xtrim(stream, maxlen=0)
    with caplog.at_level("WARNING"):
        ingest(cfg, date(2024, 4, 1), only=["order_events"])
    assert "no longer holds every entry of a part set aside" in caplog.text
