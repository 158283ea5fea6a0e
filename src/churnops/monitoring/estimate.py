"""Estimated performance before labels arrive: confidence-based performance estimation (CBPE).

With calibrated probabilities, a prediction of probability p labelled 1 is a true positive with
chance p and a false positive with chance 1 - p; one labelled 0 is a false negative with chance
p. Summing these expectations over a day's predictions gives the expected confusion matrix, and
from it the expected precision, recall and F1 — what NannyML's CBPE does for binary
classification. NannyML itself is not used: its requirements cannot be resolved together with
this project's locked versions (uv finds its scipy bounds incompatible with the lock's scipy,
rich and lightgbm), so the computation, a few sums, is done here. The figures are estimates and are
always labelled so; they are only as good as the model's calibration, which the realized
figures check once labels arrive.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def estimate_performance(probability: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """Expected precision, recall and F1 of predictions, from their own probabilities.

    Args:
        probability: Each prediction's churn probability (assumed calibrated).
        label: Each prediction's label at the model's threshold (0/1).

    Returns:
        estimated_precision, estimated_recall, estimated_f1 (None where undefined),
        expected_churn_rate and predictions.
    """
    p = np.asarray(probability, dtype=np.float64)
    yhat = np.asarray(label, dtype=np.float64)
    tp = float(np.sum(p * yhat))
    fp = float(np.sum((1 - p) * yhat))
    fn = float(np.sum(p * (1 - yhat)))
    return {
        "predictions": len(p),
        "expected_churn_rate": round(float(p.mean()), 4) if len(p) else None,
        "estimated_precision": round(tp / (tp + fp), 4) if tp + fp > 0 else None,
        "estimated_recall": round(tp / (tp + fn), 4) if tp + fn > 0 else None,
        "estimated_f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn > 0 else None,
        "method": "CBPE (expected confusion matrix from the probabilities; an estimate)",
    }
