"""The customer features: one declaration that the engines, validation and Feast all read.

Conventions (documented in README.md, "Features"):
- every feature of a snapshot uses only orders strictly before the snapshot time;
- counts and sums are 0 for a customer with no orders before the snapshot; the others
  (recency, order-value statistics, lifetime, days between orders) are null, because no
  value is honest there (a recency of 0 would read as "just ordered");
- the standard deviation of a single order is 0;
- recency, lifetime and customer age are whole days (floor of the elapsed time), as pandas `.dt.days`;
- gaps are between distinct order days (UTC dates), so null below two order days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["count", "amount", "days"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column of `customer_features`."""

    name: str
    dtype: Literal["int64", "float64"]
    description: str
    zero_when_no_orders: bool
    needs: str | None = None  # an optional raw column the feature needs
    # Moves with the clock alone (days since an order): it changes every day for every customer
    # who ever ordered, so the online store keeps such features in a view of their own.
    ages: bool = False


BASE_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("recency", "int64", "Whole days from the last order to the snapshot.", False, ages=True),
    FeatureSpec("frequency", "int64", "Orders before the snapshot.", True),
    FeatureSpec("monetary", "float64", "Sum of order amounts before the snapshot.", True),
    FeatureSpec("avg_order_value", "float64", "Mean order amount.", False),
    FeatureSpec("max_order_value", "float64", "Largest order amount.", False),
    FeatureSpec("min_order_value", "float64", "Smallest order amount.", False),
    FeatureSpec("std_order_value", "float64", "Sample standard deviation of amounts (0 for one order).", False),
    FeatureSpec("customer_lifetime_days", "int64", "Whole days from first to last order.", False),
    FeatureSpec("avg_days_between_orders", "float64", "Lifetime days / max(frequency, 1).", False),
    FeatureSpec(
        "customer_age_days",
        "int64",
        "Whole days from the first order to the snapshot (the T of buy-till-you-die).",
        False,
        ages=True,
    ),
    FeatureSpec("order_days", "int64", "Distinct days (UTC) with an order.", True),
    FeatureSpec("mean_gap_days", "float64", "Mean days between consecutive order days (null below two).", False),
    FeatureSpec("std_gap_days", "float64", "Sample std of those gaps (0 for a single gap; null below two).", False),
    FeatureSpec(
        "overdue_ratio",
        "float64",
        "Recency / mean gap: how overdue the next order is (null below two).",
        False,
        ages=True,
    ),
    FeatureSpec("unique_products", "int64", "Distinct products ordered.", True, needs="product_id"),
    FeatureSpec("unique_categories", "int64", "Distinct categories ordered.", True, needs="category"),
)


AGEING_FEATURES = frozenset(s.name for s in BASE_FEATURES if s.ages)
# Orders before the snapshot: 0 marks a customer who never ordered, whom training never labels
# (so the server answers them with a status, not a score, and monitoring leaves them out).
ORDER_COUNT = "frequency"


def window_features(windows: tuple[int, ...]) -> tuple[FeatureSpec, ...]:
    """Order count and spend over each trailing window [snapshot - days, snapshot)."""
    specs: list[FeatureSpec] = []
    for days in windows:
        specs.append(FeatureSpec(f"orders_last_{days}d", "int64", f"Orders in the {days} days before.", True))
        specs.append(FeatureSpec(f"spend_last_{days}d", "float64", f"Amount spent in the {days} days before.", True))
    return tuple(specs)


def feature_specs(windows: tuple[int, ...], raw_columns: set[str] | None = None) -> tuple[FeatureSpec, ...]:
    """All features for these windows; those needing an absent raw column are left out.

    Args:
        windows: Trailing windows in days (30 is always included: it is in the contract).
        raw_columns: Columns the orders table has; None means all.

    Returns:
        The specs, base features first.
    """
    chosen = tuple(sorted(set(windows) | {30}))
    specs = BASE_FEATURES + window_features(chosen)
    if raw_columns is None:
        return specs
    return tuple(s for s in specs if s.needs is None or s.needs in raw_columns)


def feature_names(windows: tuple[int, ...], raw_columns: set[str] | None = None) -> list[str]:
    """Names of the feature columns, in table order."""
    return [s.name for s in feature_specs(windows, raw_columns)]


KEY_COLUMNS = ("customer_id", "event_timestamp", "created_timestamp")
