"""The drift rule on the simulated shop's own features: Evidently's distance against a brute-force
oracle, few false alarms on windows without change, and the scenarios found within a set time.

The served population of a day is the feature snapshot of that day (every customer known then);
the reference is the snapshot of the champion's day, as in `monitor_day`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from churnops.monitoring.decide import derive
from churnops.monitoring.drift import NEWCOMER_FEATURE, _distances, _evidently
from churnops.settings import MonitoringSettings

pytestmark = pytest.mark.slow
CHAMPION_DAY = date(2024, 8, 1)
START = date(2024, 8, 4)  # scenarios begin three days after the champion's day
CHECK_EVERY = 3  # days between the checks replayed here
THRESHOLD = 0.1


@cache
def _snapshots(kind: str | None, magnitude: float, customers: int = 3000, until: int = 40) -> pd.DataFrame:
    from churnops.data.simulation import simulate_business
    from churnops.features.duckdb_engine import compute_features
    from churnops.settings import DriftScenario, SimulationSettings

    scenarios = [DriftScenario(kind=kind, start=START, magnitude=magnitude)] if kind else []  # type: ignore[arg-type]
    world = simulate_business(
        SimulationSettings(
            customers=customers,
            products=400,
            start=date(2024, 1, 1),
            end=date(2024, 10, 31),
            seed=7,
            scenarios=scenarios,
        )
    )
    days = [CHAMPION_DAY, *(CHAMPION_DAY + timedelta(days=k) for k in range(CHECK_EVERY, until, CHECK_EVERY))]
    return compute_features(
        world.orders,
        world.customers[["customer_id", "created_at"]],
        [datetime.combine(d, datetime.min.time()) for d in days],
        (7, 30, 90),
    )


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("customer_id", "event_timestamp")]


def _day(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    return frame[frame["event_timestamp"] == pd.Timestamp(day)]


def oracle(reference: pd.DataFrame, current: pd.DataFrame, features: list[str]) -> dict[str, float]:
    """The normed Wasserstein distance by hand: W1 over the reference's (population) std."""
    out = {}
    for column in features:
        ref, cur = reference[column].dropna().astype(float), current[column].dropna().astype(float)
        out[column] = float(stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))
    return out


def _share(distances: dict[str, float]) -> float:
    return sum(d >= THRESHOLD for d in distances.values()) / len(distances)


def test_evidentlys_distance_is_the_normed_wasserstein_distance_of_the_oracle() -> None:
    """On a quiet window, a shifted one and a strongly shifted one, to 1e-9."""
    for kind, day in ((None, CHAMPION_DAY + timedelta(days=3)), ("price_shift", CHAMPION_DAY + timedelta(days=24))):
        frame = _snapshots(kind, 1.0)
        features = _features(frame)
        reference = _day(frame, CHAMPION_DAY)[features].astype("float64")
        current = _day(frame, day)[features].astype("float64").sample(1500, random_state=0)
        got = _distances(_evidently(reference, current, features, THRESHOLD, 0.5))
        want = oracle(reference, current, features)
        assert got.keys() == want.keys()
        for column in features:
            assert got[column] == pytest.approx(want[column], abs=1e-9), column


def test_fifty_windows_without_change_raise_an_alarm_at_most_five_percent_of_the_time() -> None:
    """Fifty days of 1,500 customers drawn from the champion's own day: the data set's verdict is
    "drift" on at most 5% of them, and hysteresis (3 checks) leaves no alarm."""
    frame = _snapshots(None, 0.0)
    features = _features(frame)
    population = _day(frame, CHAMPION_DAY)[features].astype("float64")
    reference = population.sample(frac=0.5, random_state=1)
    rest = population.drop(reference.index)
    history = {}
    for i in range(50):
        window = rest.sample(min(1500, len(rest)), replace=len(rest) < 1500, random_state=100 + i)
        history[(CHAMPION_DAY + timedelta(days=i)).isoformat()] = {
            "data_drift": _share(oracle(reference, window, features)) >= 0.5
        }
    drifted = sum(h["data_drift"] for h in history.values())
    alarms = sum(bool(derive(history, date.fromisoformat(d), 3, 7).alarms) for d in history)
    assert drifted <= 2
    assert alarms <= 2


