"""The training stage on 100k labelled rows: the default candidates against the design pair.

    BENCH_TRAIN_ROWS=100000 python bench/bench_training.py

Builds a simulated shop, ingests it, computes features and publishes them to Feast, then takes
the point-in-time training set (100k labelled rows) and runs the whole training stage twice on
the same split: the default candidates (LightGBM + HistGradientBoosting) and the design
document's pair (RandomForest 200 trees depth 10, GradientBoosting 200 trees depth 5), each
with 5-fold CV, importances and MLflow logging. Prints both times, both holdout ROC AUCs and the
time ratio.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report

ROWS = int(os.environ.get("BENCH_TRAIN_ROWS", "100000"))


def main() -> None:
    from churnops.pipelines.features import build_features
    from churnops.pipelines.ingest import ingest
    from churnops.pipelines.simulate import simulate
    from churnops.pipelines.train import build_training_set, split_rows, train_candidates
    from churnops.settings import DESIGN_CANDIDATES, CandidateSettings, default_candidates, load_settings

    ws = tempfile.mkdtemp(prefix="churnops-bench-train-")
    try:
        customers = max(2000, ROWS // 25)
        settings = load_settings(
            None,
            workspace=ws,
            simulation={"customers": customers, "start": "2024-01-01", "end": "2025-12-31", "seed": 3},
            training={"max_rows": ROWS},
        )
        simulate(settings, date(2025, 12, 31))
        ingest(settings, date(2025, 12, 31))
        build_features(settings)
        training = build_training_set(settings)
        split = split_rows(training.frame, settings)
        print(f"training set: {len(training.frame):,} labelled rows", flush=True)
        # Load every library and the tracking store before either timing starts, so neither
        # side pays the imports (seconds each for MLflow, LightGBM and scikit-learn).
        import lightgbm  # noqa: F401
        import sklearn.ensemble  # noqa: F401

        from churnops.training.tracking import use_tracking

        use_tracking(settings.mlflow)
        figures: dict[str, object] = {"rows": len(training.frame)}
        design = {name: CandidateSettings(**spec) for name, spec in DESIGN_CANDIDATES.items()}
        for label, candidates in (("default", default_candidates()), ("design_pair", design)):
            chosen = settings.model_copy(
                update={"training": settings.training.model_copy(update={"candidates": candidates})}
            )
            started = time.perf_counter()
            results = train_candidates(chosen, training, split, lambda line: print("  " + line, flush=True))
            figures[f"{label}_seconds"] = time.perf_counter() - started
            figures[f"{label}_best_holdout_roc_auc"] = max(r.holdout["roc_auc"] for r in results)
            for r in results:
                figures[f"{label}.{r.name}_roc_auc"] = r.holdout["roc_auc"]
                figures[f"{label}.{r.name}_f1"] = r.holdout["f1"]
                figures[f"{label}.{r.name}_seconds"] = r.seconds
        figures["time_ratio_default_to_design"] = float(figures["default_seconds"]) / float(  # type: ignore[arg-type]
            figures["design_pair_seconds"]  # type: ignore[arg-type]
        )
        report("training_stage", figures)
    finally:
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
