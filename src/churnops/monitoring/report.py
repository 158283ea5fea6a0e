"""The workspace's report page: the loop over time, from what monitoring and the registry recorded.

`<workspace>/report.html`: realized and estimated F1 and ROC AUC per version and variant over
time, the drift share and prediction drift, traffic, latency and error rate, the timeline of
alias moves and alerts, and links to each day's Evidently report and each version's MLflow run.
The charts are inline SVG drawn here: the page needs no script and no network.
"""

from __future__ import annotations

import json
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

from churnops.settings import Settings

Series = dict[str, list[tuple[str, float]]]  # name -> (day, value), oldest first
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, PAD = 660, 240, 48


def report_path(settings: Settings) -> Path:
    """Where the page is written."""
    return settings.paths.root / "report.html"


def _summaries(settings: Settings) -> list[dict[str, Any]]:
    from churnops.monitoring.drift import monitoring_dir

    return [json.loads(p.read_text()) for p in sorted(monitoring_dir(settings).glob("*/summary.json"))]


def _add(series: Series, name: str, day: str, value: Any) -> None:
    if value is not None and value == value:  # not None, not NaN
        series.setdefault(name, []).append((day, float(value)))


def collect(summaries: list[dict[str, Any]]) -> dict[str, Series]:
    """Every chart's series from the monitored days' summaries."""
    charts: dict[str, Series] = {
        "realized F1": {},
        "realized ROC AUC": {},
        "estimated F1 (CBPE)": {},
        "drift": {},
        "predictions": {},
        "latency (ms)": {},
        "error rate": {},
    }
    for body in summaries:
        day = body["day"]
        for group in (body.get("realized") or {}).get("groups", []):
            name = f"v{group['version']} {group['variant']}"
            _add(charts["realized F1"], name, day, group.get("f1"))
            _add(charts["realized ROC AUC"], name, day, group.get("roc_auc"))
        for est in body.get("estimated", []):
            _add(charts["estimated F1 (CBPE)"], f"v{est['version']} {est['variant']}", day, est.get("estimated_f1"))
        _add(charts["drift"], "share of features drifted", day, body.get("drifted_share"))
        _add(charts["drift"], "prediction drift", day, body.get("prediction_drift"))
        newcomers = body.get("newcomers") or {}
        _add(charts["drift"], "share of newcomers' features drifted", day, newcomers.get("drifted_share"))
        system = body.get("system") or {}
        for variant, count in (system.get("per_variant") or {}).items():
            _add(charts["predictions"], variant, day, count)
        _add(charts["latency (ms)"], "p50", day, system.get("latency_p50_ms"))
        _add(charts["latency (ms)"], "p99", day, system.get("latency_p99_ms"))
        _add(charts["error rate"], "refused / requests", day, system.get("error_rate"))
    return charts


