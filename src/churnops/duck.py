"""DuckDB connections as the project opens them."""

from __future__ import annotations

import threading
from typing import Any

_shared: Any = None
_shared_lock = threading.Lock()


def connect() -> Any:
    """An in-memory DuckDB database of its own that prints nothing: DuckDB's progress bar, on by
    default, draws on stdout during any query over two seconds, into the user's terminal or a
    caller reading the output. For a caller that sets database-wide options (threads, memory)."""
    import duckdb

    return _quiet(duckdb.connect())


def cursor() -> Any:
    """A connection of its own to this process's shared in-memory database, printing nothing.

    A new database costs 30-100 ms to open; a connection to an open one, microseconds. Views a
    connection registers and its TEMP tables are its own; database-wide options are not, so a
    caller that sets threads or memory limits uses `connect`.
    """
    global _shared
    import duckdb

    with _shared_lock:
        if _shared is None:
            _shared = duckdb.connect()
        return _quiet(_shared.cursor())


def _quiet(con: Any) -> Any:
    con.execute("SET enable_progress_bar = false")
    con.execute("SET enable_progress_bar_print = false")  # stays off if something turns the bar on
    return con
