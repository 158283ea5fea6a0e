"""Realized performance of logged predictions, once their labels exist.

A prediction made on day P is about the window [P, P + horizon): the customer churned if they
placed no order in it (the training labels' rule, with P's midnight as the snapshot). Its label
is known only when the whole window has closed before the logical date, from the orders in the
raw lake; until then there is no figure, and the result says when the first labels arrive.
Figures are per model version and per A/B variant, never pooled across them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from churnops.monitoring.drift import PRODUCTION_VARIANTS, calibration_of
from churnops.settings import Settings


@dataclass
class Realized:
    """F1, precision, recall and ROC AUC per version and variant over the labelled window."""

    known_until: str
    first_day: str | None = None
    last_day: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)


def realized_performance(settings: Settings, known_until: date, window_days: int | None = None) -> Realized:
    """Join the predictions whose label window closed before `known_until` with their labels.

    Args:
        settings: The loaded settings.
        known_until: The logical date: orders before it are known.
        window_days: How many prediction days, ending with the newest labelled one, to judge
            (default `monitoring.performance_window_days`).
    """
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    from churnops.monitoring.estimate import estimate_performance
    from churnops.pipelines.ingest import make_lake
    from churnops.serving.prediction_log import read_predictions
    from churnops.training.labels import label_customers

    horizon = settings.training.horizon_days
    window = window_days or settings.monitoring.performance_window_days
    last = known_until - timedelta(days=horizon)  # the newest prediction day whose window has closed
    first = last - timedelta(days=window - 1)
    result = Realized(known_until=known_until.isoformat(), first_day=first.isoformat(), last_day=last.isoformat())
    logged = read_predictions(settings.serving.prediction_log_url, day=first, until=last + timedelta(days=1))
    logged = logged[logged["variant"].isin(PRODUCTION_VARIANTS)] if not logged.empty else logged
    if logged.empty:
        newer = read_predictions(settings.serving.prediction_log_url, day=last + timedelta(days=1), until=known_until)
        if not newer.empty:
            oldest = newer["ts"].min().date()
            result.note = (
                f"no labels yet: the oldest predictions ({oldest}) get theirs once the orders up to "
                f"{oldest + timedelta(days=horizon - 1)} are in (a {horizon}-day horizon)"
            )
        else:
            result.note = f"no production predictions from {first} to {last} to judge"
        return result
    anonymous = int(logged["customer_id"].isna().sum())  # scored by feature vector: no customer to label
    logged = logged[logged["customer_id"].notna()]
    logged = logged.assign(day=logged["ts"].dt.normalize(), customer_id=logged["customer_id"].astype("int64"))
    files = make_lake(settings).data_files("orders")
    days = sorted({d.to_pydatetime() for d in logged["day"]})
    labels = label_customers(files, days, horizon, datetime(known_until.year, known_until.month, known_until.day))
    joined = logged.merge(
        labels.rename(columns={"event_timestamp": "day"}).astype({"day": "datetime64[us]"}),
        on=["customer_id", "day"],
        how="inner",
    )
    unlabelled = len(logged) - len(joined) + anonymous
    for (version, variant), group in joined.groupby(["version", "variant"], sort=True):
        y, p, label = group["churned"].to_numpy(), group["probability"].to_numpy(), group["label"].to_numpy()
        both = len(np.unique(y)) == 2
        result.groups.append(
            {
                "version": str(version),
                "variant": str(variant),
                "predictions": len(group),
                "churn_rate": round(float(y.mean()), 4),
                "f1": round(float(f1_score(y, label, zero_division=0)), 4),
                "precision": round(float(precision_score(y, label, zero_division=0)), 4),
                "recall": round(float(recall_score(y, label, zero_division=0)), 4),
                "roc_auc": round(float(roc_auc_score(y, p)), 4) if both else None,
                # what CBPE estimated for the same predictions, before their labels: its check
                "estimated_f1": estimate_performance(p, label, calibration_of(settings, str(version)))["estimated_f1"],
            }
        )
    if unlabelled:
        result.note = (
            f"{unlabelled:,} predictions have no label (made by feature vector, or for a customer with no "
            "order before that day)"
        )
    return result