def svg_chart(title: str, series: Series) -> str:
    """A line chart of the series over their days, with axes, ticks and a legend."""
    days = sorted({d for points in series.values() for d, _ in points})
    values = [v for points in series.values() for _, v in points]
    if not days or not values:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="none">no data yet</p></figure>'
    low, high = min(0.0, min(values)), max(values)
    high = high if high > low else low + 1.0
    first, span = date.fromisoformat(days[0]), max((date.fromisoformat(days[-1]) - date.fromisoformat(days[0])).days, 1)

    def x(day: str) -> float:
        return PAD + (WIDTH - 2 * PAD) * (date.fromisoformat(day) - first).days / span

    def y(value: float) -> float:
        return HEIGHT - PAD + (2 * PAD - HEIGHT) * (value - low) / (high - low)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#555"/>',
        f'<line x1="{PAD}" y1="{PAD / 2}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#555"/>',
    ]
    for k in range(5):
        value = low + (high - low) * k / 4
        label = f"{value:,.0f}" if abs(high) >= 100 else f"{value:.3g}"
        parts.append(
            f'<text x="{PAD - 4}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="10">{label}</text>'
            f'<line x1="{PAD}" y1="{y(value):.1f}" x2="{WIDTH - PAD}" y2="{y(value):.1f}" stroke="#eee"/>'
        )
    for day in (days[0], days[len(days) // 2], days[-1]):
        parts.append(f'<text x="{x(day):.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle" font-size="10">{day}</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in points)
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for d, v in points[-1:] if len(points) > 1 else points:
            parts.append(f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        parts.append(
            f'<rect x="{PAD + 8 + 150 * (i % 4)}" y="{6 + 14 * (i // 4)}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{PAD + 22 + 150 * (i % 4)}" y="{15 + 14 * (i // 4)}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"


def _runs(settings: Settings, registry: Any) -> list[tuple[str, str, str]]:
    """(version, aliases, MLflow UI link of its run) per registered version."""
    rows = []
    for record in registry.versions():
        try:
            experiment = registry.client.get_run(record["run_id"]).info.experiment_id
        except Exception:  # a run deleted by hand: list the version without its link
            experiment = None
        link = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{record['run_id']}" if experiment else ""
        rows.append((record["version"], ", ".join(record["aliases"]), link))
    return rows


def write_report(settings: Settings) -> Path:
    """Write the report page from the workspace's records; return its path."""
    from churnops.data.lake import write_local_atomic
    from churnops.jsonl import read_lines
    from churnops.pipelines.promotion import existing_registry

    summaries = _summaries(settings)
    charts = collect(summaries)
    registry = existing_registry(settings)
    moves = registry.history() if registry else []
    alerts = read_lines(Path(settings.alerts.file))
    runs = _runs(settings, registry) if registry else []
    name = escape(settings.mlflow.model_name)

    timeline = sorted(
        [
            (
                m.logical_date or m.at[:10],
                f"{m.alias} → v{m.version}" + (" (released)" if m.kind == "release" else ""),
                m.reason,
            )
            for m in moves
        ]
        + [
            (str(a.get("details", {}).get("day") or a.get("raised_at", "")[:10]), "alert", str(a.get("title", "")))
            for a in alerts
        ]
    )
    rows = "".join(
        f"<tr><td>{escape(day)}</td><td>{escape(what)}</td><td>{escape(why)}</td></tr>" for day, what, why in timeline
    )
    run_rows = "".join(
        f"<tr><td>v{escape(v)}</td><td>{escape(aliases)}</td><td>"
        + (f'<a href="{escape(link)}">MLflow run</a>' if link else "-")
        + "</td></tr>"
        for v, aliases, link in runs
    )
    days = "".join(
        f'<li><a href="monitoring/{escape(b["day"])}/report.html">{escape(b["day"])}</a></li>'
        for b in summaries
        if b.get("report")
    )
    figures = "".join(svg_chart(title, series) for title, series in charts.items())
    span = f", {escape(summaries[0]['day'])} to {escape(summaries[-1]['day'])}" if summaries else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>churnops report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1500px; }}
figure {{ display: inline-block; margin: 0 1.5em 1.5em 0; vertical-align: top; }}
figcaption {{ font-weight: 600; margin-bottom: .3em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
.none {{ color: #888; }}
</style></head><body>
<h1>churnops: {name}</h1>
<p>{len(summaries)} monitored day(s){span}.
Realized figures come once a prediction's {settings.training.horizon_days}-day horizon has passed; estimated
ones (CBPE) are estimates, made before the labels. Open the MLflow links with <code>churnops ui</code> running.</p>
<section id="charts">{figures}</section>
<h2>Alias moves and alerts</h2>
<table id="timeline"><tr><th>day</th><th>what</th><th>why</th></tr>{rows}</table>
<h2>Versions</h2>
<table id="versions"><tr><th>version</th><th>aliases</th><th>run</th></tr>{run_rows}</table>
<h2>Evidently reports</h2>
<ul id="reports">{days}</ul>
<p><a href="monitoring/index.html">every monitored day</a></p>
</body></html>
"""
    path = report_path(settings)
    write_local_atomic(str(path), page.encode())
    return path
