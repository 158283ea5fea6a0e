"""Classification metrics, the decision threshold, and cross-validation."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def choose_threshold(labels: np.ndarray, proba: np.ndarray) -> float:
    """The probability cut that maximises F1 on validation data (0.5 if labels are one class)."""
    if len(np.unique(labels)) < 2:
        return 0.5
    precision, recall, thresholds = skm.precision_recall_curve(labels, proba)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


def classification_metrics(labels: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1 at the threshold; ROC AUC, PR AUC and Brier score."""
    predicted = (proba >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, proba)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(labels, proba)) if both else float("nan"),
        "brier": float(skm.brier_score_loss(labels, proba)),
    }


def cross_validated_f1(
    make_model: Callable[[], object],
    features: pd.DataFrame,
    labels: pd.Series,
    groups: pd.Series,
    folds: int,
    progress: Callable[[int, float], None] | None = None,
    pool: Executor | None = None,
) -> tuple[float, float]:
    """Mean and std of F1 over K folds grouped by customer (no customer in two folds).

    Args:
        make_model: A fresh, unfitted model.
        features: Feature rows.
        labels: 0/1 labels.
        groups: The customer of each row.
        folds: K.
        progress: Called with (folds done, that fold's F1) after each fold, in fold order.
        pool: Fits the folds side by side (the models must release the GIL); None: one by one.
    """
    from sklearn.model_selection import GroupKFold

    def score(train_idx: np.ndarray, test_idx: np.ndarray) -> float:
        model = make_model()
        model.fit(features.iloc[train_idx], labels.iloc[train_idx])  # type: ignore[attr-defined]
        predicted = model.predict(features.iloc[test_idx])  # type: ignore[attr-defined]
        return float(skm.f1_score(labels.iloc[test_idx], predicted, zero_division=0))

    splits = list(GroupKFold(n_splits=folds).split(features, labels, groups))
    pending = [pool.submit(score, *split) for split in splits] if pool is not None else None
    scores = []
    for number, split in enumerate(splits):
        scores.append(pending[number].result() if pending is not None else score(*split))
        if progress:
            progress(len(scores), scores[-1])
    return float(np.mean(scores)), float(np.std(scores))
