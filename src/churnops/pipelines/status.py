"""What the workspace holds: sources, raw partitions, row counts, each step's newest run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from churnops.pipelines.features import feature_table
from churnops.pipelines.ingest import make_lake
from churnops.pipelines.simulate import SimulationPaths, published_until
from churnops.runlog import newest_runs
from churnops.settings import Settings


@dataclass
class TableStatus:
    """Committed content of one raw table."""

    table: str
    partitions: int
    rows: int
    quarantined: int
    first_date: str | None
    last_date: str | None
    sources: list[str] = field(default_factory=list)
    first_event: str | None = None
    last_event: str | None = None
    set_aside: int = 0  # parts kept but not read (an older date ran after their date)


@dataclass
class WorkspaceStatus:
    """Everything `churnops status` shows."""

    workspace: str
    lake_uri: str
    sources: list[dict[str, Any]]
    simulated_until: str | None
    tables: list[TableStatus]
    runs: list[dict[str, Any]]  # the newest run of each step
    features: dict[str, Any] | None = None


def workspace_status(settings: Settings) -> WorkspaceStatus:
    """Collect the workspace's state without changing anything."""
    lake = make_lake(settings)
    tables = []
    for table in lake.tables():
        manifests = lake.manifests(table)
        if not manifests:
            continue
        firsts = [p.watermark["event_first"] for m in manifests for p in m.parts if p.watermark.get("event_first")]
        lasts = [p.watermark["event_last"] for m in manifests for p in m.parts if p.watermark.get("event_last")]
        tables.append(
            TableStatus(
                table=table,
                partitions=len(manifests),
                rows=sum(m.rows for m in manifests),
                quarantined=sum(p.rows_quarantined for m in manifests for p in m.parts),
                first_date=manifests[0].ingest_date,
                last_date=manifests[-1].ingest_date,
                sources=sorted({p.source for m in manifests for p in m.parts}),
                first_event=min(firsts)[:10] if firsts else None,
                last_event=max(lasts)[:10] if lasts else None,
                set_aside=sum(len(m.set_aside) for m in manifests),
            )
        )
    _, until = published_until(SimulationPaths.from_settings(settings).sources_dir)
    sources = [{"name": s.name, "kind": s.kind, "table": s.table, "enabled": s.enabled} for s in settings.sources]
    manifest = feature_table(settings).manifest()
    features = None
    if manifest.snapshots:
        names = sorted(manifest.snapshots)
        features = {
            "snapshots": len(names),
            "first": names[0],
            "last": names[-1],
            "rows": manifest.rows,
            "content_hash": manifest.content_hash,
            "engine": manifest.engine,
        }
    return WorkspaceStatus(
        workspace=str(settings.workspace),
        lake_uri=settings.lake_uri,
        sources=sources,
        simulated_until=until.isoformat() if until else None,
        tables=tables,
        runs=_newest_runs(settings),
        features=features,
    )


def _newest_runs(settings: Settings) -> list[dict[str, Any]]:
    """The newest run of each step, oldest first: from the run log for the steps that write it
    (alone or in a day), and for the others (validate, due, staging, production, monitor, ...)
    from the results the daily steps keep in `runs/<date>/`, whether `churnops run` or Airflow
    ran them. A step's newest run that did something is shown before a newer skip of it."""
    import json
    from collections import defaultdict
    from datetime import UTC, datetime

    logged = {str(r.get("command", "")): r for r in newest_runs(settings.paths)}
    files: dict[str, list[tuple[float, Path]]] = defaultdict(list)  # step -> (written, file); `<step>.json`
    for path in (settings.paths.root / "runs").glob("*/*.json"):
        if path.stem not in logged:
            with contextlib.suppress(OSError):
                files[path.stem].append((path.stat().st_mtime, path))
    kept = []
    for step, found in files.items():
        newest = None
        for written, path in sorted(found, reverse=True):  # newest first; read until one that did something
            try:
                skipped = bool(json.loads(path.read_text()).get("skipped"))
            except (OSError, ValueError):
                continue
            ran = datetime.fromtimestamp(written, UTC).isoformat(timespec="seconds")
            record = {"logged_at": ran, "command": step, "date": path.parent.name}
            record["status"] = "skipped" if skipped else "ok"
            newest = record if newest is None or not skipped else newest
            if not skipped:
                break
        if newest is not None:
            kept.append(newest)
    return sorted([*logged.values(), *kept], key=lambda r: str(r.get("logged_at", "")))


def quarantined_rows(settings: Settings, table: str | None = None, ingest_date: str | None = None) -> pd.DataFrame:
    """The committed quarantine: every row and file set aside, newest ingest date first.

    Args:
        settings: The workspace's settings.
        table: Only this raw table (default: all).
        ingest_date: Only this ingest date (YYYY-MM-DD; default: all).

    Returns:
        One row per quarantined row or file: table, ingest_date, source, file and file_row
        (where a file source read it; row -1 and no file_row for a file set aside whole),
        reason, and source_row (the row as read, as JSON).
    """
    lake = make_lake(settings)
    frames = []
    for name in [table] if table else lake.tables():
        for manifest in lake.manifests(name):
            if ingest_date and manifest.ingest_date != ingest_date:
                continue
            for part in manifest.parts:
                if part.quarantine is None:
                    continue
                rows = pq.read_table(lake.locate(part.quarantine.path), filesystem=lake.fs).to_pandas()
                frames.append(rows.assign(table=name, ingest_date=manifest.ingest_date))
    columns = ["table", "ingest_date", "source", "file", "file_row", "reason", "source_row"]
    if not frames:
        return pd.DataFrame(columns=columns)
    found = pd.concat(frames, ignore_index=True).reindex(columns=[*columns, "row_number"])
    order = found.sort_values(["ingest_date", "table", "source", "row_number"], ascending=[False, True, True, True])
    return order[columns].reset_index(drop=True)
