"""The production step warns when real data of the past would be served as stale on the wall clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from churnops.serving.deploy import _stale_on_the_wall_clock
from churnops.settings import load_settings


@pytest.mark.parametrize(("days_ago", "warned"), [(0, False), (29, False), (30, True), (400, True)])
def test_a_logical_date_further_behind_than_the_ttl_is_named_with_the_setting_that_fixes_it(
    days_ago: int, warned: bool
) -> None:
    settings = load_settings(None, workspace="/nonexistent/ws", feast={"ttl_days": 30})
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    note = _stale_on_the_wall_clock(settings, day)
    assert bool(note) == warned
    if warned:
        assert f"set serving.as_of: {day}" in note
        assert f"{days_ago} days before today" in note
