"""The champion's LightGBM booster as a BentoML service, for bench_serving.py (the design
document's serving choice). Run in its own virtual environment:

    CHURN_MODEL_FILE=.../model.lgb bentoml serve _bento_service:Churn --port 3000

POST /predict {"rows": [[feature values in the model's order, null for missing]]} ->
[probabilities]. One worker and one LightGBM thread, as the project's server has.
"""

from __future__ import annotations

import os

import bentoml
import lightgbm
import numpy as np


@bentoml.service(workers=1)
class Churn:
    def __init__(self) -> None:
        self.booster = lightgbm.Booster(model_file=os.environ["CHURN_MODEL_FILE"])

    @bentoml.api
    def predict(self, rows: list[list[float | None]]) -> list[float]:
        x = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
        return self.booster.predict(x, num_threads=1).tolist()
