"""The quality gate: an absolute F1 floor and a paired comparison with the champion."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm

from churnops.settings import GateSettings


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and the evidence for it."""

    passed: bool
    reasons: list[str]
    challenger_f1: float
    min_f1: float
    compared_with_champion: bool
    metric: str = "f1"
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    margin: float | None = None
    confidence: float | None = None

    def as_dict(self) -> dict[str, object]:
        """For run tags, metrics and alerts."""
        return asdict(self)


def _score(metric: str, labels: np.ndarray, proba: np.ndarray, threshold: float) -> float:
    if metric == "roc_auc":
        return float(skm.roc_auc_score(labels, proba))
    return float(skm.f1_score(labels, (proba >= threshold).astype(int), zero_division=0))


def paired_bootstrap(
    labels: np.ndarray,
    challenger: tuple[np.ndarray, float],
    champion: tuple[np.ndarray, float],
    metric: str,
    rounds: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """Challenger minus champion on the same rows: the difference and its bootstrap CI.

    Each round resamples the holdout rows once and scores both models on that same resample,
    so the interval reflects the paired difference, not two independent noises.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    observed = _score(metric, labels, *challenger) - _score(metric, labels, *champion)
    diffs = np.empty(rounds)
    for i in range(rounds):
        idx = rng.integers(0, n, n)
        y = labels[idx]
        if metric == "roc_auc" and len(np.unique(y)) < 2:
            diffs[i] = observed
            continue
        diffs[i] = _score(metric, y, challenger[0][idx], challenger[1]) - _score(
            metric, y, champion[0][idx], champion[1]
        )
    alpha = (1 - confidence) / 2
    return observed, float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))


def evaluate_gate(
    policy: GateSettings,
    labels: np.ndarray,
    challenger: tuple[np.ndarray, float],
    champion: tuple[np.ndarray, float] | None,
    seed: int = 0,
) -> GateResult:
    """Decide whether the challenger may be registered.

    Args:
        policy: F1 floor, comparison metric, non-inferiority margin and confidence.
        labels: Holdout labels.
        challenger: The challenger's holdout probabilities and its threshold.
        champion: The champion's probabilities on the same holdout and its threshold, if any.
        seed: Bootstrap seed.

    Returns:
        Pass when F1 >= the floor and, with a champion, the lower confidence bound of
        (challenger - champion) is above -margin.
    """
    f1 = _score("f1", labels, *challenger)
    reasons = []
    if f1 < policy.min_f1:
        reasons.append(f"F1 {f1:.4f} is below the floor {policy.min_f1:.2f}")
    if champion is None:
        return GateResult(not reasons, reasons, f1, policy.min_f1, False, policy.relative_metric)
    diff, low, high = paired_bootstrap(
        labels, challenger, champion, policy.relative_metric, policy.bootstrap_rounds, policy.confidence, seed
    )
    if low < -policy.non_inferiority_margin:
        reasons.append(
            f"{policy.relative_metric} vs champion {diff:+.4f}, {policy.confidence:.0%} CI [{low:+.4f}, {high:+.4f}] "
            f"reaches below the non-inferiority margin -{policy.non_inferiority_margin}"
        )
    return GateResult(
        passed=not reasons,
        reasons=reasons,
        challenger_f1=f1,
        min_f1=policy.min_f1,
        compared_with_champion=True,
        metric=policy.relative_metric,
        difference=diff,
        ci_low=low,
        ci_high=high,
        margin=policy.non_inferiority_margin,
        confidence=policy.confidence,
    )
