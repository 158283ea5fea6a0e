"""Bulk writes into Feast's online stores (SQLite, Redis): the same rows Feast writes, without its per-value objects.

Feast's SQLite store (`online_write_batch`) turns each customer into protobuf objects and runs one
`INSERT ... ON CONFLICT` per customer and feature: a million customers with 22 features take
about nine minutes. The table it writes is simple — (entity_key, feature_name, value,
value_text, event_ts, created_ts), keyed on (entity_key, feature_name) — and its encodings
are fixed by formats Feast must keep stable (the entity key's v3 serialization, protobuf's wire
format). So this writes the identical rows from Arrow columns: the entity key is a constant
prefix plus the id's 8 little-endian bytes; a double `ValueProto` is tag 0x29 plus the IEEE
bytes; an int64 one is tag 0x20 plus a varint (memoised: counts repeat); a missing value is the
empty message with no text. `encodings_agree` checks every one of those against Feast's own
serializers before a write, and the caller falls back to Feast's path if any disagrees, so a
Feast upgrade that changed them costs speed, never correctness. `get_online_features`, the
Feast CLI and the registry keep working: it is Feast's table, in Feast's format.

Feast's Redis store keeps a hash per customer (key: the entity key then the project's name;
fields: each feature's murmur3 hash and `_ts:<view>`) and builds it through redis-py's pipeline,
whose command packing costs ~48 µs a customer (48 s for a million, while Redis itself takes
~10 s). `write_redis_rows` sends the same HSETs as one RESP byte string a batch, assembled from
pre-encoded pieces, and reads the replies of a batch while Redis works on the next one.
`redis_encodings_agree` checks the key and field spellings against Feast's helpers.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import struct
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

COLUMNS = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]  # (+ vector_value)
BATCH_CUSTOMERS = 50_000
REDIS_BATCH_CUSTOMERS = 20_000
DOUBLE_TAG = b"\x29"  # ValueProto.double_val: field 5, wire type 1 (64-bit)
INT64_TAG = b"\x20"  # ValueProto.int64_val: field 4, wire type 0 (varint)


def entity_key_prefix(join_key: str) -> bytes:
    """Feast's v3 serialization of a single int64 entity key, without the id's 8 bytes."""
    encoded = join_key.encode("utf8")
    int64_type = 4  # ValueType.INT64
    string_type = 2  # ValueType.STRING
    return struct.pack("<III", 1, string_type, len(encoded)) + encoded + struct.pack("<II", int64_type, 8)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # a negative int64 is its two's complement, ten bytes
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encodings_agree(join_key: str) -> bool:
    """Whether the encodings here are byte for byte Feast's, on values that exercise each rule."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    prefix = entity_key_prefix(join_key)
    for customer in (0, 1, 7, 2**40 + 3, -5):
        key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=customer)])
        if serialize_entity_key(key, entity_key_serialization_version=3) != prefix + struct.pack("<q", customer):
            return False
    for number in (0.0, -0.0, 1.5, 296.29, 1e-300, float("inf")):
        if ValueProto(double_val=number).SerializeToString() != DOUBLE_TAG + struct.pack("<d", number):
            return False
    for count in (0, 1, 127, 128, 300, 2**40, -1):
        if ValueProto(int64_val=count).SerializeToString() != _int64_bytes(count):
            return False
    return ValueProto().SerializeToString() == b""


def _int64_bytes(value: int) -> bytes:
    # A oneof member set to zero is still present on the wire (explicit presence), so 0 is 0x20 0x00.
    return INT64_TAG + _varint(value)


def table_columns(db: Path, table: str) -> list[str]:
    """The online table's columns, in order ([] when it does not exist)."""
    with sqlite3.connect(db) as conn:
        return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def _encoded(
    values: np.ndarray, missing: np.ndarray, is_int: bool, memo: dict[int, tuple[bytes, str]], with_texts: bool = True
) -> tuple[list[bytes], list[str | None]]:
    """One feature's serialized ValueProtos and value texts, a missing value as (b"", None)."""
    blobs: list[bytes] = []
    texts: list[str | None] = []
    if not with_texts and not is_int:
        raw = values.astype("<f8").tobytes()
        gone = missing | np.isnan(values)
        return [b"" if g else DOUBLE_TAG + raw[8 * i : 8 * i + 8] for i, g in enumerate(gone.tolist())], texts
    if is_int:
        for value, gone in zip(values.tolist(), missing.tolist(), strict=True):
            if gone:
                blobs.append(b"")
                texts.append(None)
                continue
            encoded = memo.get(value)
            if encoded is None:
                encoded = memo[value] = (_int64_bytes(value), str(value))
            blobs.append(encoded[0])
            texts.append(encoded[1])
        return blobs, texts
    raw = values.astype("<f8").tobytes()
    for i, (number, gone) in enumerate(zip(values.tolist(), missing.tolist(), strict=True)):
        if gone or math.isnan(number):
            blobs.append(b"")
            texts.append(None)
        else:
            blobs.append(DOUBLE_TAG + raw[8 * i : 8 * i + 8])
            texts.append(str(number))
    return blobs, texts


