"""MLflow experiment tracking: one run per candidate, models saved without unchecked pickles.

LightGBM models are logged as the booster's native text format; scikit-learn models with
skops and an explicit list of trusted types. The decision threshold and the feature list are
stored in the model's metadata, so whoever loads the model scores it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops.settings import MlflowSettings
from churnops.training.candidates import SKOPS_TRUSTED_TYPES, Candidate


@dataclass(frozen=True)
class LoggedModel:
    """Where a candidate's run and model ended up."""

    run_id: str
    model_uri: str


def use_tracking(settings: MlflowSettings) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; return its id."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = settings.artifact_location
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return str(mlflow.create_experiment(settings.experiment, artifact_location=location))


def log_candidate(
    experiment_id: str,
    candidate: Candidate,
    params: dict[str, Any],
    metrics: dict[str, float],
    importances: dict[str, float],
    lineage: dict[str, Any],
    tags: dict[str, str],
    datasets: dict[str, tuple[pd.DataFrame, str]],
    example: pd.DataFrame,
    threshold: float,
) -> LoggedModel:
    """Log one candidate as an MLflow run: params, metrics, importances, lineage, data, model.

    Args:
        experiment_id: From `use_tracking`.
        candidate: The fitted candidate.
        params: Hyperparameters and training settings.
        metrics: Holdout, validation and CV metrics.
        importances: Feature -> normalised importance.
        lineage: Feature-table hash, raw partitions, snapshot range, horizon.
        tags: Short lineage facts as run tags.
        datasets: context -> (frame, source) logged with MLflow's dataset API.
        example: A few feature rows for the signature and input example.
        threshold: The decision threshold chosen on validation data.

    Returns:
        The run id and model URI.
    """
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    with mlflow.start_run(experiment_id=experiment_id, run_name=candidate.name, tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"importance.{k}": v for k, v in importances.items()})
        mlflow.log_dict(importances, "feature_importances.json")
        mlflow.log_dict(lineage, "lineage.json")
        for context, (frame, source) in datasets.items():
            dataset = from_pandas(frame, source=source, name=f"customer_features_{context}", targets="churned")
            mlflow.log_input(dataset, context=context)
        example = example.astype("float64")
        signature = infer_signature(example, candidate.predict_proba(example))
        metadata = {"threshold": threshold, "features": list(example.columns), "candidate": candidate.name}
        # Stating the requirements skips MLflow's slow inference of them in a subprocess.
        requirements = _requirements(candidate.algorithm)
        if candidate.algorithm == "lightgbm":
            info = mlflow.lightgbm.log_model(
                candidate.model.booster_,
                name="model",
                signature=signature,
                input_example=example.head(3),
                metadata=metadata,
                pip_requirements=requirements,
            )
        else:
            info = mlflow.sklearn.log_model(
                candidate.model,
                name="model",
                signature=signature,
                input_example=example.head(3),
                serialization_format="skops",
                skops_trusted_types=SKOPS_TRUSTED_TYPES,
                pyfunc_predict_fn="predict_proba",
                metadata=metadata,
                pip_requirements=requirements,
            )
    return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri)


def _requirements(algorithm: str) -> list[str]:
    from importlib.metadata import version

    names = ["mlflow", "numpy", "pandas", "scikit-learn"]
    if algorithm == "lightgbm":
        names.append("lightgbm")
    else:
        names.append("skops")
    return [f"{n}=={version(n)}" for n in names]


@dataclass
class Scorer:
    """A loaded model that returns churn probabilities, with its threshold and features."""

    model: Any
    flavor: str
    threshold: float
    features: list[str]

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Churn probability per row (columns picked and ordered as the model was trained)."""
        x = frame[self.features].astype("float64")
        if self.flavor == "lightgbm":
            return np.asarray(self.model.predict(x), dtype="float64")
        return np.asarray(self.model.predict_proba(x)[:, 1], dtype="float64")


def load_scorer(model_uri: str) -> Scorer:
    """Load a logged model in its own flavor (native booster or skops), never via pickle."""
    import mlflow
    from mlflow.models import Model

    info = Model.load(model_uri)
    metadata = info.metadata or {}
    if "lightgbm" in info.flavors:
        model = mlflow.lightgbm.load_model(model_uri)
        flavor = "lightgbm"
    else:
        model = mlflow.sklearn.load_model(model_uri)
        flavor = "sklearn"
    return Scorer(model, flavor, float(metadata["threshold"]), list(metadata["features"]))
