"""CBPE: the expected confusion matrix from calibrated probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from churnops.monitoring.estimate import estimate_performance, fit_calibration


def test_the_expected_confusion_matrix_by_hand() -> None:
    # TP = 0.9 + 0.6 = 1.5, FP = 0.1 + 0.4 = 0.5, FN = 0.2
    est = estimate_performance(np.array([0.9, 0.2, 0.6]), np.array([1, 0, 1]))
    assert est["estimated_precision"] == pytest.approx(0.75)
    assert est["estimated_recall"] == pytest.approx(round(1.5 / 1.7, 4))
    assert est["estimated_f1"] == pytest.approx(round(3 / 3.7, 4))
    assert "estimate" in est["method"]


def test_with_calibrated_probabilities_the_estimate_meets_the_realized_figures() -> None:
    rng = np.random.default_rng(7)
    p = rng.beta(2, 3, size=200_000)
    label = (p >= 0.4).astype(int)
    y = (rng.uniform(size=len(p)) < p).astype(int)  # outcomes drawn from the probabilities: calibrated
    est = estimate_performance(p, label)
    assert est["estimated_f1"] == pytest.approx(f1_score(y, label), abs=0.005)
    assert est["estimated_precision"] == pytest.approx(precision_score(y, label), abs=0.005)
    assert est["estimated_recall"] == pytest.approx(recall_score(y, label), abs=0.005)


def test_with_overconfident_probabilities_it_is_wrong_and_the_realized_figure_shows_it() -> None:
    rng = np.random.default_rng(8)
    p = rng.beta(2, 3, size=50_000)
    y = (rng.uniform(size=len(p)) < p).astype(int)
    label = (p >= 0.4).astype(int)
    claimed = np.clip(p * 1.6, 0, 1)  # a model that thinks churn likelier than it is
    assert estimate_performance(claimed, label)["estimated_precision"] > precision_score(y, label) + 0.1


def test_nothing_to_estimate() -> None:
    est = estimate_performance(np.array([]), np.array([]))
    assert est["predictions"] == 0
    assert est["estimated_f1"] is None


def test_calibrated_on_labelled_reference_data_a_miscalibrated_models_estimate_meets_the_realized_one() -> None:
    """Scores that rank well but overstate churn (p ** 0.6): raw CBPE is far off; calibrated on a
    labelled reference from the same population, it lands on the realized figures."""
    rng = np.random.default_rng(9)

    def population(n: int) -> tuple[np.ndarray, np.ndarray]:
        p = rng.beta(2, 3, size=n)
        return p**0.6, (rng.uniform(size=n) < p).astype(int)

    reference_scores, reference_y = population(20_000)
    calibration = fit_calibration(reference_scores, reference_y)
    assert calibration is not None
    scores, y = population(100_000)
    label = (scores >= 0.6).astype(int)
    raw = estimate_performance(scores, label)
    calibrated = estimate_performance(scores, label, calibration)
    assert abs(raw["estimated_precision"] - precision_score(y, label)) > 0.1
    assert calibrated["estimated_precision"] == pytest.approx(precision_score(y, label), abs=0.01)
    assert calibrated["estimated_recall"] == pytest.approx(recall_score(y, label), abs=0.01)
    assert calibrated["estimated_f1"] == pytest.approx(f1_score(y, label), abs=0.01)
    assert "calibrated on the version's holdout (20,000 rows)" in calibrated["method"]


def test_no_calibration_from_a_reference_too_small_or_of_one_class() -> None:
    assert fit_calibration(np.linspace(0, 1, 50), np.arange(50) % 2) is None
    assert fit_calibration(np.linspace(0, 1, 500), np.ones(500)) is None
    calibration = fit_calibration(np.array([0.1, 0.9, np.nan] * 100), np.array([0, 1, 1] * 100))
    assert calibration is not None
    assert calibration.rows == 200
