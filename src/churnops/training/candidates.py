"""Candidate models: build, fit and explain each configured algorithm."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnops.settings import CandidateSettings

# Types skops must be told to trust when loading the sklearn tree ensembles it saved.
SKOPS_TRUSTED_TYPES = [
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.dummy.DummyClassifier",
    "sklearn.ensemble._gb_losses.BinomialDeviance",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.impute._base.SimpleImputer",
    "numpy.dtype",  # SimpleImputer keeps its input dtype
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "collections.OrderedDict",
    "builtins.slice",
]


@dataclass
class Candidate:
    """A named, configured model."""

    name: str
    algorithm: str
    params: dict[str, Any]
    model: Any

    def fit(self, features: pd.DataFrame, labels: pd.Series) -> Candidate:
        """Fit on a frame of features and 0/1 labels."""
        self.model.fit(features, labels)
        return self

    def predict_with_every_core(self) -> None:
        """Score with every core after a fit on one thread (`fits_side_by_side`); the fitted
        trees do not change."""
        if self.algorithm == "lightgbm":
            self.model.set_params(n_jobs=cores())

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Churn probability per row."""
        return np.asarray(self.model.predict_proba(features)[:, 1], dtype="float64")

    def importances(self, features: pd.DataFrame, labels: pd.Series, seed: int) -> dict[str, float]:
        """Feature importances, normalised to sum to 1 (permutation importance where the
        model has none of its own)."""
        fitted = self.model[-1] if hasattr(self.model, "steps") else self.model  # a Pipeline's estimator
        raw = getattr(fitted, "feature_importances_", None)
        if raw is None:
            from sklearn.inspection import permutation_importance

            sample = features.sample(min(len(features), 5000), random_state=seed)
            result = permutation_importance(
                self.model, sample, labels.loc[sample.index], n_repeats=3, random_state=seed, scoring="roc_auc"
            )
            raw = np.clip(result.importances_mean, 0, None)
        values = np.asarray(raw, dtype="float64")
        total = values.sum() or 1.0
        return {name: float(v / total) for name, v in zip(features.columns, values, strict=True)}


def cores() -> int:
    """The cores this process may run on (OpenMP threads wait passively: see churnops/__init__.py)."""
    import os

    return len(os.sched_getaffinity(0))


def fits_side_by_side(algorithm: str) -> bool:
    """Whether this algorithm's fits run side by side in threads, one core each (`fit_pool`).

    LightGBM trains outside the GIL, and a logistic regression spends its time in NumPy, so
    their cross-validation folds and final fit train at once, one per core. Both were slower
    split into parallel regions per step: LightGBM's OpenMP threads, which wait passively (see
    churnops/__init__.py), pay a wake-up at every region, and BLAS threads on 200,000 x 22
    matrices cost more than they gain (six regression fits: 8.5 s with them, 4.0 s on one
    thread, 2.3 s on one thread two at a time). The tree ensembles of scikit-learn keep their
    own threading.
    """
    return algorithm in ("lightgbm", "logistic_regression")


@contextmanager
def fit_pool(algorithm: str) -> Iterator[Executor | None]:
    """A pool of a thread per core with the numeric libraries on one thread each, for an
    algorithm that `fits_side_by_side` on more than one core; else None (fit one by one)."""
    if not fits_side_by_side(algorithm) or cores() < 2:
        yield None
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(cores()) as pool:
        yield pool


def build_candidate(name: str, config: CandidateSettings, seed: int) -> Candidate:
    """An unfitted candidate for a configured algorithm.

    Args:
        name: The candidate's name in the config.
        config: Algorithm and hyperparameters.
        seed: Random seed, so the same data and config give the same model.

    Returns:
        The candidate.
    """
    params = dict(config.params)
    if config.algorithm == "lightgbm":
        import lightgbm as lgb

        # One thread a fit, so that the model is the same on any machine; its fits run side by
        # side instead (`fit_pool`), and it scores on every core (`predict_with_every_core`).
        model: Any = lgb.LGBMClassifier(random_state=seed, n_jobs=1, verbose=-1, deterministic=True, **params)
    elif config.algorithm == "logistic_regression":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        # Missing values as 0, as the design document's code fills them (its count and sum
        # features are 0 for the same customers, so the model can tell them apart); scaled so
        # that the penalty weighs every feature alike. It converts to ONNX as it is.
        model = Pipeline(
            [
                ("fill_missing", _fill_missing()),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(random_state=seed, **params)),
            ]
        )
    elif config.algorithm == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(random_state=seed, **params)
    elif config.algorithm == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(random_state=seed, n_jobs=-1, **params)
    else:
        from sklearn.ensemble import GradientBoostingClassifier
        from sklearn.pipeline import Pipeline

        # It refuses missing values (null recency, gaps, order values of customers without
        # orders); the design document's code fills them with 0, and so does this.
        model = Pipeline(
            [("fill_missing", _fill_missing()), ("model", GradientBoostingClassifier(random_state=seed, **params))]
        )
    return Candidate(name=name, algorithm=config.algorithm, params=params, model=model)


def _fill_missing() -> Any:
    """Missing values as 0, for the estimators that refuse them."""
    from sklearn.impute import SimpleImputer

    return SimpleImputer(strategy="constant", fill_value=0.0, keep_empty_features=True)