@pytest.mark.parametrize(
    ("kind", "magnitude", "within_days"),
    [("price_shift", 1.0, 21), ("concept_drift", 1.0, 30)],
)
def test_each_scenario_is_detected_within_its_days_and_the_unchanged_shop_is_not(
    kind: str, magnitude: float, within_days: int
) -> None:
    """Checks every 3 days against the champion's day, a drift share of 0.3, an alarm after 2
    checks: the scenario's alarm comes within `within_days` of its start, while the same shop
    without it raises none over those days (its customers age: the share grows by itself, slowly)."""

    def first_alarm(frame: pd.DataFrame) -> date | None:
        features = _features(frame)
        reference = _day(frame, CHAMPION_DAY)[features]
        history = {}
        for stamp in sorted(frame["event_timestamp"].unique())[1:]:
            day = pd.Timestamp(stamp).date()
            current = _day(frame, day)[features].sample(1500, random_state=0)
            history[day.isoformat()] = {"data_drift": _share(oracle(reference, current, features)) >= 0.3}
            if derive(history, day, 2, 7).alarms:
                return day
        return None

    found = first_alarm(_snapshots(kind, magnitude))
    assert found is not None
    assert (found - START).days <= within_days
    quiet = first_alarm(_snapshots(None, 0.0))
    assert quiet is None or quiet > START + timedelta(days=within_days)


NEWCOMER_SHOP = 20_000  # customers: about 1,400 newcomers (first order within 30 days) a day


def _newcomers(frame: pd.DataFrame, day: date, cfg: MonitoringSettings) -> pd.DataFrame:
    rows = _day(frame, day)
    return rows[rows[NEWCOMER_FEATURE] <= cfg.newcomer_days][_features(frame)]


def _first_newcomer_alarm(frame: pd.DataFrame, cfg: MonitoringSettings) -> date | None:
    """The newcomers' check at the shipped defaults (30 days, 1,000 compared, share 0.5), every 3
    days against the champion's day's newcomers, an alarm after 2 checks."""
    features = _features(frame)
    reference = _newcomers(frame, CHAMPION_DAY, cfg)
    assert len(reference) >= cfg.newcomer_min_sample
    history = {}
    for stamp in sorted(frame["event_timestamp"].unique())[1:]:
        day = pd.Timestamp(stamp).date()
        current = _newcomers(frame, day, cfg).sample(cfg.newcomer_min_sample, random_state=0)
        distances = oracle(reference.sample(cfg.newcomer_min_sample, random_state=1), current, features)
        history[day.isoformat()] = {"newcomer_drift": _share(distances) >= cfg.drift_share}
        if derive(history, day, 2, 7).alarms:
            return day
    return None


def test_a_new_segment_is_found_among_the_newcomers_where_the_whole_population_shows_nothing() -> None:
    """Every signup from the scenario's start on is of the new segment: among all customers a few
    percent within weeks, below any distance on the whole population, while among the newcomers
    it is most of them. Found within 36 days; the unchanged shop's newcomers raise no alarm in 45."""
    cfg = MonitoringSettings()
    segment = _snapshots("new_segment", 1.0, NEWCOMER_SHOP, 49)
    found = _first_newcomer_alarm(segment, cfg)
    assert found is not None
    assert (found - START).days <= 36
    assert _first_newcomer_alarm(_snapshots(None, 0.0, NEWCOMER_SHOP, 49), cfg) is None
    features = _features(segment)
    whole = _day(segment, CHAMPION_DAY)[features]
    for day in (found, found + timedelta(days=CHECK_EVERY)):
        current = _day(segment, day)[features].sample(1500, random_state=0)
        assert _share(oracle(whole, current, features)) < 0.3  # the whole population's check is blind to it


def test_fifty_windows_of_newcomers_without_change_raise_an_alarm_at_most_five_percent_of_the_time() -> None:
    """Fifty windows of 1,000 newcomers drawn from the champion's own day, against the other half
    of that day's newcomers: at the default share the newcomers' verdict is "drift" on at most 5%
    of them, and hysteresis (3 checks) leaves no alarm."""
    cfg = MonitoringSettings()
    frame = _snapshots(None, 0.0, 3 * NEWCOMER_SHOP, 1)
    newcomers = _newcomers(frame, CHAMPION_DAY, cfg).astype("float64")
    reference = newcomers.sample(frac=0.5, random_state=1)
    rest = newcomers.drop(reference.index)
    assert len(rest) >= cfg.newcomer_min_sample
    features = _features(frame)
    history = {}
    for i in range(50):
        window = rest.sample(cfg.newcomer_min_sample, random_state=100 + i)
        history[(CHAMPION_DAY + timedelta(days=i)).isoformat()] = {
            "newcomer_drift": _share(oracle(reference, window, features)) >= cfg.drift_share
        }
    drifted = sum(h["newcomer_drift"] for h in history.values())
    alarms = sum(bool(derive(history, date.fromisoformat(d), 3, 7).alarms) for d in history)
    assert drifted <= 2
    assert alarms <= 2
