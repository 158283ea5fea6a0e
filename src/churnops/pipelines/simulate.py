"""Simulate the business and write it into the sources, one day or many at a time."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from churnops.data.publish import OrdersApi, PublishReport, publish_until
from churnops.data.simulation import World, simulate_business
from churnops.settings import Settings, SimulationSettings, SqlSource

STATE_FILE = ".simulation.json"


class SimulationError(RuntimeError):
    """The simulation cannot advance as asked; the message says why and what to do."""


@dataclass(frozen=True)
class SimulationPaths:
    """Where the simulator keeps its cache and writes its sources."""

    sources_dir: Path
    cache_dir: Path
    database_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulationPaths:
        """Paths under the workspace; the database is the default customers source's."""
        paths = settings.paths
        url = f"sqlite:///{paths.sources}/shop.db"
        for src in settings.sources:
            if isinstance(src, SqlSource) and src.table == "customers":
                url = src.url
                break
        return cls(paths.sources, paths.simulation_cache, url)


def config_hash(config: SimulationSettings) -> str:
    """Short hash of the simulation config: a changed config means a different world."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


def load_world(config: SimulationSettings, cache_dir: Path) -> World:
    """The world for this config, from the workspace cache or freshly generated."""
    folder = cache_dir / f"world-{config_hash(config)}"
    names = ("customers", "products", "orders")
    if all((folder / f"{n}.parquet").exists() for n in names):
        frames = {n: pd.read_parquet(folder / f"{n}.parquet") for n in names}
        return World(**frames)
    world = simulate_business(config)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        getattr(world, name).to_parquet(tmp / f"{name}.parquet", index=False)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return world


def published_until(sources_dir: Path) -> tuple[str | None, date | None]:
    """The config hash and last day already written into the sources, if any."""
    path = sources_dir / STATE_FILE
    if not path.exists():
        return None, None
    state = json.loads(path.read_text())
    return state["config_hash"], date.fromisoformat(state["until"])


def simulate(settings: Settings, until: date | None = None, stream_url: str | None = None) -> PublishReport:
    """Advance the simulated business to `until` (default: the end of its horizon).

    Args:
        settings: The loaded settings (`simulation` section and workspace).
        until: Last day to publish, inclusive.
        stream_url: Also append the new orders to this Redis stream.

    Returns:
        What was written.

    Raises:
        SimulationError: `until` is outside the horizon or before what is already published,
            or the sources were written by a different simulation config.
    """
    config = settings.simulation
    target = until or config.end
    if not config.start <= target <= config.end:
        raise SimulationError(f"--until {target} is outside the simulation ({config.start} .. {config.end})")
    paths = SimulationPaths.from_settings(settings)
    written_hash, since = published_until(paths.sources_dir)
    digest = config_hash(config)
    if written_hash is not None and written_hash != digest:
        raise SimulationError(
            f"the sources in {paths.sources_dir} were written by a different simulation config; "
            f"remove {paths.sources_dir} (or the whole workspace) to start over"
        )
    if since is not None and target < since:
        raise SimulationError(f"the sources already hold data up to {since}; the simulation only moves forward")
    world = load_world(config, paths.cache_dir)
    report = publish_until(
        world,
        paths.sources_dir,
        paths.database_url,
        until=target,
        since=since,
        start=config.start,
        orders_format=config.orders_file_format,
        stream_url=stream_url,
    )
    state = {"config_hash": digest, "until": target.isoformat()}
    tmp = paths.sources_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(paths.sources_dir / STATE_FILE)
    return report


def orders_api(settings: Settings, host: str, port: int) -> OrdersApi:
    """An HTTP orders API over everything published so far (not started)."""
    paths = SimulationPaths.from_settings(settings)
    _, until = published_until(paths.sources_dir)
    if until is None:
        raise SimulationError("nothing is published yet; run `churnops simulate` first")
    world = load_world(settings.simulation, paths.cache_dir)
    orders = world.orders[world.orders["order_date"] < pd.Timestamp(until) + pd.Timedelta(days=1)]
    return OrdersApi(orders, host, port)
