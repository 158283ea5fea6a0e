"""Alert sinks: the log and an alert file always, a Slack-compatible webhook by configuration.

An alert carries a key; an alert whose key was already sent is not sent again, so a failure
that repeats on every retry alerts the team once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from churnops.jsonl import append_line, read_lines
from churnops.settings import AlertSettings

log = logging.getLogger("churnops.alerts")
SENT_LOGGER = "churnops.alerts.sent"


@dataclass(frozen=True)
class Alert:
    """Something the team must know about."""

    key: str
    title: str
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "error"
    raised_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def text(self) -> str:
        """One readable message."""
        lines = [f"[churnops {self.severity}] {self.title}"]
        lines += [f"- {k}: {v}" for k, v in self.details.items()]
        return "\n".join(lines)


class AlertSink(Protocol):
    """Somewhere an alert can go."""

    def send(self, alert: Alert) -> None:
        """Deliver the alert."""


class LogSink:
    """Writes alerts to the `churnops.alerts.sent` logger (which the CLI, printing each alert's
    substance in its own words, keeps quiet unless --verbose)."""

    def send(self, alert: Alert) -> None:
        """Log at error level."""
        logging.getLogger(SENT_LOGGER).error(alert.text())


class FileSink:
    """Appends alerts as JSON lines; also remembers which keys were sent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def sent_keys(self) -> set[str]:
        """Keys of alerts already in the file."""
        return {str(record["key"]) for record in read_lines(self.path) if "key" in record}

    def send(self, alert: Alert) -> None:
        """Append one line and fsync it."""
        append_line(self.path, asdict(alert))


class WebhookSink:
    """Posts `{"text": ...}` to a Slack-compatible incoming webhook."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def send(self, alert: Alert) -> None:
        """POST the alert; a failed delivery is logged, never raised (the file keeps it)."""
        import httpx

        try:
            response = httpx.post(self.url, json={"text": alert.text()}, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.error("alert webhook %s failed: %s", self.url, exc)


def alert_sinks(settings: AlertSettings) -> tuple[FileSink, list[AlertSink]]:
    """The alert file (which also remembers sent keys) and every sink to send to."""
    file_sink = FileSink(Path(settings.file))
    sinks: list[AlertSink] = [LogSink(), file_sink]
    if settings.webhook_url:
        sinks.append(WebhookSink(settings.webhook_url, settings.webhook_timeout_s))
    return file_sink, sinks


def alerted(settings: AlertSettings) -> str:
    """That the team was alerted and where, in words: the alert file, and the webhook when one is set."""
    if settings.webhook_url:
        return f"the team was alerted: posted to the webhook and written to {settings.file}"
    return f"the team was alerted: written to {settings.file} (no alerts.webhook_url is set, so no message was posted)"


def raise_alert(settings: AlertSettings, alert: Alert) -> bool:
    """Send an alert to every sink unless its key was sent before.

    Returns:
        True if it was sent, False if it was a repeat.
    """
    file_sink, sinks = alert_sinks(settings)
    if alert.key in file_sink.sent_keys():
        log.info("alert %s already sent; not repeating it", alert.key)
        return False
    for sink in sinks:
        sink.send(alert)
    return True
