"""DuckDB connections as the project opens them."""

from __future__ import annotations

from typing import Any


def connect() -> Any:
    """An in-memory DuckDB connection that prints nothing: DuckDB's progress bar, on by default,
    draws on stdout during any query over two seconds, into the user's terminal or a caller
    reading the output."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET enable_progress_bar_print = false")  # stays off if something turns the bar on
    return con
