"""Feature pipeline and Feast: table lineage, reruns, point-in-time joins, online store."""

from __future__ import annotations

import itertools
import sqlite3
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from churnops.features import feast_repo
from churnops.features.definitions import feature_specs
from churnops.features.table import FeatureTable
from churnops.pipelines.features import build_features, feature_table
from churnops.pipelines.ingest import ingest
from churnops.pipelines.simulate import simulate
from churnops.settings import Settings, load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def shop(tmp_path: Path) -> Settings:
    """1,200 customers over six months, simulated and ingested."""
    settings = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        simulation={"customers": 1200, "start": "2024-01-01", "end": "2024-06-30", "products": 300, "seed": 5},
    )
    simulate(settings, date(2024, 6, 30))
    ingest(settings, date(2024, 7, 1))  # the day after the last published one
    return settings


def _online(settings: Settings, customers: list[int]) -> pd.DataFrame:
    store = feast_repo.FeastFeatureStore(settings).store
    service = store.get_feature_service(feast_repo.CURRENT_SERVICE)
    rows = [{"customer_id": c} for c in customers]
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def _historical(settings: Settings, entity: pd.DataFrame) -> pd.DataFrame:
    store = feast_repo.FeastFeatureStore(settings).store
    service = store.get_feature_service(feast_repo.CURRENT_SERVICE)
    return store.get_historical_features(entity_df=entity, features=service).to_df()


def test_table_has_weekly_snapshots_lineage_and_a_stable_hash(shop: Settings) -> None:
    """A rerun replaces every snapshot with identical content and leaves no stray files."""
    first = build_features(shop, publish_to_feast=False)
    table = feature_table(shop)
    manifest = table.manifest()
    days = [date.fromisoformat(s) for s in first.snapshots]
    assert days[-1] == date(2024, 7, 1)
    assert all((b - a).days == 7 for a, b in itertools.pairwise(days))
    assert {p["table"] for p in manifest.raw_partitions} == {"orders", "customers"}
    assert all(len(p["sha256"]) == 64 for p in manifest.raw_partitions)
    assert manifest.features == [s.name for s in feature_specs((7, 30, 90))]
    second = build_features(shop, publish_to_feast=False)
    assert second.content_hash == first.content_hash
    on_disk = sorted(str(p) for p in Path(table.root).rglob("*.parquet"))
    assert on_disk == sorted(table.files())
    assert not list(Path(table.root).glob("_staging-*"))


