"""The quality gate: every condition judged by the lower bound of a paired bootstrap interval.

A challenger passes only when, on the same holdout rows,
- its F1 reaches the floor (`gate.min_f1`, the design document's 0.7);
- its F1 beats the rule "everyone churns" by `gate.min_lift_f1`;
- its ROC AUC beats the recency score (recency alone as the churn score) by `gate.min_lift_auc`;
- it is not worse than the champion by more than `gate.non_inferiority_margin`.

Each round of the bootstrap resamples the holdout rows once and scores every model and baseline
on that same resample, so each interval reflects a paired difference, not independent noises.
A resample is a vector of integer weights (how often each row was drawn), and F1 and ROC AUC are
computed from weighted counts: exactly what scoring the resampled rows would give, in O(rows)
per round instead of a sort per round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from churnops.settings import GateSettings


@dataclass(frozen=True)
class Condition:
    """One condition of the gate with its evidence."""

    name: str
    observed: float
    ci_low: float
    ci_high: float
    bound: float
    passed: bool

    strict: bool = False  # the lower bound must exceed the bound (a lift), not just reach it

    def describe(self, confidence: float) -> str:
        """One line: the figure, its interval, and what the lower bound had to reach."""
        verdict = "pass" if self.passed else "FAIL"
        return (
            f"{self.name}: {self.observed:+.4f}, {confidence:.0%} CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}], "
            f"lower bound must be {'>' if self.strict else '>='} {self.bound:+.4f}: {verdict}"
        )


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and the evidence for it."""

    passed: bool
    conditions: list[Condition]
    challenger_f1: float
    confidence: float
    rounds: int
    compared_with_champion: bool
    baselines: dict[str, float] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """The failed conditions, one line each."""
        return [c.describe(self.confidence) for c in self.conditions if not c.passed]

    def condition(self, name: str) -> Condition | None:
        """The condition of that name, if it was judged."""
        return next((c for c in self.conditions if c.name == name), None)

    def as_dict(self) -> dict[str, object]:
        """For run tags, step results and alerts."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, object]) -> GateResult:
        """The inverse of `as_dict`."""
        conditions = [Condition(**c) for c in body["conditions"]]  # type: ignore[attr-defined]
        return cls(**{**body, "conditions": conditions})  # type: ignore[arg-type]


FLOOR = "F1 floor"
LIFT_F1 = "F1 lift over everyone-churns"
LIFT_AUC = "ROC AUC lift over recency"
CHAMPION = "vs champion"


class WeightedScores:
    """F1 at a threshold and ROC AUC of one score vector, for any row weights.

    The rows must come positives first (`positives_first` orders them), so that a weight
    vector splits into two slices without copying: each round then costs a few passes over
    the rows.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> None:
        positive = np.asarray(labels).astype(bool)
        self.p = int(positive.sum())
        if positive[: self.p].sum() != self.p:
            raise ValueError("rows must come positives first (see positives_first)")
        predicted = scores >= threshold if threshold is not None else np.ones(len(scores), dtype=bool)
        self.predicted_pos = predicted[: self.p].astype(np.float64)
        self.predicted_neg = predicted[self.p :].astype(np.float64)
        # rows grouped by equal score, ascending: a positive beats every negative of a lower
        # group and ties half of those in its own group (the Mann-Whitney form of the AUC)
        _, groups = np.unique(scores, return_inverse=True)
        self.groups_pos, self.groups_neg = groups[: self.p], groups[self.p :]
        self.group_count = int(groups.max()) + 1 if len(scores) else 0

    def f1(self, weights: np.ndarray) -> float:
        """F1 of the weighted rows (0 when nothing is predicted or nothing is positive)."""
        pos, neg = weights[: self.p], weights[self.p :]
        tp = float(pos @ self.predicted_pos)
        fp = float(neg @ self.predicted_neg)
        fn = float(pos.sum()) - tp
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    def roc_auc(self, weights: np.ndarray) -> float:
        """ROC AUC of the weighted rows (NaN when one class is absent)."""
        pos = np.bincount(self.groups_pos, weights=weights[: self.p], minlength=self.group_count)
        neg = np.bincount(self.groups_neg, weights=weights[self.p :], minlength=self.group_count)
        total_pos, total_neg = pos.sum(), neg.sum()
        if not total_pos or not total_neg:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float(pos @ (below + 0.5 * neg) / (total_pos * total_neg))


def positives_first(labels: np.ndarray) -> np.ndarray:
    """The row order that puts positive labels first (stable)."""
    return np.argsort(~np.asarray(labels).astype(bool), kind="stable")


