"""Every candidate algorithm trains on the feature table as it is (with its nulls), explains
itself, and comes back from MLflow scoring the same."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from churnops.settings import Algorithm, CandidateSettings
from churnops.training.candidates import build_candidate

FEATURES = ["recency", "frequency", "monetary", "mean_gap_days"]


def _rows() -> tuple[pd.DataFrame, pd.Series]:
    """Customers without orders have no recency and no gaps: nulls, as in the feature table."""
    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.gamma(2.0, 20.0, size=(400, len(FEATURES))), columns=FEATURES)
    y = pd.Series((x["recency"] + rng.normal(0, 15, len(x)) > 40).astype(int))
    x.loc[::7, ["recency", "mean_gap_days"]] = np.nan
    x.loc[::5, "mean_gap_days"] = np.nan
    return x, y


@pytest.mark.parametrize("algorithm", get_args(Algorithm))
def test_every_algorithm_fits_rows_with_missing_values_and_round_trips_through_mlflow(
    algorithm: str, tmp_path: Path
) -> None:
    """Fit, probabilities in [0, 1], importances over every feature summing to 1, and the model
    MLflow stored scores the rows as the fitted one did."""
    import mlflow

    from churnops.training.tracking import load_scorer, log_candidate

    x, y = _rows()
    params = {"hist_gradient_boosting": {"max_iter": 20}, "logistic_regression": {}}.get(
        algorithm, {"n_estimators": 20}
    )
    candidate = build_candidate(algorithm, CandidateSettings(algorithm=algorithm, params=params), 1).fit(x, y)  # type: ignore[arg-type]
    proba = candidate.predict_proba(x)
    assert proba.shape == (len(x),)
    assert np.all((proba >= 0) & (proba <= 1))
    assert proba[y.to_numpy() == 1].mean() > proba[y.to_numpy() == 0].mean()  # it learned recency
    importances = candidate.importances(x, y, seed=1)
    assert set(importances) == set(FEATURES)
    assert sum(importances.values()) == pytest.approx(1.0)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("candidates", artifact_location=(tmp_path / "artifacts").as_uri())
    logged = log_candidate(experiment, candidate, {}, {}, importances, {}, {}, {}, x.head(20), 0.5)
    scorer = load_scorer(logged.model_uri)
    np.testing.assert_allclose(scorer.predict_proba(x), proba, rtol=0, atol=1e-12)


def test_the_logged_datasets_schema_and_digest_are_the_ones_mlflow_computes() -> None:
    """Column types and `required` (no null in the column) as MLflow's own cell-by-cell inference
    gives them, and its digest, for the column kinds of a training frame (and a text column)."""
    from mlflow.data.digest_utils import compute_pandas_digest
    from mlflow.types.utils import _infer_schema

    from churnops.training.tracking import frame_digest, frame_schema

    frame = pd.DataFrame(
        {
            "customer_id": np.array([1, 2, 3], dtype="int64"),
            "event_timestamp": pd.to_datetime(["2024-01-01", "2024-01-08", None]),
            "recency": [3.0, np.nan, 1.0],
            "frequency": np.array([2, 0, 5], dtype="int64"),
            "monetary": [10.5, 0.0, 7.25],
            "churned": np.array([1, 0, 1], dtype="int32"),
        }
    )
    assert frame_schema(frame) == _infer_schema(frame)
    assert [c.required for c in frame_schema(frame).inputs] == [True, False, False, True, True, True]
    assert frame_digest(frame) == compute_pandas_digest(frame)
    with_text = frame.assign(segment=["a", "b", "c"], mixed=["a", 1, None])
    assert frame_digest(with_text) == compute_pandas_digest(with_text)
    assert frame_digest(with_text) != frame_digest(with_text.assign(segment=["a", "b", "d"]))


@pytest.mark.parametrize("algorithm", ["lightgbm", "logistic_regression"])
def test_folds_fitted_side_by_side_score_as_folds_fitted_one_by_one(algorithm: str) -> None:
    """The pool changes when the folds train, not what they give: the same scores per fold,
    reported in fold order."""
    from churnops.training.candidates import fit_pool, fits_side_by_side
    from churnops.training.metrics import cross_validated_proba, fold_scores

    assert fits_side_by_side(algorithm)
    x, y = _rows()
    groups = pd.Series(np.arange(len(x)) // 4)
    config = CandidateSettings(algorithm=algorithm, params={"n_estimators": 30} if algorithm == "lightgbm" else {})  # type: ignore[arg-type]

    def fresh() -> object:
        return build_candidate(algorithm, config, 1).model

    alone: list[tuple[int, float]] = []
    together: list[tuple[int, float]] = []
    one_by_one = cross_validated_proba(fresh, x, y, groups, 4, lambda n, auc: alone.append((n, auc)))
    with fit_pool(algorithm) as pool:
        side_by_side = cross_validated_proba(fresh, x, y, groups, 4, lambda n, auc: together.append((n, auc)), pool)
    for (y1, p1), (y2, p2) in zip(one_by_one, side_by_side, strict=True):
        assert (y1 == y2).all()
        assert p2 == pytest.approx(p1, abs=1e-12)
    assert fold_scores(side_by_side, 0.4) == pytest.approx(fold_scores(one_by_one, 0.4), abs=1e-12)
    assert [n for n, _ in together] == [1, 2, 3, 4]
    assert [f1 for _, f1 in together] == pytest.approx([f1 for _, f1 in alone], abs=1e-12)


def test_cross_validation_f1_is_scored_at_the_chosen_threshold() -> None:
    """CV F1 reads like the holdout's: at the decision threshold, not at 0.5."""
    from churnops.training.metrics import fold_scores

    folds = [
        (np.array([0, 1, 1, 0]), np.array([0.1, 0.35, 0.3, 0.2])),  # every churner below 0.5
        (np.array([0, 1, 0, 0]), np.array([0.05, 0.4, 0.1, 0.2])),
    ]
    assert fold_scores(folds, 0.5)["cv_f1_mean"] == 0.0
    at_chosen = fold_scores(folds, 0.25)
    assert at_chosen["cv_f1_mean"] == pytest.approx(1.0)
    assert at_chosen["cv_roc_auc_mean"] == pytest.approx(1.0)
    one_class = fold_scores([*folds, (np.array([0, 0]), np.array([0.1, 0.2]))], 0.25)
    assert one_class["cv_roc_auc_mean"] == pytest.approx(1.0)  # a fold without churners has no AUC
    assert one_class["cv_f1_mean"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("rows", "churners", "warned"), [(1_168, 300, True), (20_000, 150, True), (20_000, 900, False)]
)
def test_training_warns_when_the_models_fit_on_too_little(
    rows: int, churners: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from churnops.pipelines.train import _warn_if_little

    with caplog.at_level("WARNING", logger="churnops.pipelines.train"):
        _warn_if_little(rows, churners, 8)
    assert ("the models fit on only" in caplog.text) == warned
    if warned:
        assert f"{rows:,} rows ({churners:,} churners, 8 snapshot(s))" in caplog.text