def _rows(
    batch: Any,
    join_key: str,
    features: list[str],
    int_features: set[str],
    prefix: bytes,
    stamps: tuple[Any, Any],
    changed: dict[str, np.ndarray] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """A batch's rows in the table's key order: customer by customer, features by name; with
    `changed` (a mask per feature over the batch's customers), only the cells it marks (and only
    those are encoded)."""
    ids = batch.column(join_key).to_numpy(zero_copy_only=False)
    keys = [prefix + struct.pack("<q", int(c)) for c in ids]
    memo: dict[int, tuple[bytes, str]] = {}
    event_ts, created_ts = stamps
    if changed is None:
        columns = []
        for name in sorted(features):
            values, missing = _values(batch, name)
            columns.append((name, *_encoded(values, missing, name in int_features, memo)))
        for i, key in enumerate(keys):
            for name, blobs, texts in columns:
                yield key, name, blobs[i], texts[i], event_ts, created_ts
        return
    # The marked cells, sorted to key order (customer, then feature by name) without a Python
    # loop over the unmarked ones.
    names, where, encoded = [], [], []
    for name in sorted(features):
        cells = np.flatnonzero(changed[name])
        if not len(cells):
            continue
        values, missing = _values(batch, name)
        names.append(name)
        where.append(cells)
        encoded.append(_encoded(values[cells], missing[cells], name in int_features, memo))
    if not where:
        return
    customers = np.concatenate(where)
    feature = np.concatenate([np.full(len(w), j) for j, w in enumerate(where)])
    place = np.concatenate([np.arange(len(w)) for w in where])
    order = np.lexsort((feature, customers))
    for i, j, k in zip(customers[order].tolist(), feature[order].tolist(), place[order].tolist(), strict=True):
        blobs, texts = encoded[j]
        yield keys[i], names[j], blobs[k], texts[k], event_ts, created_ts


def _values(batch: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    column = batch.column(name)
    return column.fill_null(0).to_numpy(zero_copy_only=False), column.is_null().to_numpy(zero_copy_only=False)


STATE_TABLE = "churnops_online_state"  # which snapshot each table holds, written with its rows


def changed_cells(
    current: Any, previous: Any, join_key: str, features: list[str], stamp_every_customer: bool = True
) -> dict[str, np.ndarray]:
    """Per feature, which of `current`'s customers (in its row order) need a write over `previous`:
    customers new since then, and cells whose value (or whether it is missing) differs. Floats
    compare by their bits, so a write is skipped only when it would store the same bytes. With
    `stamp_every_customer` (a view with a TTL), the feature Feast reads each customer's timestamp
    from (the last by name, `online_read` takes the last row) is always marked, so every
    customer's timestamp is the new snapshot's."""
    import pyarrow as pa

    ids = current.column(join_key).to_numpy(zero_copy_only=False).astype("int64")
    before = previous.column(join_key).to_numpy(zero_copy_only=False).astype("int64")
    if len(before) == 0:
        return {name: np.ones(len(ids), dtype=bool) for name in features}
    order = np.argsort(before, kind="stable")
    place = np.minimum(np.searchsorted(before[order], ids), len(before) - 1)
    known = before[order][place] == ids
    source = order[place]
    out: dict[str, np.ndarray] = {}
    for name in features:
        now, then = current.column(name), previous.column(name)
        now_missing = now.is_null().to_numpy(zero_copy_only=False)
        then_missing = then.is_null().to_numpy(zero_copy_only=False)[source]
        kind = "<i8" if pa.types.is_integer(now.type) else "<f8"
        a = now.fill_null(0).to_numpy(zero_copy_only=False).astype(kind).view("<i8")
        b = then.fill_null(0).to_numpy(zero_copy_only=False).astype(kind).view("<i8")[source]
        same = known & (now_missing == then_missing) & (now_missing | (a == b))
        out[name] = ~same
    if stamp_every_customer:
        out[max(features)] = np.ones(len(ids), dtype=bool)
    return out


def online_state(db: Path, table: str) -> tuple[str, int] | None:
    """The snapshot the table holds in full (its content hash) and its row count then, as the last
    bulk write recorded it; None when nothing is recorded."""
    with sqlite3.connect(db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (STATE_TABLE,)).fetchone():
            return None
        row = conn.execute(f'SELECT content_hash, row_count FROM "{STATE_TABLE}" WHERE name = ?', (table,)).fetchone()
    return (str(row[0]), int(row[1])) if row else None


def forget_online_state(db: Path, table: str) -> None:
    """Record that the table's content is unknown (before any write this module did not make)."""
    with sqlite3.connect(db) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (STATE_TABLE,)).fetchone():
            conn.execute(f'DELETE FROM "{STATE_TABLE}" WHERE name = ?', (table,))


def table_rows(db: Path, table: str) -> int:
    """Rows in the table now."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def write_online_rows(
    db: Path,
    table: str,
    snapshot: Any,
    join_key: str,
    features: list[str],
    int_features: set[str],
    event_ts: datetime,
    created_ts: datetime,
    progress: Callable[[int], None] | None = None,
    previous: Any = None,
    content_hash: str | None = None,
    stamp_every_customer: bool = True,
) -> int:
    """Upsert every (customer, feature) row of a snapshot into Feast's SQLite table.

    Rows go in the table's primary-key order (the entity key's bytes, then the feature name),
    so SQLite updates its B-tree in sequence instead of at random pages, in one transaction
    with a large page cache.

    With `previous`, the snapshot the table holds in full now, only the cells that differ from it
    are written (`changed_cells`): the table ends with the values a full write leaves, and,
    with `stamp_every_customer`, with the timestamp Feast reads for each customer too (without
    it, a view without a TTL, each customer's timestamp is that of their last change). The
    snapshot's `content_hash` is recorded with the rows, in the same transaction, so the next
    write knows what the table holds.

    Args:
        db: The online store's SQLite file.
        table: Feast's table for the feature view (`<project>_<view>`).
        snapshot: An Arrow table with `join_key` and the feature columns.
        join_key: The entity column (customer_id).
        features: The feature view's features.
        int_features: Those of type Int64 (the rest are Float64).
        event_ts: The snapshot time (naive UTC), as Feast stores it.
        created_ts: The rows' created timestamp (naive UTC).
        progress: Called with the customers written so far after each batch.

    Returns:
        Customers written.
    """
    prefix = entity_key_prefix(join_key)
    # stored as Feast's sqlite module stores datetimes (it registers its adapter: epoch seconds)
    adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
    stamps = (adapt(event_ts) if adapt else event_ts, adapt(created_ts) if adapt else created_ts)
    # the key's last 8 bytes are the id, little-endian: read big-endian, they sort as the bytes do
    ids = snapshot.column(join_key).to_numpy(zero_copy_only=False).astype("<i8")
    ordered = snapshot.take(np.argsort(ids.view(">u8"), kind="stable"))
    changed = None if previous is None else changed_cells(ordered, previous, join_key, features, stamp_every_customer)
    upsert = (
        f'INSERT INTO "{table}" ({", ".join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) '
        "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
        "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts"
    )
    done = 0
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -524288")  # 512 MiB of pages for this connection
        with conn:  # one transaction: readers see the old snapshot or the new one, never half
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{STATE_TABLE}" '
                "(name TEXT PRIMARY KEY, content_hash TEXT, row_count INTEGER)"
            )
            conn.execute(f'DELETE FROM "{STATE_TABLE}" WHERE name = ?', (table,))
            for batch in ordered.to_batches(max_chunksize=BATCH_CUSTOMERS):
                cells = None
                if changed is not None:
                    cells = {name: mask[done : done + batch.num_rows] for name, mask in changed.items()}
                conn.executemany(upsert, _rows(batch, join_key, features, int_features, prefix, stamps, cells))
                done += batch.num_rows
                if progress:
                    progress(done)
            if content_hash is not None:
                count = int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
                conn.execute(f'INSERT INTO "{STATE_TABLE}" VALUES (?, ?, ?)', (table, content_hash, count))
    finally:
        conn.close()
    return done


# --- Redis -------------------------------------------------------------------------------------


def redis_encodings_agree(join_key: str, project: str, view: str, features: list[str]) -> bool:
    """Whether the Redis key and field spellings here are Feast's (`_redis_key`, `_mmh3`)."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    if not encodings_agree(join_key):
        return False
    prefix, suffix = entity_key_prefix(join_key), project.encode("utf8")
    for customer in (0, 1, 2**40 + 3, -5):
        key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=customer)])
        ours = prefix + struct.pack("<q", customer) + suffix
        if _redis_key(project, key, entity_key_serialization_version=3) != ours:
            return False
    return len(set(redis_fields(view, features).values())) == len(features)