def bootstrap(
    statistics: dict[str, Callable[[np.ndarray], float]], rows: int, rounds: int, seed: int
) -> dict[str, tuple[float, np.ndarray]]:
    """Each statistic on all rows and on `rounds` paired resamples of them.

    Args:
        statistics: name -> a function of row weights.
        rows: How many rows there are.
        rounds: Resamples.
        seed: Random seed.

    Returns:
        name -> (value on all rows, values on the resamples).
    """
    rng = np.random.default_rng(seed)
    ones = np.ones(rows)
    draws = {name: np.empty(rounds) for name in statistics}
    for i in range(rounds):
        weights = np.bincount(rng.integers(0, rows, rows), minlength=rows).astype(np.float64)
        for name, statistic in statistics.items():
            draws[name][i] = statistic(weights)
    return {name: (statistic(ones), draws[name]) for name, statistic in statistics.items()}


def baseline_metrics(labels: np.ndarray, recency: np.ndarray) -> dict[str, float]:
    """The two baselines on the holdout: "everyone churns" and recency as the churn score."""
    from sklearn import metrics as skm  # here: the DAG file imports this module's result types

    everyone = np.ones(len(labels), dtype=int)
    both = len(np.unique(labels)) == 2
    return {
        "everyone_churns_f1": float(skm.f1_score(labels, everyone, zero_division=0)),
        "everyone_churns_precision": float(skm.precision_score(labels, everyone, zero_division=0)),
        "everyone_churns_recall": float(skm.recall_score(labels, everyone, zero_division=0)),
        "recency_roc_auc": float(skm.roc_auc_score(labels, recency)) if both else float("nan"),
        "recency_pr_auc": float(skm.average_precision_score(labels, recency)) if both else float("nan"),
    }


def evaluate_gate(
    policy: GateSettings,
    labels: np.ndarray,
    challenger: tuple[np.ndarray, float],
    recency: np.ndarray,
    champion: tuple[np.ndarray, float] | None,
    seed: int = 0,
) -> GateResult:
    """Decide whether the challenger may be registered.

    Args:
        policy: Floor, lifts, comparison metric, non-inferiority margin, confidence, rounds.
        labels: Holdout labels (1 = churned).
        challenger: The challenger's holdout probabilities and its threshold.
        recency: Each holdout row's recency, the baseline churn score.
        champion: The champion's probabilities on the same rows and its threshold, if any.
        seed: Bootstrap seed.

    Returns:
        Pass when every condition's lower confidence bound reaches its bound.
    """
    order = positives_first(labels)  # the bootstrap's weights are paired across models: one order
    labels = np.asarray(labels).astype(int)[order]
    model = WeightedScores(labels, np.asarray(challenger[0])[order], challenger[1])
    everyone = WeightedScores(labels, np.ones(len(labels)), None)
    recency_score = by_recency_scores(recency)[order]
    by_recency = WeightedScores(labels, recency_score)
    statistics: dict[str, Callable[[np.ndarray], float]] = {
        FLOOR: model.f1,
        LIFT_F1: lambda w: model.f1(w) - everyone.f1(w),
        LIFT_AUC: lambda w: model.roc_auc(w) - by_recency.roc_auc(w),
    }
    if champion is not None:
        incumbent = WeightedScores(labels, np.asarray(champion[0])[order], champion[1])
        if policy.relative_metric == "roc_auc":
            statistics[CHAMPION] = lambda w: model.roc_auc(w) - incumbent.roc_auc(w)
        else:
            statistics[CHAMPION] = lambda w: model.f1(w) - incumbent.f1(w)
    bounds = {
        FLOOR: policy.min_f1,
        LIFT_F1: policy.min_lift_f1,
        LIFT_AUC: policy.min_lift_auc,
        CHAMPION: -policy.non_inferiority_margin,
    }
    alpha = (1 - policy.confidence) / 2
    conditions = []
    for name, (observed, draws) in bootstrap(statistics, len(labels), policy.bootstrap_rounds, seed).items():
        finite = draws[np.isfinite(draws)]
        low, high = (
            (float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))) if len(finite) else (np.nan,) * 2
        )
        strict = name in (LIFT_F1, LIFT_AUC)  # "above the baseline by at least": a zero lift is no lift
        passed = bool(np.isfinite(low) and (low > bounds[name] if strict else low >= bounds[name]))
        conditions.append(Condition(name, float(observed), low, high, bounds[name], passed, strict))
    return GateResult(
        passed=all(c.passed for c in conditions),
        conditions=conditions,
        challenger_f1=float(model.f1(np.ones(len(labels)))),
        confidence=policy.confidence,
        rounds=policy.bootstrap_rounds,
        compared_with_champion=champion is not None,
        baselines=baseline_metrics(labels, recency_score),
    )


def by_recency_scores(recency: np.ndarray) -> np.ndarray:
    """Recency as a churn score; an unknown recency ranks as the longest."""
    values = np.asarray(recency, dtype=np.float64)
    return np.nan_to_num(values, nan=np.nanmax(values, initial=0) + 1)
