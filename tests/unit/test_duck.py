"""The project's DuckDB connections print nothing, however long a query runs."""

from __future__ import annotations

import pytest

from churnops import duck


def _long_query(con: object) -> None:
    con.execute("SET progress_bar_time = 0")  # type: ignore[attr-defined]  # draw at once, not after 2 s
    con.execute("SELECT count(DISTINCT i % 1000003) FROM range(20000000) t(i)").fetchall()  # type: ignore[attr-defined]


def test_a_long_query_draws_no_progress_bar_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    """DuckDB draws its bar on stdout by default (a benchmark reading a JSON line broke on it);
    `duck.connect` turns it off, and the same query on a plain connection shows it is needed."""
    import duckdb

    _long_query(duck.connect())
    assert capfd.readouterr().out == ""
    _long_query(duckdb.connect())
    assert "%" in capfd.readouterr().out  # the oracle: a plain connection does draw it


def test_cursors_share_a_database_but_not_their_views_or_settings(capfd: pytest.CaptureFixture[str]) -> None:
    """`duck.cursor` connections are cheap because they share one database; what one registers
    stays its own, and each prints nothing."""
    import pyarrow as pa

    first, second = duck.cursor(), duck.cursor()
    first.register("batch", pa.table({"k": [1, 2]}))
    second.register("batch", pa.table({"k": [5, 6, 7]}))
    assert first.sql("SELECT count(*) FROM batch").fetchall() == [(2,)]
    assert second.sql("SELECT count(*) FROM batch").fetchall() == [(3,)]
    first.close()
    import duckdb

    with pytest.raises(duckdb.CatalogException, match="batch"):
        duck.cursor().sql("SELECT count(*) FROM batch")
    _long_query(second)
    assert capfd.readouterr().out == ""
