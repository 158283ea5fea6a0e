"""Bulk writes into Feast's SQLite online store: the same rows Feast writes, without its per-value objects.

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
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]  # (+ vector_value)
BATCH_CUSTOMERS = 50_000
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
    values: np.ndarray, missing: np.ndarray, is_int: bool, memo: dict[int, tuple[bytes, str]]
) -> tuple[list[bytes], list[str | None]]:
    """One feature's serialized ValueProtos and value texts, a missing value as (b"", None)."""
    blobs: list[bytes] = []
    texts: list[str | None] = []
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
    batch: Any, join_key: str, features: list[str], int_features: set[str], prefix: bytes, stamps: tuple[Any, Any]
) -> Iterator[tuple[Any, ...]]:
    """A batch's rows in the table's key order: customer by customer, features by name."""
    ids = batch.column(join_key).to_numpy(zero_copy_only=False)
    keys = [prefix + struct.pack("<q", int(c)) for c in ids]
    memo: dict[int, tuple[bytes, str]] = {}
    columns = []
    for name in sorted(features):
        column = batch.column(name)
        missing = column.is_null().to_numpy(zero_copy_only=False)
        values = column.fill_null(0).to_numpy(zero_copy_only=False)
        columns.append((name, *_encoded(values, missing, name in int_features, memo)))
    event_ts, created_ts = stamps
    for i, key in enumerate(keys):
        for name, blobs, texts in columns:
            yield key, name, blobs[i], texts[i], event_ts, created_ts


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
) -> int:
    """Upsert every (customer, feature) row of a snapshot into Feast's SQLite table.

    Rows go in the table's primary-key order (the entity key's bytes, then the feature name),
    so SQLite updates its B-tree in sequence instead of at random pages, in one transaction
    with a large page cache.

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
            for batch in ordered.to_batches(max_chunksize=BATCH_CUSTOMERS):
                conn.executemany(upsert, _rows(batch, join_key, features, int_features, prefix, stamps))
                done += batch.num_rows
                if progress:
                    progress(done)
    finally:
        conn.close()
    return done
