"""The drift check on a day of 1M served rows: the project's sampled check against Evidently's
data drift preset on the full rows, with and without an injected covariate shift.

    BENCH_DRIFT_ROWS=1000000 python bench/bench_drift.py

The rows are drawn (with replacement) from a simulated shop's feature snapshot, so every column
has the shape of a real feature; the reference is another 1M-row draw of the same snapshot. The
shifted day doubles every spend and order-value feature (what the simulator's price shift does
to them in the long run). Both checks use the normed Wasserstein distance with the default
threshold and drift share; the project's samples each side to `monitoring.sample_size` rows.
Floor: at least 10x faster, under 5 s, and the same verdict on both days.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report

ROWS = int(os.environ.get("BENCH_DRIFT_ROWS", "1000000"))


def main() -> None:
    import pandas as pd

    from churnops.data.simulation import simulate_business
    from churnops.features.duckdb_engine import compute_features
    from churnops.monitoring.drift import _distances, _evidently, check_drift
    from churnops.settings import MonitoringSettings, SimulationSettings

    world = simulate_business(SimulationSettings(customers=20_000, start=date(2024, 1, 1), end=date(2024, 12, 31)))
    snapshot = compute_features(
        world.orders, world.customers[["customer_id", "created_at"]], [datetime(2024, 12, 1)], (7, 30, 90)
    )
    features = [c for c in snapshot.columns if c not in ("customer_id", "event_timestamp")]
    population = snapshot[features].astype("float64").reset_index(drop=True)
    rng = np.random.default_rng(0)

    def draw(weights: np.ndarray | None = None) -> pd.DataFrame:
        p = None if weights is None else weights / weights.sum()
        return population.iloc[rng.choice(len(population), ROWS, p=p)].reset_index(drop=True)

    active = (1.0 + population["orders_last_90d"].fillna(0).to_numpy()) ** 2
    reference = draw()
    days = {"unchanged": draw(), "shifted": draw(active)}
    cfg = MonitoringSettings()
    check_drift(reference.head(500), reference.tail(500), features, cfg)  # imports and warm-up, not timed
    figures: dict[str, object] = {"rows": ROWS, "features": len(features), "sample_size": cfg.sample_size}
    for name, current in days.items():
        started = time.perf_counter()
        ours = check_drift(reference, current, features, cfg)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        full = _evidently(reference, current, features, cfg.drift_threshold, cfg.drift_share)
        full_s = time.perf_counter() - started
        distances = _distances(full)
        full_share = sum(d >= cfg.drift_threshold for d in distances.values()) / len(features)
        full_verdict = full_share >= cfg.drift_share
        figures |= {
            f"{name}: ours s": round(ours_s, 2),
            f"{name}: evidently full rows s": round(full_s, 2),
            f"{name}: speed-up": round(full_s / ours_s, 1),
            f"{name}: ours drifted share / verdict": f"{ours.drifted_share:.2f} / {ours.dataset_drift}",
            f"{name}: full drifted share / verdict": f"{full_share:.2f} / {full_verdict}",
            f"{name}: same verdict": ours.dataset_drift == full_verdict,
        }
    report("drift", figures)


if __name__ == "__main__":
    main()