def redis_fields(view: str, features: list[str]) -> dict[str, bytes]:
    """Each feature's hash field in Feast's Redis layout: murmur3 of `<view>:<feature>`."""
    from feast.infra.online_stores.helpers import _mmh3

    return {name: _mmh3(f"{view}:{name}") for name in features}


def _bulk(piece: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(piece), piece)


class RedisView(NamedTuple):
    """One feature view's part of a customer's hash: its (versioned) name, features and Int64 ones."""

    name: str
    features: list[str]
    int_features: set[str]


def _hset_pieces(
    batch: Any,
    join_key: str,
    key_suffix: bytes,
    head: bytes,
    fields: list[tuple[str, bytes, bool]],
    prefix: bytes,
) -> list[list[bytes]]:
    """Per column of the HSETs (command head with key, then field-and-value per feature), one
    piece per customer: zipped, they spell the batch's commands."""
    ids = batch.column(join_key).to_numpy(zero_copy_only=False).tolist()
    columns = [[head + _bulk(prefix + struct.pack("<q", c) + key_suffix) for c in ids]]
    memo: dict[int, tuple[bytes, str]] = {}
    for name, field_bulk, is_int in fields:
        column = batch.column(name)
        missing = column.is_null().to_numpy(zero_copy_only=False)
        values = column.fill_null(0).to_numpy(zero_copy_only=False)
        blobs, _ = _encoded(values, missing, is_int, memo, with_texts=False)
        if is_int:  # few distinct counts: frame each once (with this feature's field)
            framed: dict[bytes, bytes] = {}
            pieces = []
            for blob in blobs:
                piece = framed.get(blob)
                if piece is None:
                    piece = framed[blob] = field_bulk + _bulk(blob)
                pieces.append(piece)
        else:
            pieces = [field_bulk + _bulk(blob) for blob in blobs]
        columns.append(pieces)
    return columns


