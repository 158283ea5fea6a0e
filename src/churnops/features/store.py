"""The feature store as training sees it: point-in-time rows for (customer, time) pairs.

Two implementations: Feast (`feast_repo.FeastFeatureStore`, the workspace's store) and
`SnapshotFeatures`, an exact join on a feature table whose snapshots were computed at the
entity rows' times (a backtest's private table, which must not touch the workspace's Feast
registry or online store). For such rows both give the same values: Feast's point-in-time
join picks the newest row at or before the time, which is the row at that very time.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd

from churnops.data.tables import parquet_scan
from churnops.features.table import FeatureTable


class FeatureStore(Protocol):
    """Where training gets its features from."""

    def training_rows(self, entities: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """The entity rows (customer_id, event_timestamp in UTC, any other columns) with the
        features as of each row's time; rows without features get nulls, none is dropped."""


class SnapshotFeatures:
    """Features of a feature table joined on the exact snapshot time."""

    def __init__(self, table: FeatureTable) -> None:
        self.table = table

    def training_rows(self, entities: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """See `FeatureStore.training_rows`."""
        from churnops import duck

        files = self.table.files()
        con = duck.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("entities", entities)
            picked = ", ".join(f"f.{name}" for name in features)
            joined: pd.DataFrame = con.execute(
                f"""SELECT e.*, {picked} FROM entities AS e
                    LEFT JOIN {parquet_scan(files)} AS f
                    ON f.customer_id = e.customer_id AND f.event_timestamp = e.event_timestamp"""
            ).fetchdf()
        finally:
            con.close()
        return joined
