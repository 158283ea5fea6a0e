"""The model a server serves: loaded by registry alias, checked, and run by ONNX Runtime where it can be.

Only `models:/<name>@<alias>` of the configured registered model is ever loaded (never a path or
URL from a request), and only a version that is fully recorded and whose files still hash to the
digest recorded when it was registered. Where the model converts to ONNX (LightGBM through
onnxmltools, scikit-learn through skl2onnx) and the converted model agrees with the native one
within `serving.onnx_tolerance` on the version's holdout rows, ONNX Runtime serves it (tens of
microseconds a row); otherwise the native model does, and the reason is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from churnops.settings import Settings

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A version cannot be served; the message says why."""


@dataclass
class ServedModel:
    """A loaded, checked model version, ready to score feature rows."""

    name: str
    version: str
    alias: str
    run_id: str
    features: list[str]
    threshold: float
    feature_service: str
    backend: str  # "onnx" or "native"
    backend_reason: str
    _native: Any = field(repr=False)
    _onnx: Any = field(default=None, repr=False)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Churn probability of each row (columns in `features` order; NaN for a missing value)."""
        if self._onnx is not None:
            session, input_name = self._onnx
            out = session.run(None, {input_name: rows.astype(np.float32, copy=False)})
            return np.asarray(out[1], dtype=np.float64)[:, 1]
        frame = pd.DataFrame(rows, columns=self.features)
        return np.asarray(self._native.predict_proba(frame), dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        """What the model endpoint reports."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "threshold": self.threshold,
            "features": self.features,
            "feature_service": self.feature_service,
        }


def load_served_model(settings: Settings, alias: str | None = None) -> ServedModel:
    """Load the version behind an alias of the configured model, check it, choose its backend.

    Raises:
        ModelLoadError: No version holds the alias, it is not fully recorded, its files do not
            match the recorded digest, or it fails its smoke prediction.
    """
    import tempfile
    from pathlib import Path

    import mlflow

    from churnops.pipelines.promotion import ARTIFACT_DIGEST, existing_registry
    from churnops.registry.mlflow_registry import COMPLETE
    from churnops.training import tracking

    alias = alias or settings.serving.alias
    registry = existing_registry(settings)
    if registry is None:
        raise ModelLoadError("nothing is registered yet; run `churnops train`")
    tracking.use_tracking(settings)
    version = registry.holder(alias)
    if version is None:
        raise ModelLoadError(f"no version of {registry.model_name} holds the alias {alias!r}")
    record = registry.client.get_model_version(registry.model_name, version)
    tags = dict(record.tags)
    if tags.get(COMPLETE) != "true":
        raise ModelLoadError(f"{registry.model_name} version {version} is not fully recorded")
    model_uri = f"models:/{registry.model_name}/{version}"
    recorded = tags.get(ARTIFACT_DIGEST)
    if not recorded:
        raise ModelLoadError(f"version {version} has no recorded artifact digest; register it again")
    with tempfile.TemporaryDirectory(prefix="churnops-serve-") as folder:
        # hash and load the same downloaded files: what is checked is what is deserialised
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
        actual = tracking.folder_digest(local)
        if actual != recorded:
            raise ModelLoadError(
                f"version {version}'s files hash to {actual[:12]}, not the {recorded[:12]} recorded at "
                "registration; refusing to serve them"
            )
        native = tracking.load_scorer(str(local))
    run_id = str(record.run_id)
    holdout = tracking.load_holdout(run_id)
    rows = holdout[native.features].to_numpy(dtype=np.float64)
    served = ServedModel(
        name=registry.model_name,
        version=str(version),
        alias=alias,
        run_id=run_id,
        features=list(native.features),
        threshold=float(native.threshold),
        feature_service=tags.get("feature_service", ""),
        backend="native",
        backend_reason="ONNX disabled (serving.onnx: false)",
        _native=native,
    )
    if settings.serving.onnx:
        served._onnx, served.backend_reason = _onnx_session(native, rows, settings.serving.onnx_tolerance)
        served.backend = "onnx" if served._onnx is not None else "native"
    smoke = served.predict_proba(rows[: min(len(rows), 16)])
    if not len(smoke) or not np.all(np.isfinite(smoke)) or smoke.min() < 0 or smoke.max() > 1:
        raise ModelLoadError(f"version {version} failed its smoke prediction ({smoke[:4]})")
    log.info("loaded %s version %s (%s): %s", registry.model_name, version, served.backend, served.backend_reason)
    return served


def _convert(native: Any, columns: int) -> Any:
    """The model as ONNX: LightGBM through onnxmltools (opset 15), scikit-learn through skl2onnx.

    Raises:
        Exception: The converter cannot convert this model (HistGradientBoosting, for one).
    """
    if native.flavor == "lightgbm":
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        types = [("features", FloatTensorType([None, columns]))]
        return convert_lightgbm(native.model, initial_types=types, target_opset=15, zipmap=False)
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType as SklFloatTensorType

    types = [("features", SklFloatTensorType([None, columns]))]
    return convert_sklearn(native.model, initial_types=types, options={"zipmap": False}, target_opset=15)


def _onnx_session(native: Any, rows: np.ndarray, tolerance: float) -> tuple[Any, str]:
    """An ONNX Runtime session equal to the native model within `tolerance`, or None and why not."""
    try:
        import onnxruntime as ort

        converted = _convert(native, rows.shape[1])
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its shape notes are not the user's business
        options.intra_op_num_threads = 1  # one row at a time: threads cost more than they give
        session = ort.InferenceSession(converted.SerializeToString(), options, providers=["CPUExecutionProvider"])
        onnx = np.asarray(session.run(None, {"features": rows.astype(np.float32)})[1], dtype=np.float64)[:, 1]
    except Exception as exc:  # a converter that cannot convert leaves the native model serving
        name = type(native.model).__name__
        return None, f"{name} does not convert to ONNX ({type(exc).__name__}: {exc}); the native model serves"
    native_proba = np.asarray(native.predict_proba(pd.DataFrame(rows, columns=native.features)))
    gap = float(np.max(np.abs(onnx - native_proba))) if len(rows) else 0.0
    if gap > tolerance:
        return None, f"ONNX differs from the native model by {gap:.2e} > {tolerance:.0e} on the holdout"
    return (session, "features"), f"ONNX agrees with the native model within {gap:.1e} on {len(rows):,} holdout rows"
