"""The A/B decision's statistics: collect, then win, lose or wait, by the bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from churnops.monitoring.ab_test import COLLECTING, LOST, UNDECIDED, WON, judge


def _arm(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` customers, half churners, whose predicted label is right with probability `accuracy`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.int64)
    right = rng.random(n) < accuracy
    return y, np.where(right, y, 1 - y)


def _brute_f1(y: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, label))


@pytest.mark.parametrize(
    ("champion_accuracy", "challenger_accuracy", "policy", "expected"),
    [
        (0.70, 0.85, "superiority", WON),
        (0.85, 0.70, "superiority", LOST),
        (0.80, 0.80, "superiority", UNDECIDED),
        (0.80, 0.80, "non_inferiority", UNDECIDED),  # 0.02 margin: 3,000 customers cannot tell
        (0.75, 0.78, "non_inferiority", WON),
    ],
)
def test_the_verdict_follows_the_interval(
    champion_accuracy: float, challenger_accuracy: float, policy: str, expected: str
) -> None:
    champion = _arm(3000, champion_accuracy, 1)
    challenger = _arm(3000, challenger_accuracy, 2)
    verdict = judge(champion, challenger, policy, 0.02, 0.95, 2000, 300)
    assert verdict.outcome == expected, verdict
    low, high = verdict.interval
    assert low < verdict.difference < high
    assert verdict.difference == pytest.approx(_brute_f1(*challenger) - _brute_f1(*champion), abs=1e-4)


def test_too_few_labelled_customers_in_either_variant_keeps_collecting() -> None:
    """However large the difference, 299 customers on one side decide nothing."""
    verdict = judge(_arm(5000, 0.6, 1), _arm(299, 0.99, 2), "superiority", 0.02, 0.95, 500, 300)
    assert verdict.outcome == COLLECTING
    assert verdict.labelled == {"champion": 5000, "challenger": 299}
    assert verdict.interval == []
    assert verdict.f1["challenger"] is not None
    assert verdict.f1["challenger"] > 0.95


def test_the_interval_covers_the_true_difference_about_as_often_as_it_says() -> None:
    """Over 200 simulated tests of equal models, a 90% interval misses 0 about 10% of the time."""
    misses = 0
    for seed in range(200):
        verdict = judge(_arm(800, 0.8, 2 * seed), _arm(800, 0.8, 2 * seed + 1), "superiority", 0.0, 0.90, 400, 10)
        low, high = verdict.interval
        misses += not (low <= 0.0 <= high)
    assert 5 <= misses <= 40
