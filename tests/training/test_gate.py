"""The gate passes a model that beats the floor, both baselines and the champion; alerts go out once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from sklearn import metrics as skm

from churnops.alerts import Alert, raise_alert
from churnops.settings import AlertSettings, GateSettings
from churnops.training.gate import CHAMPION, FLOOR, LIFT_AUC, LIFT_F1, WeightedScores, evaluate_gate, positives_first

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 3000)
# recency that knows a little: churners tend to have been away longer
RECENCY = np.round(np.where(LABELS == 1, 40, 25) + RNG.normal(0, 20, len(LABELS))).clip(0)
QUICK = GateSettings(bootstrap_rounds=200)


def _model(quality: float, labels: np.ndarray = LABELS) -> tuple[np.ndarray, float]:
    """Probabilities that agree with the labels `quality` of the time."""
    right = RNG.random(len(labels)) < quality
    guess = np.where(right, labels, 1 - labels)
    return np.clip(guess * 0.6 + 0.2 + RNG.normal(0, 0.05, len(labels)), 0, 1), 0.5


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_scores_equal_sklearn_on_the_resampled_rows(ties: bool) -> None:
    """Brute force: score the explicitly repeated rows with scikit-learn."""
    rng = np.random.default_rng(1)
    labels = np.sort(rng.integers(0, 2, 400))[::-1]  # positives first, as WeightedScores needs
    scores = rng.integers(0, 8, 400).astype(float) if ties else rng.random(400)
    scored = WeightedScores(labels, scores, 0.5 if not ties else 4.0)
    for _ in range(5):
        weights = np.bincount(rng.integers(0, 400, 400), minlength=400)
        rows = np.repeat(np.arange(400), weights)
        assert scored.roc_auc(weights.astype(float)) == pytest.approx(skm.roc_auc_score(labels[rows], scores[rows]))
        threshold = 0.5 if not ties else 4.0
        assert scored.f1(weights.astype(float)) == pytest.approx(
            skm.f1_score(labels[rows], (scores[rows] >= threshold).astype(int))
        )


def test_rows_must_come_positives_first() -> None:
    with pytest.raises(ValueError, match="positives first"):
        WeightedScores(np.array([0, 1]), np.array([0.1, 0.9]))
    labels = np.array([0, 1, 0, 1])
    assert labels[positives_first(labels)].tolist() == [1, 1, 0, 0]


def test_a_good_first_model_passes_every_condition_and_each_is_named() -> None:
    result = evaluate_gate(QUICK, LABELS, _model(0.9), RECENCY, None)
    assert result.passed, result.reasons
    assert [c.name for c in result.conditions] == [FLOOR, LIFT_F1, LIFT_AUC]
    for condition in result.conditions:
        assert condition.ci_low <= condition.observed <= condition.ci_high
        assert "CI" in condition.describe(0.95)
    assert result.baselines["everyone_churns_recall"] == 1.0
    assert result.baselines["everyone_churns_f1"] == pytest.approx(skm.f1_score(LABELS, np.ones_like(LABELS)))
    assert result.baselines["recency_roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, RECENCY))


def test_a_first_model_below_the_floor_fails() -> None:
    failed = evaluate_gate(QUICK, LABELS, _model(0.6), RECENCY, None)
    assert not failed.passed
    assert failed.reasons[0].startswith(FLOOR)
    assert ">= +0.7000" in failed.reasons[0]


def test_a_first_model_that_only_matches_everyone_churns_fails_despite_a_high_f1() -> None:
    """86% churners: "everyone churns" has F1 0.925, so an F1 of 0.93 above the floor is no lift."""
    labels = (RNG.random(3000) < 0.86).astype(int)
    recency = np.where(labels == 1, 60.0, 20.0) + RNG.normal(0, 30, 3000)
    weak = np.clip(0.7 + 0.05 * labels + RNG.normal(0, 0.1, 3000), 0, 1)
    result = evaluate_gate(QUICK, labels, (weak, 0.0), recency, None)
    assert result.condition(FLOOR) is not None
    assert result.condition(FLOOR).passed  # type: ignore[union-attr]
    assert not result.condition(LIFT_F1).passed  # type: ignore[union-attr]
    assert not result.passed


def test_a_model_no_better_than_recency_fails_the_auc_lift() -> None:
    """Recency itself, squashed into [0, 1], ranks exactly as the baseline does: no lift."""
    squashed = RECENCY / (RECENCY.max() + 1)
    result = evaluate_gate(QUICK, LABELS, (squashed, 0.0), RECENCY, None)
    lift = result.condition(LIFT_AUC)
    assert lift is not None
    assert lift.observed == pytest.approx(0.0, abs=1e-12)
    assert not lift.passed


def test_a_better_challenger_passes_and_a_worse_one_is_refused() -> None:
    champion = _model(0.85)
    better = evaluate_gate(QUICK, LABELS, _model(0.9), RECENCY, champion)
    assert better.passed
    versus = better.condition(CHAMPION)
    assert versus is not None
    assert versus.observed > 0
    worse = evaluate_gate(QUICK, LABELS, _model(0.78), RECENCY, champion)
    assert not worse.passed
    assert [r.split(":")[0] for r in worse.reasons] == [CHAMPION]


def test_an_equal_challenger_is_within_the_margin() -> None:
    same = _model(0.88)
    result = evaluate_gate(GateSettings(non_inferiority_margin=0.01, bootstrap_rounds=200), LABELS, same, RECENCY, same)
    assert result.passed
    assert result.condition(CHAMPION).observed == 0.0  # type: ignore[union-attr]


def test_auc_can_be_the_compared_metric() -> None:
    champion = _model(0.85)
    policy = GateSettings(relative_metric="roc_auc", bootstrap_rounds=200)
    result = evaluate_gate(policy, LABELS, _model(0.75), RECENCY, champion)
    assert not result.passed
    assert result.condition(CHAMPION) is not None
    assert not result.condition(CHAMPION).passed  # type: ignore[union-attr]


def test_the_verdict_round_trips_through_a_dict() -> None:
    """Steps hand the verdict on as a plain dict (an orchestrator's XCom)."""
    from churnops.training.gate import GateResult

    result = evaluate_gate(QUICK, LABELS, _model(0.9), RECENCY, _model(0.85))
    assert GateResult.from_dict(json.loads(json.dumps(result.as_dict()))) == result


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Any:
    _Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_alert_goes_to_file_and_webhook_once(tmp_path: Path, receiver: ThreadingHTTPServer) -> None:
    settings = AlertSettings(
        file=str(tmp_path / "alerts.jsonl"), webhook_url=f"http://127.0.0.1:{receiver.server_port}/hook"
    )
    alert = Alert(key="gate-failed-abc", title="gate failed", details={"f1": 0.5})
    assert raise_alert(settings, alert)
    assert not raise_alert(settings, alert)  # the same failure again: not repeated
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["key"] == "gate-failed-abc"
    assert len(_Receiver.bodies) == 1
    assert "gate failed" in _Receiver.bodies[0]["text"]
    assert raise_alert(settings, Alert(key="other", title="something else"))
    assert len(_Receiver.bodies) == 2


def test_a_dead_webhook_does_not_lose_the_alert(tmp_path: Path) -> None:
    from tests.servers import free_port

    settings = AlertSettings(
        file=str(tmp_path / "a.jsonl"), webhook_url=f"http://127.0.0.1:{free_port()}/", webhook_timeout_s=0.5
    )
    assert raise_alert(settings, Alert(key="k", title="t"))
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1
