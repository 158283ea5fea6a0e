"""Estimated performance before labels arrive: confidence-based performance estimation (CBPE).

With calibrated probabilities, a prediction of probability p labelled 1 is a true positive with
chance p and a false positive with chance 1 - p; one labelled 0 is a false negative with chance
p. Summing these expectations over a day's predictions gives the expected confusion matrix, and
from it the expected precision, recall and F1 — what NannyML's CBPE does for binary
classification. NannyML itself is not used: its requirements cannot be resolved together with
this project's locked versions (uv finds its scipy bounds incompatible with the lock's scipy,
rich and lightgbm), so the computation, a few sums, is done here.

Like NannyML, the probabilities are first calibrated on reference data whose labels are known:
an isotonic map from the version's holdout probabilities to the churn observed there
(`fit_calibration`). A model's raw scores are rarely calibrated exactly, and CBPE inherits every
bias of them. What calibration cannot see is a change the model cannot see either (the churn
rate moving for reasons outside the features); the figures are estimates and always labelled
so, and the realized figures check them once labels arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_CALIBRATION_ROWS = 200


@dataclass(frozen=True)
class Calibration:
    """A monotone map from a version's probabilities to observed churn rates (piecewise linear)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    rows: int

    def apply(self, probability: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (clipped to the fitted range at both ends)."""
        return np.interp(np.asarray(probability, dtype=np.float64), self.x, self.y)


def fit_calibration(probability: np.ndarray, churned: np.ndarray) -> Calibration | None:
    """Isotonic regression of the outcomes on the probabilities (NannyML's calibrator).

    Returns:
        None when the reference is too small (under MIN_CALIBRATION_ROWS) or has one class only:
        then the raw probabilities are used, and the estimate says so.
    """
    from sklearn.isotonic import IsotonicRegression

    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(churned, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(y)
    p, y = p[keep], y[keep]
    if len(p) < MIN_CALIBRATION_ROWS or len(np.unique(y)) < 2:
        return None
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return Calibration(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)), len(p))


def estimate_performance(
    probability: np.ndarray, label: np.ndarray, calibration: Calibration | None = None
) -> dict[str, Any]:
    """Expected precision, recall and F1 of predictions, from their own probabilities.

    Args:
        probability: Each prediction's churn probability as the model gave it.
        label: Each prediction's label at the model's threshold (0/1).
        calibration: The version's calibration (`fit_calibration`); without it the
            probabilities are taken as calibrated.

    Returns:
        estimated_precision, estimated_recall, estimated_f1 (None where undefined),
        expected_churn_rate, predictions and method.
    """
    p = np.asarray(probability, dtype=np.float64)
    if calibration is not None and len(p):
        p = calibration.apply(p)
    yhat = np.asarray(label, dtype=np.float64)
    tp = float(np.sum(p * yhat))
    fp = float(np.sum((1 - p) * yhat))
    fn = float(np.sum(p * (1 - yhat)))
    calibrated = (
        f"probabilities calibrated on the version's holdout ({calibration.rows:,} rows)"
        if calibration is not None
        else "probabilities taken as calibrated (no holdout to calibrate on)"
    )
    return {
        "predictions": len(p),
        "expected_churn_rate": round(float(p.mean()), 4) if len(p) else None,
        "estimated_precision": round(tp / (tp + fp), 4) if tp + fp > 0 else None,
        "estimated_recall": round(tp / (tp + fn), 4) if tp + fn > 0 else None,
        "estimated_f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn > 0 else None,
        "method": f"CBPE (expected confusion matrix from the probabilities; an estimate): {calibrated}",
    }
