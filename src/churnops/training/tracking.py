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

from churnops.settings import Settings
from churnops.training.candidates import SKOPS_TRUSTED_TYPES, Candidate

# A training attempt is reusable only once its last tag, this one, is written on its runs.
TRAINING_COMPLETE = "churnops.training_complete"
INPUT_KEY = "churnops.input_key"
SELECTED = "churnops.selected"
HOLDOUT_ARTIFACT = "holdout.parquet"
MODEL_URI = "churnops.model_uri"


@dataclass(frozen=True)
class LoggedModel:
    """Where a candidate's run and model ended up."""

    run_id: str
    model_uri: str


def use_tracking(settings: Settings, experiment: str | None = None) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; return its id.

    With the embedded store of a workspace that was moved or copied, the artifact locations
    MLflow recorded (absolute paths, as MLflow always stores them) are rebased onto the
    workspace's new folder first, so the copy reads and writes its own artifacts only.

    Args:
        settings: The loaded settings.
        experiment: Experiment name; default `mlflow.experiment`.
    """
    import mlflow

    relocate_embedded_store(settings)
    point_mlflow_at(settings)
    name = experiment or settings.mlflow.experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = settings.mlflow.artifact_location
    if not location:  # a tracking server's own artifact store (its --artifacts-destination)
        return str(mlflow.create_experiment(name))
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
        if experiment is not None:
            location = f"{location}/{name}"
    return str(mlflow.create_experiment(name, artifact_location=location))


def point_mlflow_at(settings: Settings) -> None:
    """Make MLflow's global tracking and registry URIs the configured store's (it writes nothing).

    `models:/` URIs, `Model.load` and the artifact helpers read only the global URIs, and a step
    may be the first thing its process does (a scheduler's task, `churnops deploy staging`).
    """
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)


def embedded_store(settings: Settings) -> Path | None:
    """The SQLite file of the tracking store, when it is a local SQLite file."""
    uri = settings.mlflow.tracking_uri
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


# Columns of MLflow's SQL schema that hold absolute artifact paths or file URIs.
_PATH_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
    ("datasets", "dataset_source"),
)


def relocate_embedded_store(settings: Settings) -> None:
    """Rebase the embedded store's artifact paths when the workspace has moved since last used."""
    import sqlite3

    workspace = settings.paths
    workspace.root.mkdir(parents=True, exist_ok=True)
    current = workspace.root.resolve()
    recorded = workspace.recorded_root()
    store = embedded_store(settings)
    if recorded is not None and recorded != current and store is not None and store.exists():
        pairs = [(recorded.as_uri() + "/", current.as_uri() + "/"), (f"{recorded}/", f"{current}/")]
        with sqlite3.connect(store) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, column in _PATH_COLUMNS:
                for old, new in pairs if table in tables else []:
                    con.execute(
                        f"UPDATE {table} SET {column} = REPLACE({column}, ?, ?) WHERE {column} LIKE ?",
                        (old, new, f"%{old}%"),
                    )
    if recorded != current:
        workspace.record_root()


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
            dataset = from_pandas(
                frame, source=source, name=f"customer_features_{context}", targets="churned", digest=frame_digest(frame)
            )
            dataset.__dict__["schema"] = frame_schema(frame)  # its cached_property, filled without the cell loop
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
        mlflow.set_tag(MODEL_URI, info.model_uri)
    return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri)


def frame_digest(frame: pd.DataFrame) -> str:
    """The digest MLflow computes for a pandas dataset, without its `type` call on every cell
    (it looks for text columns in the whole frame, then hashes only the first 10,000 rows)."""
    from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest

    head = frame.head(MAX_ROWS)
    text = [
        name
        for name in frame.columns
        if (frame[name].dtype == object or isinstance(frame[name].dtype, pd.StringDtype))
        and all(type(value) is str for value in frame[name])  # as MLflow tests them
    ]
    hashed = head[pd.Index(text).union(head.select_dtypes(include=[np.number]).columns)]
    return str(
        get_normalized_md5_digest(
            [pd.util.hash_pandas_object(hashed).values, np.int64(len(frame))] + [str(x).encode() for x in frame.columns]
        )
    )


def frame_schema(frame: pd.DataFrame) -> Any:
    """The MLflow schema MLflow infers for a frame of typed columns, from column-wise null checks.

    MLflow's own inference tests every cell for None or NaN in a Python loop to decide each
    column's `required`: 11 s for the training and holdout frames of 200,000 fit rows.
    """
    from mlflow.types.schema import ColSpec, Schema
    from mlflow.types.utils import _infer_pandas_column

    return Schema(
        [
            ColSpec(type=_infer_pandas_column(frame[name]), name=name, required=not bool(frame[name].isna().any()))
            for name in frame.columns
        ]
    )


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


def log_holdout(run_id: str, holdout: pd.DataFrame) -> None:
    """Store the holdout rows the gate judges (labels, features, probabilities) with the run."""
    import tempfile

    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="churnops-holdout-") as folder:
        path = Path(folder) / HOLDOUT_ARTIFACT
        holdout.to_parquet(path, index=False)
        MlflowClient().log_artifact(run_id, str(path))


def load_holdout(run_id: str) -> pd.DataFrame:
    """The holdout rows stored with a run by `log_holdout`."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=HOLDOUT_ARTIFACT)
    return pd.read_parquet(path)


def completed_training(experiment_id: str, input_key: str) -> list[Any]:
    """The runs of a completed training attempt on exactly these inputs, if there is one."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{INPUT_KEY}` = '{input_key}' AND tags.`{TRAINING_COMPLETE}` = 'true'",
        max_results=100,
    )
    return sorted(runs, key=lambda r: r.info.start_time)


def delete_unfinished_training(experiment_id: str, input_key: str) -> list[str]:
    """Delete the runs an interrupted training attempt on these inputs left (MLflow keeps them,
    marked deleted, until `mlflow gc`): every candidate of an attempt is tagged complete last,
    so a run on these inputs without that tag belongs to no usable attempt. Returns their ids."""
    from mlflow import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{INPUT_KEY}` = '{input_key}'", max_results=1000)
    unfinished = [r.info.run_id for r in runs if r.data.tags.get(TRAINING_COMPLETE) != "true"]
    for run_id in unfinished:
        client.delete_run(run_id)
    return unfinished


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tag a finished run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def log_run_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics to a finished run (non-finite values are skipped)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in metrics.items():
        if np.isfinite(value):
            client.log_metric(run_id, key, float(value))


def run_data(run_id: str) -> Any:
    """A run's params, metrics and tags."""
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id)


def artifact_digest(model_uri: str) -> str:
    """sha256 over a logged model's files (relative names and bytes, in name order).

    Recorded on a version when it is registered; the server refuses a version whose files
    no longer hash the same. MLflow's own `registered_model_meta`, which registration writes
    into the folder, is left out.
    """
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="churnops-model-") as folder:
        return folder_digest(Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder)))


def folder_digest(root: Path) -> str:
    """`artifact_digest` of a model folder already on disk."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "registered_model_meta"):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
