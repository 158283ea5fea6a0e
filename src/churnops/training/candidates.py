"""Candidate models: build, fit and explain each configured algorithm."""

from __future__ import annotations

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

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Churn probability per row."""
        return np.asarray(self.model.predict_proba(features)[:, 1], dtype="float64")

    def importances(self, features: pd.DataFrame, labels: pd.Series, seed: int) -> dict[str, float]:
        """Feature importances, normalised to sum to 1 (permutation importance where the
        model has none of its own)."""
        raw = getattr(self.model, "feature_importances_", None)
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


def _cores() -> int:
    """The cores this process may run on (OpenMP threads wait passively: see churnops/__init__.py)."""
    import os

    return len(os.sched_getaffinity(0))


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

        model: Any = lgb.LGBMClassifier(random_state=seed, n_jobs=_cores(), verbose=-1, deterministic=True, **params)
    elif config.algorithm == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(random_state=seed, **params)
    elif config.algorithm == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(random_state=seed, n_jobs=-1, **params)
    else:
        from sklearn.ensemble import GradientBoostingClassifier

        model = GradientBoostingClassifier(random_state=seed, **params)
    return Candidate(name=name, algorithm=config.algorithm, params=params, model=model)
