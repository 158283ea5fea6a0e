"""The A/B decision: the challenger's realized F1 against the champion's, on the same days.

The production server splits customers by a sticky hash, so each customer is answered by one
variant; each variant's sample is its customers' first prediction in the test (a customer's
later predictions are not new evidence). A prediction's label comes once its horizon has
passed, as for realized performance. Under `ab_test.min_labelled` labelled customers in either
variant the test keeps collecting. Then the F1 difference (challenger - champion) is judged by
a bootstrap that resamples each variant's customers on their own:

- `superiority`: the challenger wins when the interval's lower bound is above 0;
- `non_inferiority`: it wins when the lower bound is above `-ab_test.margin` (a fresher model
  that is not worse is preferred);
- either way it loses when the upper bound is below `-ab_test.margin`, and a test still
  undecided `ab_test.max_days` after it began ends with the champion kept.

A win moves `champion` to the challenger (the production server hot-swaps); a loss takes the
`challenger` alias off it; both are audited like every alias move.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from churnops.settings import Settings

COLLECTING, UNDECIDED, WON, LOST, EXPIRED = "collecting", "undecided", "challenger won", "challenger lost", "expired"


@dataclass
class Verdict:
    """The statistics of one look at the test."""

    outcome: str  # COLLECTING, UNDECIDED, WON, LOST
    labelled: dict[str, int]
    f1: dict[str, float | None]
    difference: float | None = None
    interval: list[float] = field(default_factory=list)


def _f1(y: np.ndarray, label: np.ndarray) -> float:
    tp = float(np.sum((y == 1) & (label == 1)))
    denominator = float(np.sum(y == 1) + np.sum(label == 1))
    return 2 * tp / denominator if denominator else 0.0


def _f1_draws(y: np.ndarray, label: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """F1 of `rounds` bootstrap resamples, from resampled counts of each (label, prediction) cell."""
    cells = (y.astype(np.int64) << 1) | label.astype(np.int64)  # 0 tn, 1 fp, 2 fn, 3 tp
    share = np.bincount(cells, minlength=4) / len(cells)
    counts = rng.multinomial(len(cells), share, size=rounds)
    fp, fn, tp = counts[:, 1], counts[:, 2], counts[:, 3]
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def judge(
    champion: tuple[np.ndarray, np.ndarray],
    challenger: tuple[np.ndarray, np.ndarray],
    policy: str,
    margin: float,
    confidence: float,
    rounds: int,
    min_labelled: int,
    seed: int = 0,
) -> Verdict:
    """Judge the test from each variant's (churned, predicted label) arrays.

    Args:
        champion: Labels and predicted labels of the champion's customers.
        challenger: The same for the challenger's.
        policy: `superiority` or `non_inferiority`.
        margin: How much worse (in F1) the challenger may be under non-inferiority, and how much
            worse it must surely be to lose.
        confidence: Of the two-sided bootstrap interval.
        rounds: Bootstrap resamples.
        min_labelled: Labelled customers each variant needs before anything is judged.
        seed: Of the resampling.

    Returns:
        The outcome with the figures behind it.
    """
    labelled = {"champion": len(champion[0]), "challenger": len(challenger[0])}
    f1 = {
        name: (round(_f1(*pair), 4) if len(pair[0]) else None)
        for name, pair in (("champion", champion), ("challenger", challenger))
    }
    if min(labelled.values()) < min_labelled:
        return Verdict(COLLECTING, labelled, f1)
    rng = np.random.default_rng(seed)
    draws = _f1_draws(*challenger, rounds, rng) - _f1_draws(*champion, rounds, rng)
    tail = (1 - confidence) / 2
    low, high = (float(v) for v in np.quantile(draws, [tail, 1 - tail]))
    difference = _f1(*challenger) - _f1(*champion)
    bar = 0.0 if policy == "superiority" else -margin
    outcome = WON if low > bar else LOST if high < -margin else UNDECIDED
    return Verdict(outcome, labelled, f1, round(difference, 4), [round(low, 4), round(high, 4)])


@dataclass
class ABDecision:
    """What the A/B test stands at on a logical date, and what was done about it."""

    champion: str | None = None
    challenger: str | None = None
    status: str = "no test"  # no test, collecting, undecided, promoted, ended
    began: str | None = None
    verdict: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)


def decide_ab(settings: Settings, day: date, say: Any = None) -> ABDecision:
    """Look at the running A/B test as of logical date `day`; promote or end it when decided.

    Only what was known before `day` is used: predictions whose horizon has passed, labelled
    from the orders in the raw lake.
    """
    from churnops.pipelines.promotion import existing_registry
    from churnops.serving.deploy import ab_challenger

    say = say or (lambda _: None)
    registry = existing_registry(settings)
    champion = registry.holder("champion") if registry else None
    challenger = ab_challenger(registry, settings) if registry and champion else None
    decision = ABDecision(champion, challenger)
    if registry is None or champion is None or challenger is None:
        return decision
    cfg = settings.ab_test
    champion_rows, challenger_rows, began = _labelled(settings, day, champion, challenger)
    decision.began = began.isoformat() if began else None
    if began is None:
        decision.status, decision.reason = "collecting", f"version {challenger} has not answered a customer yet"
        return decision
    verdict = judge(
        champion_rows, challenger_rows, cfg.policy, cfg.margin, cfg.confidence, cfg.bootstrap_rounds, cfg.min_labelled
    )
    decision.verdict = asdict(verdict)
    figures = (
        f"F1 {verdict.f1['challenger']} vs {verdict.f1['champion']} over "
        f"{verdict.labelled['challenger']:,} and {verdict.labelled['champion']:,} labelled customers"
    )
    if verdict.interval:
        low, high = verdict.interval
        figures += f", difference {verdict.difference:+.4f}, {cfg.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]"
    metrics = {
        "ab_f1_challenger": verdict.f1["challenger"] or 0.0,
        "ab_f1_champion": verdict.f1["champion"] or 0.0,
        "ab_labelled_challenger": float(verdict.labelled["challenger"]),
        "ab_labelled_champion": float(verdict.labelled["champion"]),
    }
    age = (day - began).days
    if verdict.outcome == WON:
        reason = f"A/B test won ({cfg.policy}): {figures}"
        registry.move("champion", challenger, reason, metrics, logical_date=day.isoformat())
        registry.tag(challenger, "ab.outcome", "won")
        decision.status, decision.reason = "promoted", reason
    elif verdict.outcome == LOST or age > cfg.max_days:
        why = "lost" if verdict.outcome == LOST else f"undecided after {age} days (ab_test.max_days {cfg.max_days})"
        reason = f"A/B test {why}: {figures}; the champion stays"
        registry.release("challenger", reason, metrics, logical_date=day.isoformat())
        registry.tag(challenger, "ab.outcome", "lost" if verdict.outcome == LOST else "expired")
        decision.status, decision.reason = "ended", reason
    else:
        decision.status = verdict.outcome
        decision.reason = (
            f"{figures}; needs {cfg.min_labelled:,} labelled customers in each variant"
            if verdict.outcome == COLLECTING
            else f"{figures}: not decided yet"
        )
    say(f"A/B test of version {challenger} against {champion}: {decision.status}: {decision.reason}")
    return decision


def _labelled(
    settings: Settings, day: date, champion: str, challenger: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], date | None]:
    """Each variant's labelled customers (churned, predicted label), and the day the test began."""
    from churnops.pipelines.ingest import make_lake
    from churnops.serving.prediction_log import read_predictions
    from churnops.training.labels import label_customers

    url = settings.serving.prediction_log_url
    tested = read_predictions(url, version=challenger)
    tested = tested[tested["variant"].isin(("challenger", "shadow"))] if not tested.empty else tested
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if tested.empty:
        return empty, empty, None
    began = tested["ts"].min().date()
    horizon = settings.training.horizon_days
    last = day - timedelta(days=horizon)  # the newest prediction day whose window has closed
    if last < began:
        return empty, empty, began
    window = read_predictions(url, day=began, until=last + timedelta(days=1))
    window = window[window["customer_id"].notna()]
    arms = {
        "champion": window[(window["version"] == champion) & (window["variant"] == "champion")],
        "challenger": window[(window["version"] == challenger) & window["variant"].isin(("challenger", "shadow"))],
    }
    firsts = {}
    for name, arm in arms.items():
        first = arm.sort_values("ts").drop_duplicates("customer_id")
        firsts[name] = first.assign(day=first["ts"].dt.normalize(), customer_id=first["customer_id"].astype("int64"))
    days = sorted({d.to_pydatetime() for first in firsts.values() for d in first["day"]})
    if not days:
        return empty, empty, began
    # One pass over the lake's orders labels both variants' customers.
    labels = label_customers(
        make_lake(settings).data_files("orders"), days, horizon, datetime(day.year, day.month, day.day)
    )
    labels = labels.rename(columns={"event_timestamp": "day"}).astype({"day": "datetime64[us]"})
    out = []
    for first in firsts.values():
        joined = first.merge(labels, on=["customer_id", "day"])
        out.append((joined["churned"].to_numpy(np.int64), joined["label"].to_numpy(np.int64)))
    return out[0], out[1], began
