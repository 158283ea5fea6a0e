"""A simulated e-commerce business: customers, products and orders with churn and drift.

Each customer has a latent purchase rate, spend level and category taste, signs up on some day,
buys through a thinned Poisson process shaped by yearly and weekly seasonality, and churns at a
latent time. In the weeks before churning their purchase rate cools down, so churn shows in
behaviour (recency, recent activity) without being certain: slow buyers also go quiet for a
while, and some churners leave abruptly.

Everything is vectorised with numpy and deterministic for a given seed: the whole horizon is
generated at once and `publish.py` writes it out up to a date, so advancing day by day gives
the same data as jumping to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from churnops.settings import DriftScenario, SimulationSettings

DAY_S = 86_400.0
BASE_RATE_PER_DAY = 0.026
COOLING_FLOOR = 0.15


@dataclass(frozen=True)
class World:
    """The simulated business over its whole horizon.

    Attributes:
        customers: customer_id, created_at, churn_at (NaT if never within the horizon),
            closed_at (NaT if the account stays open), segment.
        products: product_id, category, list_price.
        orders: order_id, customer_id, order_date, total_amount, product_id, category;
            sorted by order_date.
    """

    customers: pd.DataFrame
    products: pd.DataFrame
    orders: pd.DataFrame


@dataclass(frozen=True)
class Lives:
    """Spells of activity; a customer who comes back has two."""

    owner: np.ndarray
    kind: np.ndarray  # 0: first spell, 1: comeback spell, 2: the new segment's extra buying
    rate: np.ndarray
    start: np.ndarray
    churn: np.ndarray  # the latent churn time that shapes the pre-churn cool-down
    leave: np.ndarray  # when buying actually stops (earlier under concept drift)
    cooling: np.ndarray
    pause_start: np.ndarray
    pause_end: np.ndarray


def _scenario(scenarios: list[DriftScenario], kind: str) -> DriftScenario | None:
    found = [s for s in scenarios if s.kind == kind]
    return found[0] if found else None


def _day_index(day: date, start: date) -> float:
    return float((pd.Timestamp(day) - pd.Timestamp(start)).days)


def seasonality(days: np.ndarray, start: date) -> np.ndarray:
    """Demand multiplier for fractional day offsets from `start` (yearly, holiday, weekly)."""
    stamps = pd.Timestamp(start) + pd.to_timedelta(days, unit="D")
    doy = stamps.dayofyear.to_numpy()
    yearly = 1.0 + 0.15 * np.sin(2 * np.pi * (doy - 80) / 365.25)
    holiday = np.where((stamps.month == 11) & (stamps.day >= 20) | (stamps.month == 12) & (stamps.day <= 24), 1.35, 1.0)
    weekly = np.where(stamps.dayofweek.to_numpy() >= 5, 1.1, 0.95)
    return yearly * holiday * weekly


SEASON_MAX = 1.15 * 1.35 * 1.1


def simulate_business(config: SimulationSettings) -> World:
    """Generate the whole simulated business for the configured horizon.

    Args:
        config: Size, horizon, seed and drift scenarios.

    Returns:
        Customers, products and orders; the same config always gives the same world.
    """
    rng = np.random.default_rng(config.seed)
    horizon = _day_index(config.end, config.start) + 1.0
    products = _products(rng, config)
    n = config.customers

    # Signups: a third of the base is there in the first month, the rest arrives steadily.
    early = rng.random(n) < 0.35
    signup = np.where(early, rng.uniform(0, 30, n), rng.uniform(0, horizon * 0.92, n))
    segment = np.zeros(n, dtype=np.int8)
    new_segment = _scenario(config.scenarios, "new_segment")
    # Scenario draws come from their own streams so that adding a scenario leaves the world
    # before its start day exactly as it was.
    scenario_rng = np.random.default_rng([config.seed, 1])
    if new_segment is not None:
        seg_start = _day_index(new_segment.start, config.start)
        joins = (signup >= seg_start) & (scenario_rng.random(n) < new_segment.magnitude)
        segment[joins] = 1

    engagement = rng.lognormal(0.0, 0.75, n)
    spend = rng.lognormal(0.0, 0.45, n)
    satisfaction = rng.normal(0.0, 1.0, n)  # unobserved: keeps churn from being certain
    rate = BASE_RATE_PER_DAY * engagement * (config.orders_per_customer / 10.0)
    spend = np.where(segment == 1, spend * 0.35, spend)

    # Churn: engaged, satisfied customers stay longer; segment 1 churns fast.
    mean_life = 380.0 * np.power(engagement, 0.6) * np.exp(0.45 * satisfaction)
    mean_life = np.where(segment == 1, mean_life * 0.5, mean_life)
    churn = signup + rng.exponential(mean_life)
    cooling_days = rng.uniform(30, 110, n)
    abrupt = rng.random(n) < 0.4
    cooling_days[abrupt] = 0.0

    # Quiet is a signal, not a certainty: some customers take a break, and some who left
    # come back months later for a second spell. (All per-customer draws are made here, in a
    # fixed order and size, so a scenario changes nothing before its start day.)
    pauses = rng.random(n) < 0.45
    pause_start = np.where(pauses, signup + rng.uniform(20, 500, n), np.inf)
    pause_end = pause_start + rng.uniform(40, 150, n)
    comeback = rng.random(n) < 0.4
    comeback_gap = rng.uniform(45, 240, n)
    second_length = rng.exponential(mean_life * 0.6)

    leave = churn.copy()
    concept = _scenario(config.scenarios, "concept_drift")
    if concept is not None:
        c_start = _day_index(concept.start, config.start)
        alive = churn > c_start
        # After the change, price-sensitive (high-spend) customers leave, without warning.
        concept_rng = np.random.default_rng([config.seed, 2])
        hazard_scale = np.exp(concept.magnitude * 4.0 * np.log(spend) / 0.45)
        start_point = np.maximum(signup, c_start)
        redraw = start_point + concept_rng.exponential(mean_life / np.maximum(hazard_scale, 0.05))
        leave = np.where(alive, np.minimum(churn, redraw), churn)

    second_start = leave + comeback_gap
    second = comeback & (second_start < horizon)
    idx = np.flatnonzero(second)
    second_end = second_start[idx] + second_length[idx]
    # The new segment buys 2.2x as often: an extra spell at 1.2x the base rate, appended last
    # so the draws of everyone else stay put.
    seg = np.flatnonzero(segment == 1)
    lives = Lives(
        owner=np.concatenate([np.arange(n), idx, seg]),
        kind=np.concatenate([np.zeros(n, np.int64), np.ones(len(idx), np.int64), np.full(len(seg), 2)]),
        rate=np.concatenate([rate, rate[idx], rate[seg] * 1.2]),
        start=np.concatenate([signup, second_start[idx], signup[seg]]),
        churn=np.concatenate([churn, second_end, churn[seg]]),
        leave=np.concatenate([leave, second_end, leave[seg]]),
        cooling=np.concatenate([cooling_days, cooling_days[idx], cooling_days[seg]]),
        pause_start=np.concatenate([pause_start, np.full(len(idx), np.inf), pause_start[seg]]),
        pause_end=np.concatenate([pause_end, np.full(len(idx), np.inf), pause_end[seg]]),
    )
    churn = leave.copy()
    churn[idx] = second_end

    taste = _category_taste(rng, config, segment)
    orders = _orders(config, horizon, lives, spend, taste, products)

    churn_at = np.where(churn < horizon, churn, np.nan)
    closes = (~np.isnan(churn_at)) & (rng.random(n) < 0.5)
    closed = np.where(closes, churn_at + rng.uniform(20, 120, n), np.nan)
    closed = np.where(closed < horizon, closed, np.nan)
    base = pd.Timestamp(config.start)
    customers = pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "created_at": _to_ts(base, signup),
            "churn_at": _to_ts(base, churn_at),
            "closed_at": _to_ts(base, closed),
            "segment": segment,
        }
    )
    return World(customers=customers, products=products, orders=orders)


def _to_ts(base: pd.Timestamp, days: np.ndarray) -> pd.Series:
    seconds = np.round(days * DAY_S)
    return pd.Series(base + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us]")


def _products(rng: np.random.Generator, config: SimulationSettings) -> pd.DataFrame:
    cat_popularity = 1.0 / np.arange(1, config.categories + 1) ** 0.8
    cat_popularity /= cat_popularity.sum()
    category = rng.choice(config.categories, size=config.products, p=cat_popularity)
    category[: config.categories] = np.arange(min(config.categories, config.products))
    cat_price = rng.lognormal(3.4, 0.6, config.categories)
    price = np.round(cat_price[category] * rng.lognormal(0, 0.35, config.products), 2)
    order = np.argsort(category, kind="stable")
    return pd.DataFrame(
        {
            "product_id": [f"P{i:06d}" for i in range(1, config.products + 1)],
            "category": [f"cat_{c:02d}" for c in category[order]],
            "list_price": price[order],
        }
    )


def _category_taste(rng: np.random.Generator, config: SimulationSettings, segment: np.ndarray) -> np.ndarray:
    """Three favourite categories per customer (popularity-weighted; segment 1 likes the tail)."""
    k = config.categories
    popularity = 1.0 / np.arange(1, k + 1) ** 0.8
    popularity /= popularity.sum()
    favourites = rng.choice(k, size=(len(segment), 3), p=popularity)
    tail = rng.integers(max(0, k - 10), k, size=(len(segment), 3))
    return np.where(segment[:, None] == 1, tail, favourites)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of 64-bit integers."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniform(seed: int, purpose: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (seed, purpose, keys), not on position.

    A customer's draws stay the same whatever happens to other customers, so a scenario that
    changes some customers from some day on leaves everything else exactly as it was.
    """
    with np.errstate(over="ignore"):
        z = _mix(np.full(len(keys[0]), np.uint64(seed) * _GOLDEN + np.uint64(purpose), dtype=np.uint64))
        for key in keys:
            z = _mix(z ^ (key.astype(np.uint64) * _GOLDEN))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _orders(
    config: SimulationSettings,
    horizon: float,
    lives: Lives,
    spend: np.ndarray,
    taste: np.ndarray,
    products: pd.DataFrame,
) -> pd.DataFrame:
    from scipy import special, stats

    seed = config.seed
    end_active = np.minimum(lives.churn, horizon)
    duration = np.maximum(end_active - lives.start, 0.0)
    u_count = keyed_uniform(seed, 1, lives.owner, lives.kind)
    candidates = stats.poisson.ppf(u_count, lives.rate * duration * SEASON_MAX).astype(np.int64)
    life = np.repeat(np.arange(len(lives.owner)), candidates)
    offsets = np.cumsum(candidates) - candidates
    k = np.arange(len(life)) - offsets[life]  # the candidate's number within its spell
    owner, kind = lives.owner[life], lives.kind[life]
    t = lives.start[life] + keyed_uniform(seed, 2, owner, kind, k) * duration[life]
    # Thinning: keep a candidate with the seasonal demand and the pre-churn cooling factor.
    until_churn = lives.churn[life] - t
    cool = lives.cooling[life]
    with np.errstate(divide="ignore", invalid="ignore"):
        ramp = np.where(cool > 0, np.clip(until_churn / cool, 0.0, 1.0), 1.0)
    cooling = COOLING_FLOOR + (1 - COOLING_FLOOR) * ramp
    paused = (t >= lives.pause_start[life]) & (t < lives.pause_end[life])
    demand = keyed_uniform(seed, 3, owner, kind, k) * SEASON_MAX < seasonality(t, config.start) * cooling
    keep = demand & ~paused & (t < lives.leave[life])
    owner, kind, k, t = owner[keep], kind[keep], k[keep], t[keep]
    order_by_time = np.lexsort((k, kind, owner, t))
    owner, kind, k, t = owner[order_by_time], kind[order_by_time], k[order_by_time], t[order_by_time]
    m = len(t)

    def draw(purpose: int) -> np.ndarray:
        return keyed_uniform(seed, purpose, owner, kind, k)

    # What was bought: a favourite category mostly, sometimes anything.
    slot = np.searchsorted([0.55, 0.85], draw(4), side="right")
    category = taste[owner, slot]
    wander = draw(5) < 0.2
    anything = np.minimum((draw(6) * config.categories).astype(np.int64), config.categories - 1)
    category[wander] = anything[wander]
    codes = products["category"].str.slice(4).astype(int).to_numpy()
    first = np.searchsorted(codes, np.arange(config.categories), side="left")
    count = np.searchsorted(codes, np.arange(config.categories), side="right") - first
    count = np.maximum(count, 1)
    pick = first[category] + np.floor(draw(7) ** 1.5 * count[category]).astype(np.int64)
    pick = np.minimum(pick, len(products) - 1)

    quantity = 1 + stats.poisson.ppf(draw(8), 0.35).astype(np.int64)
    price = products["list_price"].to_numpy()[pick]
    noise = np.exp(0.1 * special.ndtri(np.clip(draw(9), 1e-12, 1 - 1e-12)))
    amount = price * quantity * np.sqrt(spend[owner]) * noise
    shift = _scenario(config.scenarios, "price_shift")
    if shift is not None:
        amount = np.where(t >= _day_index(shift.start, config.start), amount * (1 + shift.magnitude), amount)
    base = pd.Timestamp(config.start)
    return pd.DataFrame(
        {
            "order_id": np.arange(1, m + 1, dtype=np.int64),
            "customer_id": (owner + 1).astype(np.int64),
            "order_date": _to_ts(base, t),
            "total_amount": np.round(amount, 2),
            "product_id": products["product_id"].to_numpy()[pick],
            "category": products["category"].to_numpy()[pick],
        }
    )
