"""Which backend serves a model: ONNX where it converts and agrees, else the native model, and why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnops.serving.model import _onnx_session
from churnops.training.tracking import Scorer

FEATURES = ["recency", "frequency", "monetary", "gap"]


def _data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(600, len(FEATURES))), columns=FEATURES)
    y = (x["recency"] + 0.5 * rng.normal(size=len(x)) > 0).astype(int).to_numpy()
    return x, y


def _scorer(model: object, flavor: str) -> Scorer:
    return Scorer(model, flavor, 0.5, FEATURES)


def test_a_lightgbm_model_is_served_by_onnx_runtime_and_agrees() -> None:
    import lightgbm

    x, y = _data()
    booster = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=7, verbose=-1).fit(x, y).booster_
    session, reason = _onnx_session(_scorer(booster, "lightgbm"), x.to_numpy(), 1e-6)
    assert session is not None, reason
    assert "agrees with the native model" in reason


@pytest.mark.parametrize("name", ["random_forest", "gradient_boosting"])
def test_a_scikit_learn_forest_converts_through_skl2onnx(name: str) -> None:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    x, y = _data()
    cls = RandomForestClassifier if name == "random_forest" else GradientBoostingClassifier
    model = cls(n_estimators=20, max_depth=4, random_state=0).fit(x, y)
    session, reason = _onnx_session(_scorer(model, "sklearn"), x.to_numpy(), 1e-6)
    assert session is not None, reason
    assert "agrees with the native model" in reason
    run, input_name = session
    onnx = run.run(None, {input_name: x.to_numpy(np.float32)})[1][:, 1]
    np.testing.assert_allclose(onnx, model.predict_proba(x)[:, 1], atol=1e-6)


@pytest.mark.parametrize("algorithm", ["logistic_regression", "gradient_boosting"])
def test_a_candidate_that_fills_missing_values_converts_with_its_pipeline(algorithm: str) -> None:
    """The candidates built as pipelines (missing values filled, then scaled or not) are served by
    ONNX Runtime too, missing values included."""
    from churnops.settings import CandidateSettings
    from churnops.training.candidates import build_candidate

    x, y = _data()
    x.loc[::4, "gap"] = np.nan
    params = {"n_estimators": 20} if algorithm == "gradient_boosting" else {}
    model = build_candidate(algorithm, CandidateSettings(algorithm=algorithm, params=params), 0).model.fit(x, y)  # type: ignore[arg-type]
    session, reason = _onnx_session(_scorer(model, "sklearn"), x.to_numpy(), 1e-6)
    assert session is not None, reason
    run, input_name = session
    onnx = run.run(None, {input_name: x.to_numpy(np.float32)})[1][:, 1]
    np.testing.assert_allclose(onnx, model.predict_proba(x)[:, 1], atol=1e-6)


def test_a_model_without_a_converter_leaves_the_native_model_serving() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = _data()
    model = HistGradientBoostingClassifier(max_iter=10).fit(x, y)
    session, reason = _onnx_session(_scorer(model, "sklearn"), x.to_numpy(), 1e-6)
    assert session is None
    assert reason.startswith("HistGradientBoostingClassifier does not convert to ONNX")
    assert reason.endswith("the native model serves")


def test_a_tolerance_the_conversion_cannot_meet_leaves_the_native_model_serving() -> None:
    import lightgbm

    x, y = _data()
    booster = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=7, verbose=-1).fit(x, y).booster_
    session, reason = _onnx_session(_scorer(booster, "lightgbm"), x.to_numpy() + 1e-3, 1e-30)
    assert session is None
    assert "differs from the native model" in reason
