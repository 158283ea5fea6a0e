"""Prometheus metrics of one server, in a registry of its own (several servers in one process
do not share counts)."""

from __future__ import annotations

from typing import Any

# Latency buckets from 0.5 ms to 2.5 s: the server answers in about a millisecond.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


ENDPOINTS = frozenset(
    {
        "/predict",
        "/invocations",
        "/ping",
        "/health",
        "/metrics",
        "/admin/reload",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    }
)


def endpoint_label(path: str) -> str:
    """A request path as a bounded label: the endpoint, `/v2/models/{name}[/...]`, or `other`."""
    if path in ENDPOINTS:
        return path
    parts = path.split("/")
    if len(parts) in (4, 5) and parts[1:3] == ["v2", "models"]:
        return "/v2/models/{name}" + (f"/{parts[4]}" if len(parts) == 5 and parts[4] in ("infer", "ready") else "")
    return "other"


class ServerMetrics:
    """Requests, refusals, latency, online-store lookups, the prediction log and the model."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ("endpoint", "version", "variant")
        self.requests = Counter(
            "churnops_requests", "Requests answered with predictions.", labels, registry=self.registry
        )
        self.items = Counter("churnops_predictions", "Items scored.", labels, registry=self.registry)
        self.latency = Histogram(
            "churnops_request_seconds",
            "Time to answer a scoring request.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "churnops_request_errors",
            "Requests refused or failed, by status code.",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.lookup = Histogram(
            "churnops_online_lookup_seconds",
            "Time to fetch features from the online store.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.log_depth = Gauge(
            "churnops_prediction_log_queue_depth", "Predictions waiting to be logged.", registry=self.registry
        )
        self.log_dropped = Counter(
            "churnops_prediction_log_dropped",
            "Predictions not logged because the queue was full.",
            registry=self.registry,
        )
        self.log_full = Counter(
            "churnops_prediction_log_full_events", "Times the log's queue was found full.", registry=self.registry
        )
        self.reload_failures = Counter(
            "churnops_model_reload_failures",
            "Versions that failed to load; the old one kept serving.",
            registry=self.registry,
        )
        self.model = Gauge(
            "churnops_model_info",
            "The version being served (1) and its backend.",
            ("version", "backend", "alias"),
            registry=self.registry,
        )

    def served(self, endpoint: str, model: Any, variant: str, seconds: float, items: int) -> None:
        """Count an answered request."""
        self.requests.labels(endpoint, model.version, variant).inc()
        self.items.labels(endpoint, model.version, variant).inc(items)
        self.latency.labels(endpoint, model.version, variant).observe(seconds)

    def refused(self, endpoint: str, status: int) -> None:
        """Count a 4xx or 5xx, under the endpoint's name (any other path counts as `other`, so
        that requests for made-up paths cannot grow the metrics without bound)."""
        self.errors.labels(endpoint_label(endpoint), str(status)).inc()

    def model_loaded(self, model: Any, challenger: Any = None) -> None:
        """Report the served version and any A/B challenger (and clear the ones before)."""
        self.model.clear()
        self.model.labels(model.version, model.backend, model.alias).set(1)
        if challenger is not None:
            self.model.labels(challenger.version, challenger.backend, "challenger").set(1)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
