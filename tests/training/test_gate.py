"""The gate passes a better model, refuses a worse one, and alerts once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from churnops.alerts import Alert, raise_alert
from churnops.settings import AlertSettings, GateSettings
from churnops.training.gate import evaluate_gate

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 3000)


def _model(quality: float) -> tuple[np.ndarray, float]:
    """Probabilities that agree with the labels `quality` of the time."""
    right = RNG.random(len(LABELS)) < quality
    guess = np.where(right, LABELS, 1 - LABELS)
    return np.clip(guess * 0.6 + 0.2 + RNG.normal(0, 0.05, len(LABELS)), 0, 1), 0.5


def test_first_model_needs_only_the_floor() -> None:
    assert evaluate_gate(GateSettings(), LABELS, _model(0.9), None).passed
    failed = evaluate_gate(GateSettings(), LABELS, _model(0.6), None)
    assert not failed.passed
    assert "below the floor 0.70" in failed.reasons[0]


def test_a_better_challenger_passes_and_a_worse_one_is_refused() -> None:
    champion = _model(0.85)
    better = evaluate_gate(GateSettings(), LABELS, _model(0.9), champion)
    assert better.passed
    assert better.difference is not None
    assert better.difference > 0
    assert better.ci_low is not None
    worse = evaluate_gate(GateSettings(), LABELS, _model(0.78), champion)
    assert not worse.passed
    assert "non-inferiority margin" in worse.reasons[0]


def test_an_equal_challenger_is_within_the_margin() -> None:
    same = _model(0.88)
    result = evaluate_gate(GateSettings(non_inferiority_margin=0.01), LABELS, same, same)
    assert result.passed
    assert result.difference == 0.0


def test_auc_can_be_the_compared_metric() -> None:
    champion = _model(0.85)
    result = evaluate_gate(GateSettings(relative_metric="roc_auc"), LABELS, _model(0.75), champion)
    assert not result.passed
    assert result.metric == "roc_auc"


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
