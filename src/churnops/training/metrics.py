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
        "roc_auc": _roc_auc(labels, proba),
        "pr_auc": float(skm.average_precision_score(labels, proba)) if both else float("nan"),
        "brier": float(skm.brier_score_loss(labels, proba)),
    }


def cross_validated_proba(
    make_model: Callable[[], object],
    features: pd.DataFrame,
    labels: pd.Series,
    groups: pd.Series,
    folds: int,
    progress: Callable[[int, float], None] | None = None,
    pool: Executor | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each of K folds grouped by customer (no customer in two folds): its labels and the
    probabilities a model fitted on the other folds gives its rows.

    F1 depends on the decision threshold, which is chosen after the folds (on validation data):
    `fold_scores` scores the folds at it, so CV F1 reads like the holdout's.

    Args:
        make_model: A fresh, unfitted model.
        features: Feature rows.
        labels: 0/1 labels.
        groups: The customer of each row.
        folds: K.
        progress: Called with (folds done, that fold's ROC AUC) after each fold, in fold order.
        pool: Fits the folds side by side (the models must release the GIL); None: one by one.
    """
    from sklearn.model_selection import GroupKFold

    def fold(train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = make_model()
        model.fit(features.iloc[train_idx], labels.iloc[train_idx])  # type: ignore[attr-defined]
        proba = model.predict_proba(features.iloc[test_idx])[:, 1]  # type: ignore[attr-defined]
        return labels.iloc[test_idx].to_numpy(), np.asarray(proba, dtype=np.float64)

    splits = list(GroupKFold(n_splits=folds).split(features, labels, groups))
    pending = [pool.submit(fold, *split) for split in splits] if pool is not None else None
    done: list[tuple[np.ndarray, np.ndarray]] = []
    for number, split in enumerate(splits):
        done.append(pending[number].result() if pending is not None else fold(*split))
        if progress:
            progress(len(done), _roc_auc(*done[-1]))
    return done


def fold_scores(folds: list[tuple[np.ndarray, np.ndarray]], threshold: float) -> dict[str, float]:
    """Mean and std over the folds of F1 at `threshold` and of ROC AUC."""
    f1 = [skm.f1_score(y, (p >= threshold).astype(int), zero_division=0) for y, p in folds]
    auc = [_roc_auc(y, p) for y, p in folds]
    return {
        "cv_f1_mean": float(np.mean(f1)),
        "cv_f1_std": float(np.std(f1)),
        "cv_roc_auc_mean": float(np.nanmean(auc)) if not np.all(np.isnan(auc)) else float("nan"),
        "cv_roc_auc_std": float(np.nanstd(auc)) if not np.all(np.isnan(auc)) else float("nan"),
    }


def _roc_auc(labels: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC, NaN when the labels are one class (it is not defined there)."""
    return float(skm.roc_auc_score(labels, proba)) if len(np.unique(labels)) == 2 else float("nan")