def test_a_snapshot_failing_validation_stops_the_run_and_publishes_nothing(
    shop: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each snapshot is validated before it is written; the third one breaking a rule stops
    the run with pandera's reason, and the table committed before stays as it was."""
    from churnops.features import validation
    from churnops.pipelines import features as pipeline

    first = build_features(shop, publish_to_feast=False)
    table = feature_table(shop)
    before = table.manifest_path.read_text()
    seen: list[str] = []

    def corrupt_the_third(frame: pd.DataFrame, specs, snapshot: str, expected_rows: int | None = None) -> None:  # type: ignore[no-untyped-def]
        seen.append(snapshot)
        if len(seen) == 3:
            frame = frame.assign(frequency=frame["frequency"] - 10**6)
        validation.validate_snapshot(frame, specs, snapshot, expected_rows)

    monkeypatch.setattr(pipeline, "validate_snapshot", corrupt_the_third)
    with pytest.raises(validation.FeatureValidationError, match=r"frequency: frequency >= 0"):
        build_features(shop, publish_to_feast=False)
    assert len(seen) < len(first.snapshots)  # it stopped early
    assert table.manifest_path.read_text() == before
    assert sorted(table.files()) == sorted(str(p) for p in Path(table.root).glob("snapshot=*/*.parquet"))
    assert not list(Path(table.root).glob("_staging-*"))


def test_online_values_equal_point_in_time_values_for_1000_customers(shop: Settings) -> None:
    report = build_features(shop)
    latest = pd.Timestamp(report.snapshots[-1], tz="UTC")
    customers = list(range(1, 1001))
    online = _online(shop, customers).set_index("customer_id").sort_index()
    entity = pd.DataFrame({"customer_id": customers, "event_timestamp": [latest] * len(customers)})
    offline = _historical(shop, entity).set_index("customer_id").sort_index()
    columns = [s.name for s in feature_specs((7, 30, 90))]
    assert online.index.tolist() == customers
    pd.testing.assert_frame_equal(
        online[columns].astype("float64"), offline[columns].astype("float64"), check_exact=False, rtol=1e-12
    )
    assert online["frequency"].notna().sum() > 900


def _feast_tables(con: sqlite3.Connection) -> dict[str, str]:
    """Feast's table for each view (beside them, the bulk writer's record of what each holds)."""
    from churnops.features.online_bulk import STATE_TABLE

    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'") if r[0] != STATE_TABLE]
    tables = {view: next((n for n in names if n.endswith(f"_{view}")), "") for view in feast_repo.VIEWS}
    # Feast's apply makes a table for the offline-only history view too; nothing writes to it
    (history,) = (n for n in names if n.endswith(f"_{feast_repo.HISTORY_VIEW}"))
    assert con.execute(f'SELECT COUNT(*) FROM "{history}"').fetchone() == (0,)
    assert sorted([*tables.values(), history]) == sorted(names), names
    return tables


def _dump(db: Path) -> list[tuple[object, ...]]:
    """Every value in the SQLite online store, with its view."""
    with sqlite3.connect(db) as con:
        return sorted(
            (view, *row)
            for view, table in _feast_tables(con).items()
            for row in con.execute(f"SELECT entity_key, feature_name, value, event_ts FROM {table}")
        )


def _dump_all(db: Path) -> list[tuple[object, ...]]:
    """Every row and column of the SQLite online tables, with the view, sorted."""
    with sqlite3.connect(db) as con:
        rows = [
            (view, *row)
            for view, table in _feast_tables(con).items()
            for row in con.execute(f'SELECT * FROM "{table}"')
        ]
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def _empty_online_tables(db: Path) -> None:
    with sqlite3.connect(db) as con:
        for table in _feast_tables(con).values():
            con.execute(f'DELETE FROM "{table}"')


def test_the_features_are_served_from_a_view_of_order_features_and_a_view_of_time_features(shop: Settings) -> None:
    """The features that move with the clock alone have a view of their own, with the TTL; the
    rest have none, and a day's load stamps only the cells that changed there."""
    from churnops.features.definitions import AGEING_FEATURES

    build_features(shop)
    store = feast_repo.FeastFeatureStore(shop).store
    order, time = (store.get_feature_view(name) for name in (feast_repo.ORDER_VIEW, feast_repo.TIME_VIEW))
    assert {f.name for f in time.features} == set(AGEING_FEATURES) == {"recency", "customer_age_days", "overdue_ratio"}
    assert {f.name for f in order.features} | set(AGEING_FEATURES) == {s.name for s in feature_specs((7, 30, 90))}
    assert time.ttl.days == shop.feast.ttl_days
    assert not order.ttl
    service = store.get_feature_service(feast_repo.CURRENT_SERVICE)
    assert sorted(p.name for p in service.feature_view_projections) == sorted(feast_repo.VIEWS)


def test_training_joins_read_the_offline_history_view_and_equal_the_online_views_joins(shop: Settings) -> None:
    """The history view holds every feature, offline only, with the snapshot cadence as its TTL;
    a point-in-time join through it at snapshot times and between them equals the join through
    the online views, nulls included."""
    report = build_features(shop)
    opened = feast_repo.FeastFeatureStore(shop)
    store = opened.store
    history = store.get_feature_view(feast_repo.HISTORY_VIEW)
    assert not history.online
    assert history.ttl.days == shop.features.cadence_days
    names = [s.name for s in feature_specs((7, 30, 90))]
    assert [f.name for f in history.features] == names
    assert feast_repo.HISTORY_VIEW not in {
        p.name for p in store.get_feature_service(feast_repo.CURRENT_SERVICE).feature_view_projections
    }
    rng = np.random.default_rng(3)
    times = [pd.Timestamp(s, tz="UTC") for s in report.snapshots[-6:]]
    times += [times[0] + pd.Timedelta(days=3, hours=5), times[-2] + pd.Timedelta(days=6)]  # between snapshots
    entity = pd.DataFrame(
        {"customer_id": rng.integers(1, 1201, 400), "event_timestamp": rng.choice(np.array(times), 400)}
    ).drop_duplicates()
    through_history = opened.training_rows(entity, names)
    through_views = store.get_historical_features(
        entity_df=entity, features=[f"{feast_repo.view_of(n)}:{n}" for n in names]
    ).to_df()
    keys = ["customer_id", "event_timestamp"]
    a = through_history.sort_values(keys).reset_index(drop=True)
    b = through_views.sort_values(keys).reset_index(drop=True)[a.columns]
    assert len(a) == len(entity)
    assert a["frequency"].notna().sum() > 100  # most sampled customers are known and joined
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_the_bulk_online_writer_writes_exactly_the_rows_feast_writes(
    shop: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk writer's tables equal, byte for byte, the ones Feast's `write_to_online_store`
    leaves for the same snapshot (keys, values, texts, timestamps), nulls included."""
    from churnops.features import online_bulk

    assert online_bulk.encodings_agree(feast_repo.ENTITY_KEY)
    written: list[int] = []
    real_write = online_bulk.write_online_rows
    monkeypatch.setattr(online_bulk, "write_online_rows", lambda *a, **k: written.append(real_write(*a, **k)))
    report = build_features(shop)
    assert len(written) == 2  # the bulk path wrote the snapshot, a table per view
    assert written[0] == written[1] > 1000
    store = feast_repo.FeastFeatureStore(shop)
    bulk = _dump_all(store.online_db)
    _empty_online_tables(store.online_db)
    monkeypatch.setattr(online_bulk, "encodings_agree", lambda _key: False)  # Feast's own path
    feast_repo.FeastFeatureStore(shop).publish_newest(datetime.fromisoformat(report.snapshots[-1]))
    by_feast = _dump_all(store.online_db)
    assert len(bulk) == len(by_feast) > 1000
    assert {row[0] for row in by_feast} == set(feast_repo.VIEWS)
    assert any(row[3] == b"" for row in by_feast)  # some values are missing (a null's empty message)
    assert bulk == by_feast


def test_a_days_load_writes_only_what_changed_and_leaves_the_values_of_a_full_load(shop: Settings) -> None:
    """The store holds an older snapshot; loading the newest writes only the cells that differ
    (and, in the time view, the row Feast reads each customer's timestamp from), and leaves every
    value and text that a load of the newest into empty tables leaves; every customer's time
    features are stamped with the newest snapshot, order features with their last change."""
    from churnops.features import online_bulk

    report = build_features(shop)
    older, newest = (datetime.fromisoformat(d) for d in report.snapshots[-2:])
    store = feast_repo.FeastFeatureStore(shop)
    db = store.online_db
    with sqlite3.connect(db) as con:
        tables = _feast_tables(con)
    for table in tables.values():
        online_bulk.forget_online_state(db, table)
    store.publish_newest(older)  # unknown content: every row
    assert all(online_bulk.online_state(db, table) is not None for table in tables.values())
    feast_repo.FeastFeatureStore(shop).publish_newest(newest)  # from the older: the changes only

    def cells(db: Path) -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as con:
            return sorted(
                (view, *row)
                for view, table in tables.items()
                for row in con.execute(f'SELECT entity_key, feature_name, value, value_text FROM "{table}"')
            )

    def stamps(db: Path, view: str) -> set[object]:
        with sqlite3.connect(db) as con:
            return {ts for (ts,) in con.execute(f'SELECT DISTINCT event_ts FROM "{tables[view]}"')}

    def served_at(settings: Settings, view_name: str) -> set[object]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        opened = feast_repo.FeastFeatureStore(settings).store
        view = opened.get_feature_view(view_name)
        keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=c)]) for c in range(1, 1201)]
        found = opened._get_provider().online_read(config=opened.config, table=view, entity_keys=keys)
        return {stamp for stamp, values in found if values is not None}

    incremental = cells(db)
    incremental_served = {view: served_at(shop, view) for view in feast_repo.VIEWS}
    incremental_stamps = {view: stamps(db, view) for view in feast_repo.VIEWS}
    _empty_online_tables(db)
    for table in tables.values():
        online_bulk.forget_online_state(db, table)
    feast_repo.FeastFeatureStore(shop).publish_newest(newest)  # into empty tables: every row
    assert incremental == cells(db)
    assert len(incremental) > 1000
    both = {pd.Timestamp(when, tz="UTC").to_pydatetime() for when in (older, newest)}
    assert incremental_served[feast_repo.TIME_VIEW] == served_at(shop, feast_repo.TIME_VIEW) == {max(both)}
    assert incremental_served[feast_repo.ORDER_VIEW] == both  # a customer who did not order keeps the older
    assert served_at(shop, feast_repo.ORDER_VIEW) == {max(both)}
    # the full load stamps every row with the newest snapshot; the day's load left the unchanged
    # cells as they were, with the older one
    assert all(len(stamps(db, view)) == 1 for view in feast_repo.VIEWS)
    assert all(len(incremental_stamps[view]) == 2 for view in feast_repo.VIEWS)


def test_materializing_the_same_window_twice_leaves_an_identical_online_store(shop: Settings) -> None:
    report = build_features(shop)
    db = feast_repo.FeastFeatureStore(shop).online_db
    before = _dump(db)
    feast_repo.FeastFeatureStore(shop).publish_newest(datetime.fromisoformat(report.snapshots[-1]))
    assert _dump(db) == before
    assert len(before) > 1000


def test_a_backfill_leaves_the_online_store_holding_the_newest_snapshot(shop: Settings) -> None:
    """Features recomputed for an older date change the offline table only."""
    build_features(shop)
    db = feast_repo.FeastFeatureStore(shop).online_db
    before = _dump(db)
    report = build_features(shop, date(2024, 4, 1))
    assert report.snapshots[-1] == "2024-04-01"
    assert "left alone" in report.online
    assert _dump(db) == before
    newest = feature_table(shop).manifest()
    assert max(newest.snapshots) == "2024-07-01"  # the newer snapshots are still in the table


def test_feast_plan_in_the_workspace_repository_reports_no_changes(shop: Settings) -> None:
    """The repository holds Feast's own Python definitions, equal to what was applied."""
    import subprocess
    import sys

    build_features(shop)
    repo = shop.workspace / "feature_repo"
    assert (repo / "definitions.py").exists()
    feast = Path(sys.executable).with_name("feast")
    out = subprocess.run([str(feast), "plan"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "No changes to registry" in text, text
    assert "Deleted" not in text


def test_materialization_reports_its_batches_and_prints_no_colour(
    shop: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    build_features(shop, progress=lines.append)
    written = [line.strip() for line in lines if "customers written" in line]
    assert written, lines
    views = {line.split(":")[0] for line in written}
    assert views == {"online store (customer_order_features)", "online store (customer_time_features)"}, written
    for view in views:  # every customer, counted, in each view
        last = [line for line in written if line.startswith(view)][-1]
        done, total = last.split(": ")[1].removesuffix(" customers written").split(" of ")
        assert done == total, last
    captured = capfd.readouterr()
    assert "\x1b[" not in captured.out + captured.err
    assert "Materializing" not in captured.out


def test_a_corrected_source_row_shows_up_after_rematerializing(shop: Settings) -> None:
    build_features(shop)
    folder = shop.workspace / "sources" / "orders"
    path = folder / "orders-2024-06-10.csv"
    orders = pd.read_csv(path, dtype=str)
    customer = int(orders.loc[0, "customer"])
    before = _online(shop, [customer])["monetary"].iloc[0]
    orders.loc[0, "amount"] = str(float(orders.loc[0, "amount"]) + 1000.0)
    orders.to_csv(path, index=False)
    ingest(shop, date(2024, 7, 1))  # the correction replaces the partition
    build_features(shop)
    after = _online(shop, [customer])["monetary"].iloc[0]
    assert after == pytest.approx(before + 1000.0)


def _hand_made_table(settings: Settings) -> None:
    """Customer 1 has feature rows on Jan 1 and Jan 8 (frequency 1 and 2, recency 10 and 20);
    the time view's TTL is 30 days."""
    specs = feature_specs((7, 30, 90))
    rows = []
    for day, freq in ((1, 1), (8, 2)):
        ts = pd.Timestamp(f"2024-01-{day:02d}", tz="UTC")
        row: dict[str, object] = {"customer_id": 1, "event_timestamp": ts, "created_timestamp": ts}
        row.update(
            {s.name: (freq if s.name == "frequency" else 10 * freq if s.name == "recency" else 0) for s in specs}
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    for s in specs:
        frame[s.name] = frame[s.name].astype(s.dtype)
    table = FeatureTable(settings.workspace / "hand")
    staging = table.staging_dir()
    staged = {}
    for snapshot, part in frame.groupby(frame["event_timestamp"].dt.strftime("%Y-%m-%d")):
        path = staging / f"{snapshot}.parquet"
        part.to_parquet(path, index=False)
        staged[snapshot] = (path, len(part), "x")
    table.commit(staged, [], [s.name for s in specs], "hand")
    feast_repo.FeastFeatureStore(settings, table).apply(specs)


@pytest.mark.parametrize(
    ("when", "frequency", "recency"),
    [
        ("2024-01-05", 1.0, 10.0),  # between two rows: the earlier one
        ("2024-01-08", 2.0, 20.0),  # exactly on a row's timestamp: that row
        ("2024-01-20", 2.0, 20.0),  # after both, within the TTL
        ("2024-03-01", 2.0, None),  # beyond the TTL: the time view's features null, the order view has none
        ("2023-12-31", None, None),  # before any row: null, row kept
    ],
)
def test_point_in_time_join_on_hand_made_rows(
    tmp_path: Path, when: str, frequency: float | None, recency: float | None
) -> None:
    settings = load_settings(None, workspace=str(tmp_path / "ws"))
    _hand_made_table(settings)
    entity = pd.DataFrame(
        {"customer_id": [1, 2], "event_timestamp": pd.to_datetime([when, when], utc=True), "tag": ["a", "b"]}
    )
    result = _historical(settings, entity)
    assert len(result) == 2  # never drops an entity row
    one = result[result["tag"] == "a"].iloc[0]
    for name, expected in (("frequency", frequency), ("recency", recency)):
        if expected is None:
            assert np.isnan(one[name]), name
        else:
            assert one[name] == expected, name
    assert np.isnan(result[result["tag"] == "b"].iloc[0]["frequency"])


def test_redis_online_store_serves_the_same_values(shop: Settings, redis_url: str) -> None:
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    redis_settings = shop.model_copy(
        update={"feast": shop.feast.model_copy(update={"online_store": "redis", "redis_connection_string": host_port})}
    )
    build_features(redis_settings)
    customers = [1, 2, 3, 500]
    from_redis = _online(redis_settings, customers).set_index("customer_id")
    latest = pd.read_parquet(feature_table(shop).files()[-1]).set_index("customer_id")
    assert set(customers) <= set(latest.index)
    for customer in customers:
        assert from_redis.loc[customer, "frequency"] == latest.loc[customer, "frequency"]
        assert from_redis.loc[customer, "monetary"] == pytest.approx(latest.loc[customer, "monetary"])


def test_a_registry_in_a_database_serves_a_workspace_of_its_own(
    shop: Settings, redis_url: str, postgres_url: str
) -> None:
    """With `feast.registry` a database (PostgreSQL) and Redis online, an empty workspace of its
    own (a server's pod) finds the services and values the pipeline's workspace published."""
    import sqlalchemy as sa

    name = f"feast_{time.time_ns()}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    feast = {
        "project": "pods",
        "online_store": "redis",
        "redis_connection_string": redis_url.removeprefix("redis://").split("/")[0],
        "registry": f"{postgres_url.rsplit('/', 1)[0]}/{name}",
    }
    pipeline = shop.model_copy(update={"feast": shop.feast.model_copy(update=feast)})
    build_features(pipeline)
    assert not (shop.workspace / "feature_repo" / "registry.db").exists()

    pod = load_settings(None, workspace=str(shop.workspace.parent / "pod"), feast=feast)
    store = feast_repo.FeastFeatureStore(pod)
    assert store.exists()
    assert feast_repo.CURRENT_SERVICE in store.services()
    customers = [1, 2, 3, 500]
    served = _online(pod, customers).set_index("customer_id")
    latest = pd.read_parquet(feature_table(shop).files()[-1]).set_index("customer_id")
    for customer in customers:
        assert served.loc[customer, "frequency"] == latest.loc[customer, "frequency"]
        assert served.loc[customer, "monetary"] == pytest.approx(latest.loc[customer, "monetary"])
    assert not (pod.workspace / "feature_repo" / "registry.db").exists()


def test_database_and_redis_passwords_stay_out_of_the_repository_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """feature_store.yaml names the environment variable Feast expands; the store itself gets the URL."""
    from feast.repo_config import load_repo_config

    url = "postgresql+psycopg://churnops:s3cret@db.example:5432/feast"
    settings = load_settings(None, workspace=str(tmp_path / "ws"), feast={"registry": url})
    on_disk = feast_repo.repo_config(settings, secrets=False)["registry"]["path"]
    assert on_disk == "${CHURNOPS_FEAST__REGISTRY}"
    assert feast_repo.repo_config(settings)["registry"]["path"] == url
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(feast_repo.repo_config(settings, secrets=False)))
    monkeypatch.setenv("CHURNOPS_FEAST__REGISTRY", url)
    assert load_repo_config(repo, repo / "feature_store.yaml").registry.path == url  # as `feast` by hand reads it
    without = load_settings(None, workspace=str(tmp_path / "ws"), feast={"registry": "sqlite:///registry.sqlite"})
    assert feast_repo.repo_config(without, secrets=False)["registry"]["path"] == "sqlite:///registry.sqlite"
    with pytest.raises(ValueError, match="not a database URL"):
        load_settings(None, workspace=str(tmp_path / "ws"), feast={"registry": "registry.db"})
    # the store writes its file without the password and is configured with it (Feast connects lazily)
    monkeypatch.delenv("CHURNOPS_FEAST__REGISTRY")
    store = feast_repo.FeastFeatureStore(settings).store
    written = (settings.workspace / "feature_repo" / "feature_store.yaml").read_text()
    assert "s3cret" not in written
    assert "${CHURNOPS_FEAST__REGISTRY}" in written
    assert store.config.registry.path == url
    in_query = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        feast={"registry": "postgresql+psycopg://db.example/feast?password=s3cret"},
    )
    assert "s3cret" not in str(feast_repo.repo_config(in_query, secrets=False))
    redis = load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        feast={"online_store": "redis", "redis_connection_string": "redis.example:6379,password=s3cret,ssl=true"},
    )
    assert feast_repo.repo_config(redis, secrets=False)["online_store"]["connection_string"] == (
        "${CHURNOPS_FEAST__REDIS_CONNECTION_STRING}"
    )
    assert "s3cret" in feast_repo.repo_config(redis)["online_store"]["connection_string"]


def _redis_dump(url: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash in the Redis database, field by field, with its TTL state."""
    import redis

    client = redis.Redis.from_url(url)
    return {key: {**client.hgetall(key), b"ttl?": bytes([client.ttl(key) > 0])} for key in client.scan_iter(count=1000)}


@pytest.mark.parametrize("key_ttl", [None, 86_400])
def test_the_bulk_redis_writer_writes_exactly_the_hashes_feast_writes(
    shop: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch, key_ttl: int | None
) -> None:
    """Into Redis, the bulk writer leaves the hashes Feast's `write_to_online_store` leaves for
    the same snapshot: keys, every field and value (nulls included), the timestamp and, when the
    store sets one, the keys' TTL; and Feast reads the values back."""
    import redis

    from churnops.features import online_bulk

    host_port = redis_url.removeprefix("redis://").split("/")[0]
    db_url = f"redis://{host_port}/7"  # a database of its own: this test empties it
    redis.Redis.from_url(db_url).flushdb()
    online = {"online_store": "redis", "redis_connection_string": f"{host_port},db=7"}
    settings = shop.model_copy(update={"feast": shop.feast.model_copy(update=online)})
    if key_ttl:
        real_config = feast_repo.repo_config

        def with_ttl(s: Settings, secrets: bool = True) -> dict[str, object]:
            config = real_config(s, secrets)
            return {**config, "online_store": {**config["online_store"], "key_ttl_seconds": key_ttl}}

        monkeypatch.setattr(feast_repo, "repo_config", with_ttl)
    written: list[int] = []
    real_write = online_bulk.write_redis_rows
    monkeypatch.setattr(online_bulk, "write_redis_rows", lambda *a, **k: written.append(real_write(*a, **k)))
    report = build_features(settings)
    assert len(written) == 1  # the bulk path wrote the snapshot
    bulk = _redis_dump(db_url)
    assert len(bulk) == written[0] > 1000
    assert all(row[b"ttl?"] == bytes([bool(key_ttl)]) for row in bulk.values())
    latest = pd.read_parquet(feature_table(shop).files()[-1]).set_index("customer_id")
    sample = [int(c) for c in latest.index[:50]]
    online = _online(settings, sample).set_index("customer_id")
    names = [s.name for s in feature_specs((7, 30, 90))]
    a = online.loc[sample, names].astype("float64").to_numpy()
    b = latest.loc[sample, names].astype("float64").to_numpy()
    assert ((a == b) | (np.isnan(a) & np.isnan(b))).all()
    assert np.isnan(b).any()  # nulls were among the values compared
    redis.Redis.from_url(db_url).flushdb()
    monkeypatch.setattr(online_bulk, "encodings_agree", lambda _key: False)  # Feast's own path
    feast_repo.FeastFeatureStore(settings).publish_newest(datetime.fromisoformat(report.snapshots[-1]))
    assert len(written) == 1
    assert _redis_dump(db_url) == bulk


def test_the_validate_step_catches_a_changed_snapshot_and_an_online_store_that_disagrees(shop: Settings) -> None:
    """`check_features` (the validate step) passes on what the features step wrote, reading every
    customer back from the online store; one value changed in the online store, or one value
    changed in the committed snapshot file, fails it with a message naming the problem."""
    from churnops.features.validation import FeatureValidationError
    from churnops.pipelines.features import check_features

    day = date(2024, 7, 1)
    build_features(shop, day)
    checked = check_features(shop, day, sample=10_000)
    assert checked.snapshot == "2024-07-01"
    assert checked.online_sampled == checked.rows > 1000  # the sample is every customer here

    table = feature_table(shop)
    path = table.path_of(table.manifest().snapshots["2024-07-01"])
    frame = pd.read_parquet(path)
    buyer = frame.loc[frame["monetary"].notna(), "customer_id"].iloc[0]
    changed = frame[frame["customer_id"] == buyer].copy()
    changed["monetary"] = changed["monetary"] + 1.0
    store = feast_repo.FeastFeatureStore(shop).store
    store.write_to_online_store(feast_repo.ORDER_VIEW, changed)
    with pytest.raises(FeatureValidationError, match=rf"disagrees .* 1 of {len(frame)} .*customer {buyer} monetary"):
        check_features(shop, day, sample=10_000)
    import struct

    from churnops.features.online_bulk import entity_key_prefix

    db = feast_repo.FeastFeatureStore(shop).online_db
    with sqlite3.connect(db) as con:  # the customer's rows gone, as if never loaded
        key = entity_key_prefix("customer_id") + struct.pack("<q", int(buyer))
        for name in _feast_tables(con).values():
            assert con.execute(f"DELETE FROM {name} WHERE entity_key = ?", (key,)).rowcount > 0
    with pytest.raises(FeatureValidationError, match=rf"1 of {len(frame)} .* not in the online store .*{buyer}"):
        check_features(shop, day, sample=10_000)
    for view in feast_repo.VIEWS:
        store.write_to_online_store(view, frame[frame["customer_id"] == buyer])
    check_features(shop, day, sample=10_000)  # put back: it passes again

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    committed = pq.read_table(path)
    pq.write_table(committed, path, compression="gzip")  # rewritten: other bytes, the same values
    check_features(shop, day)  # the hash is of the values, not the file's bytes
    index = committed.schema.get_field_index("monetary")
    monetary = committed["monetary"]
    bumped = pc.if_else(pc.equal(committed["customer_id"], buyer), pc.add(monetary, 1.0), monetary)
    tampered = committed.set_column(index, committed.schema.field(index), bumped)
    assert tampered.schema == committed.schema  # the same types: only the one value differs
    pq.write_table(tampered, path)
    with pytest.raises(FeatureValidationError, match="2024-07-01 on disk is not the one committed"):
        check_features(shop, day)