def write_redis_rows(
    client: Any,
    project: str,
    views: list[RedisView],
    snapshot: Any,
    join_key: str,
    event_ts: datetime,
    key_ttl_seconds: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every customer's hash of a snapshot into Feast's Redis online store.

    Each customer's hash is set field by field as Feast's `online_write_batch` does for each
    view (the view's timestamp and its features; then EXPIRE when the store sets a key TTL), all
    views in one HSET, without Feast's read of the old timestamps: the caller writes only the
    newest snapshot.

    Args:
        client: A redis-py client for the store (Feast's own, from its config).
        project: The Feast project (the keys' suffix).
        views: The feature views written, as Feast names their fields.
        snapshot: An Arrow table with `join_key` and the feature columns.
        join_key: The entity column.
        event_ts: The snapshot time (aware), stored as a protobuf Timestamp.
        key_ttl_seconds: The store's key TTL, if it sets one.
        progress: Called with the customers written so far after each batch.

    Returns:
        Customers written.
    """
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(event_ts)
    stamp_bytes = _bulk(stamp.SerializeToString())
    prefix, suffix = entity_key_prefix(join_key), project.encode("utf8")
    fields: list[tuple[str, bytes, bool]] = []
    stamps = b""
    for view in views:
        hashed = redis_fields(view.name, view.features)
        fields += [(name, _bulk(hashed[name]), name in view.int_features) for name in view.features]
        stamps += _bulk(f"_ts:{view.name}".encode()) + stamp_bytes
    head = b"*%d\r\n" % (2 + 2 * (len(fields) + len(views))) + _bulk(b"HSET")
    replies_per_customer = 2 if key_ttl_seconds else 1
    connection = client.connection_pool.get_connection()
    done, waiting = 0, 0
    try:
        for batch in snapshot.to_batches(max_chunksize=REDIS_BATCH_CUSTOMERS):
            columns = _hset_pieces(batch, join_key, suffix, head, fields, prefix)
            columns.insert(1, [stamps] * batch.num_rows)
            if key_ttl_seconds:
                keys = columns[0]
                ttl = _bulk(str(int(key_ttl_seconds)).encode())
                expire = b"*3\r\n" + _bulk(b"EXPIRE")
                columns.append([expire + k[len(head) :] + ttl for k in keys])
            payload = b"".join(itertools.chain.from_iterable(zip(*columns, strict=True)))
            connection.send_packed_command([payload], check_health=False)
            _read_replies(connection, waiting)  # the previous batch's, while Redis works on this one
            waiting = batch.num_rows * replies_per_customer
            done += batch.num_rows
            if progress:
                progress(done)
        _read_replies(connection, waiting)
    except BaseException:
        connection.disconnect()  # unread replies would answer the next command on this connection
        raise
    finally:
        client.connection_pool.release(connection)
    return done


def _read_replies(connection: Any, count: int) -> None:
    for _ in range(count):
        connection.read_response()  # raises redis.ResponseError on an error reply
