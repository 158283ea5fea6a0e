"""The `churnops` command line: one Typer app, each command a thin call into `pipelines`."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from churnops.alerts import SENT_LOGGER, alerted
from churnops.settings import ConfigError, Settings, load_settings
from churnops.workspace import BUSY_EXIT_CODE, WorkspaceBusyError, WorkspaceError

console = Console(soft_wrap=True)  # messages wrap in the terminal, never mid-value in a pipe
err_console = Console(stderr=True)

# Third-party loggers kept at ERROR unless -v: they announce migrations, deprecations, ibis
# and SQLAlchemy details that are not the user's business.
THIRD_PARTY_LOGGERS = ("mlflow", "alembic", "feast", "ibis", "sqlalchemy", "urllib3", "httpx", "py4j", "numexpr")


def unwrapped_help(text: str) -> str:
    """Help text whose paragraphs are each one line, for the terminal to wrap at its width.

    Typer keeps a docstring's line breaks inside a paragraph and rich then wraps each line
    again: at 80 columns every line broke in two. A paragraph with a list or indented lines
    (or starting with click's no-rewrap marker) keeps its breaks.
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        paragraph if _keeps_lines(paragraph) else " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in paragraphs
    )


def _keeps_lines(paragraph: str) -> bool:
    lines = paragraph.splitlines()
    return paragraph.startswith("\b") or any(
        line[:1].isspace() or line.lstrip().startswith(("- ", "* ", "|")) for line in lines
    )


def _unwrap_commands(command: Any) -> None:
    """`unwrapped_help` on a command's help and, for a group, on its commands' too; flags show
    no value type (Typer labels them `<bool>`), and a repeatable option names what it takes."""
    if command.help:
        command.help = unwrapped_help(command.help)
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif getattr(param, "multiple", False) and param.metavar is None:
            param.metavar = f"<{param.name}>"
    help_option = command.get_help_option

    def quiet_help_option(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = quiet_help_option
    for sub in getattr(command, "commands", {}).values():
        _unwrap_commands(sub)


class _Group(TyperGroup):
    """Accepts -v/--verbose after the command too, turns the errors every command can meet
    (bad configuration, a busy or unusable workspace) into one line and an exit status, and
    gives every help text paragraphs the terminal wraps (`unwrapped_help`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _unwrap_commands(self)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        flags = [a for a in args if a in ("-v", "--verbose")]
        rest = [a for a in args if a not in ("-v", "--verbose")]
        return super().parse_args(ctx, flags[:1] + rest)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            _print_error(str(exc))
            raise typer.Exit(2) from exc
        except WorkspaceBusyError as exc:
            _print_error(str(exc))
            raise typer.Exit(BUSY_EXIT_CODE) from exc
        except WorkspaceError as exc:
            _print_error(str(exc))
            raise typer.Exit(2) from exc


app = typer.Typer(
    name="churnops",
    cls=_Group,
    help=(
        "MLOps for customer-churn prediction.\n\n"
        "`churnops demo` shows the whole loop as a time-lapse on a simulated shop. `churnops run` does the "
        "daily pipeline (simulate -> ingest -> features -> train when due -> gate -> register -> staging -> "
        "production -> monitor) for one logical date. Step by step: `simulate` writes a simulated shop into "
        "the sources, "
        "`ingest` loads them into the raw lake, `features` computes and publishes features, `train` trains, "
        "gates and registers, `backtest` replays training as of a past date, `status` shows the workspace, "
        "`ui` opens MLflow's UI on it.\n\n"
        f"Exit status: 0 done, 1 the work failed (the message says why), 2 bad usage or configuration, "
        f"{BUSY_EXIT_CODE} the workspace is busy with another command."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML settings file (default: $CHURNOPS_CONFIG, then ./churnops.yaml if present).",
        show_default=False,
    ),
]
DateOption = Annotated[
    str | None,
    typer.Option(
        "--date",
        help="Logical date (YYYY-MM-DD): the run sees what was known before it. Default: the day after the "
        "newest order (the simulated shop: the day after its last published day).",
        show_default=False,
    ),
]


_given_config: list[Path] = []  # the --config of this command, which its next-step hints repeat


def _settings(config: Path | None) -> Settings:
    _given_config[:] = [config] if config is not None else []
    return load_settings(config)


def _parse_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        _print_error(f"{option} must be a date like 2025-01-31, got {value!r}")
        raise typer.Exit(2) from exc


def _progress_line(line: str) -> None:
    console.print(Text(f"  {line}"))


def _print_error(message: str) -> None:
    # Text, not markup: messages quote source rows, which may hold square brackets.
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _print_error(message)
    return typer.Exit(code)


def _next(message: str) -> None:
    """A dim hint of what to do next; its `churnops ...` commands take this command's --config."""
    if _given_config:
        option = f" -c {_given_config[0]}"
        message = re.sub(
            r"`(churnops [^`]*?)`",
            lambda m: f"`{m.group(1)}{option}`" if " -c " not in m.group(1) else m.group(0),
            message,
        )
    console.print(Text(f"next: {message}", style="dim"))


def _table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[bool],
    whole: Sequence[bool] | None = None,
) -> Table:
    """A compact table that fits 80 columns: numbers (and `whole` columns) are never cut or
    wrapped; other text wraps."""
    table = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False, title_justify="left"
    )
    for i, header in enumerate(headers):
        cells = [str(r[i]) for r in rows]
        if numeric[i] or (whole is not None and whole[i]):
            width = max([len(c) for c in cells] + [1])
            table.add_column(header, justify="right" if numeric[i] else "left", no_wrap=True, min_width=width)
        else:
            table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    return table


def _configure_output(verbose: bool) -> None:
    """Quiet by default: our own warnings and errors only; -v shows INFO lines and what the
    libraries say (their warnings, MLflow's migrations and progress bars)."""
    level = logging.INFO if verbose else logging.WARNING
    layout = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=layout, force=True)
    # Libraries reset the warning filters when imported (Feast asks for every deprecation
    # "once"), so warnings go through logging, where the level decides.
    logging.captureWarnings(True)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if verbose else "false")
    if not verbose:
        warnings.filterwarnings("ignore")
        for name in (*THIRD_PARTY_LOGGERS, "py.warnings"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # each step prints an alert's substance and where it went; the log's copy would repeat it
        logging.getLogger(SENT_LOGGER).setLevel(logging.CRITICAL)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"churnops {version('churnops')}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show progress details and third-party output.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _configure_output(verbose)


# --- simulate ------------------------------------------------------------------------------


@app.command()
def simulate(
    config: ConfigOption = None,
    until: Annotated[
        str | None,
        typer.Option(help="Publish up to this day (YYYY-MM-DD, inclusive). Default: the horizon's end."),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(help="Also append new orders to the Redis stream at this URL (redis://host:port/db)."),
    ] = None,
) -> None:
    """Simulate the shop and write it into the sources (SQL customers, CSV products, daily order files).

    Deterministic for a seed: advancing day by day with --until gives the same data as
    jumping straight to the end. Configure size, horizon and drift scenarios under
    `simulation:` in the YAML file.
    """
    from churnops.pipelines.simulate import SimulationError
    from churnops.pipelines.simulate import simulate as run_simulation

    settings = _settings(config)
    target = _parse_day(until, "--until")
    with console.status(f"simulating {settings.simulation.customers:,} customers ..."):
        try:
            report = run_simulation(settings, target, stream_url=stream)
        except SimulationError as exc:
            raise _fail(str(exc)) from exc
    span = f"{report.since} .. {report.until}" if report.since else f"up to {report.until}"
    console.print(
        f"published {span}: {report.customers_upserted:,} customers upserted, "
        f"{report.orders_written:,} orders in {report.order_files:,} daily files"
        + (f", {report.stream_entries:,} stream entries" if stream else "")
    )
    day_after = date.fromisoformat(str(report.until)) + timedelta(days=1)  # a date ingests the orders before it
    _next(f"`churnops ingest --date {day_after}` loads them into the raw lake")


@app.command("serve-orders-api")
def serve_orders_api(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8085,
) -> None:
    """Serve the simulated orders published so far as a paginated JSON API (GET /orders).

    Point an `http` source at http://HOST:PORT/orders with `watermark: ordered_at`.
    """
    from churnops.pipelines.simulate import SimulationError, orders_api

    settings = _settings(config)
    try:
        api = orders_api(settings, host, port)
    except SimulationError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"serving {len(api.records):,} orders at {api.url} (Ctrl-C stops)")
    try:
        api.server.serve_forever()
    except KeyboardInterrupt:
        api.server.server_close()


# --- the steps -----------------------------------------------------------------------------


def _show_ingest(result: Any) -> None:
    rows = [
        [
            r["source"],
            r["table"],
            r["status"],
            f"{r['rows_read']:,}",
            f"{r['rows_accepted']:,}",
            f"{r['rows_quarantined']:,}",
            f"{r['files_quarantined']:,}",
        ]
        for r in result.sources
    ]
    console.print(
        _table(
            f"ingest {result.date}",
            ["source", "table", "status", "read", "accepted", "bad rows", "bad files"],
            rows,
            [False, False, False, True, True, True, True],
        )
    )
    for r in result.sources:
        if r["reasons"]:
            reasons = ", ".join(f"{k}: {v:,}" for k, v in r["reasons"].items())
            console.print(Text(f"  quarantined from {r['source']}: {reasons}"))
        if r.get("warning"):
            console.print(Text(f"  {r['source']}: {r['warning']}", style="yellow"))
        if r.get("rows_later"):
            later = f"  {r['rows_later']:,} row(s) of {r['source']} are from {result.date} on: a later date reads them"
            console.print(Text(later))
    if any(r["reasons"] and r["status"] == "published" for r in result.sources):
        _next(f"`churnops quarantine --date {result.date}` shows each row, its file and why")
    elif any(r["reasons"] for r in result.sources):  # the same rows as before, kept under an earlier date
        _next("`churnops quarantine` shows each row, its file and why")


def _show_features(report: Any) -> None:
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    console.print(
        f"features: {len(report.snapshots)} snapshot(s) {report.snapshots[0]} .. {report.snapshots[-1]}, "
        f"{report.rows:,} rows, content hash {report.content_hash[:12]} ({timings}); {report.online}"
    )


def _interval(first: str | None, last: str | None) -> str:
    """An ISO 8601 interval of days (one day alone when they are equal; "-" when unknown)."""
    if not first or not last:
        return "-"
    return first if first == last else f"{first}/{last}"


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # NaN
        return "-"
    return f"{value:.{digits}f}"


def _show_train(result: Any) -> None:
    rows = []
    for c in result.candidates:
        mark = " *" if c.name == result.challenger else ""
        h = c.holdout
        rows.append(
            [
                c.name + mark,
                _f(h.get("f1")),
                _f(h.get("precision")),
                _f(h.get("recall")),
                _f(h.get("roc_auc")),
                _f(h.get("pr_auc")),
                f"{_f(c.cv_f1_mean)}±{_f(c.cv_f1_std)}",
                _f(c.threshold),
            ]
        )
    b = result.baselines
    rows.append(
        [
            "everyone churns",
            _f(b.get("everyone_churns_f1")),
            _f(b.get("everyone_churns_precision")),
            _f(b.get("everyone_churns_recall")),
            "-",
            "-",
            "-",
            "-",
        ]
    )
    rows.append(["recency score", "-", "-", "-", _f(b.get("recency_roc_auc")), _f(b.get("recency_pr_auc")), "-", "-"])
    total = sum(result.rows.values())
    reused = "; unchanged inputs: reused" if result.reused else ""
    console.print(
        _table(
            f"candidates on the holdout ({result.rows['holdout']:,} of {total:,} rows){reused}",
            ["model", "F1", "prec", "rec", "AUC", "PR-AUC", "CV F1", "thr"],
            rows,
            [False, *[True] * 7],
        )
    )
    console.print(
        Text(
            "* the challenger (best on validation data by training.selection_metric); prec/rec: precision and "
            "recall, AUC: ROC AUC, PR-AUC: average precision, CV F1: mean±std over folds grouped by customer, at "
            "thr, the decision threshold (chosen on validation data)",
            style="dim",
        )
    )


def _show_gate(verdict: Any) -> None:
    gate = verdict.gate
    headline = "gate passed" if gate.passed else "gate FAILED"
    console.print(f"{headline} ({gate.confidence:.0%} paired bootstrap, {gate.rounds} rounds):")
    for condition in gate.conditions:
        console.print(Text(f"  {condition.describe(gate.confidence)}"))


def _show_register(result: Any, settings: Settings) -> None:
    what = "already registered as" if result.reused else "registered"
    champion = " and champion (the first model)" if result.promoted_to_champion else ""
    console.print(
        f"{what} {settings.mlflow.model_name} version {result.version} as challenger{champion}, "
        f"feature service {result.feature_service}"
    )
    for version in result.removed_incomplete:
        console.print(Text(f"  removed half-recorded version {version}"))


def _show_step(step: Any, result: Any, settings: Settings) -> None:
    from churnops.monitoring.decide import Decision
    from churnops.monitoring.drift import Monitored
    from churnops.pipelines.features import FeatureReport, FeaturesChecked
    from churnops.pipelines.promotion import GateNotice, GateVerdict, Registered
    from churnops.pipelines.steps import Ingested, Simulated, TrainingDue
    from churnops.pipelines.train import TrainResult
    from churnops.serving.deploy import IntegrationTested, Production, Staged

    if result is None:
        console.print(Text(f"{step.name}: skipped (its condition did not hold)", style="dim"))
    elif isinstance(result, TrainingDue):
        console.print(Text(f"due: {'train' if result.due else 'no training'}: {result.reason}", style="dim"))
    elif isinstance(result, Simulated):
        console.print(
            f"simulate: {result.skipped}"
            if result.skipped
            else f"published {result.orders_written:,} orders up to {result.until}"
        )
    elif isinstance(result, Ingested):
        _show_ingest(result)
    elif isinstance(result, FeatureReport):
        _show_features(result)
    elif isinstance(result, FeaturesChecked):
        console.print(
            Text(f"validate: snapshot {result.snapshot}, {result.rows:,} rows as committed and valid; {result.online}")
        )
    elif isinstance(result, TrainResult):
        _show_train(result)
    elif isinstance(result, GateVerdict):
        _show_gate(result)
    elif isinstance(result, GateNotice):  # the step said whether and where the team was alerted
        console.print(Text("notify: nothing registered"))
    elif isinstance(result, Registered):
        _show_register(result, settings)
    elif isinstance(result, IntegrationTested):
        _show_staged(result, settings)
    elif isinstance(result, Staged):
        if result.skipped:
            console.print(Text(f"staging: {result.skipped}", style="dim"))
        else:
            console.print(f"staging: version {result.version} on {result.url}")
    elif isinstance(result, Production):
        _show_production(result)
    elif isinstance(result, Monitored):
        _show_monitored(result, settings)
    elif isinstance(result, Decision):
        _show_decision(result.day, result.as_dict(), settings)


def _show_decision(day: str, decision: dict[str, Any], settings: Settings) -> None:
    for condition, since in decision.get("alarms", {}).items():
        console.print(f"monitor {day}: ALARM {condition} (since {since})")
    if decision.get("raised"):
        console.print(Text(f"monitor {day}: {alerted(settings.alerts)}"))
    if decision.get("reason"):
        console.print(f"monitor {day}: {decision['reason']}")


def _show_monitored(result: Any, settings: Settings) -> None:
    _show_realized(result.realized)
    target = result.target_drift or {}
    if target:
        console.print(
            f"target drift: churn rate {target['churn_rate']:.1%} over {target['labelled']:,} labelled predictions "
            f"against {target['reference_churn_rate']:.1%} in the champion's holdout, Cohen's h "
            f"{target['cohens_h']:+.3f}" + (" (DRIFT)" if target["drifted"] else "")
        )
    _show_decision(result.day, result.decision or {}, settings)
    system = result.system or {}
    if system.get("requests"):
        console.print(
            Text(
                f"monitor {result.day}: {system['requests']:,} requests, latency p50 "
                f"{_f(system.get('latency_p50_ms'))} ms, p99 {_f(system.get('latency_p99_ms'))} ms, "
                f"error rate {system['error_rate']:.2%}",
                style="dim",
            )
        )
    if result.skipped:
        console.print(Text(f"monitor {result.day}: {result.skipped}", style="dim"))
        return
    verdict = "DATA DRIFT" if result.dataset_drift else "no data drift"
    drifted = f": {', '.join(result.drifted_features)}" if result.drifted_features else ""
    console.print(
        f"monitor {result.day}: {verdict} ({len(result.drifted_features)} of {len(result.distances)} features"
        f"{drifted}), prediction drift {_f(result.prediction_drift)}, {result.predictions:,} predictions "
        f"({result.sampled:,} compared)"
    )
    console.print(Text(f"  report: {result.report}"))
    newcomers = result.newcomers or {}
    if newcomers.get("skipped"):
        console.print(Text(f"  newcomers: {newcomers['skipped']}", style="dim"))
    elif newcomers:
        console.print(
            Text(
                f"  newcomers ({newcomers['current']:,} over {' to '.join(newcomers['window'])}): "
                + ("DATA DRIFT" if newcomers["dataset_drift"] else "no data drift")
                + f" ({len(newcomers['drifted_features'])} of {len(newcomers['distances'])} features); "
                f"report: {newcomers.get('report', '')}"
            )
        )
    for est in result.estimated:
        console.print(
            Text(
                f"  estimated (CBPE, before labels) v{est['version']} {est['variant']}: F1 {_f(est['estimated_f1'])}, "
                f"precision {_f(est['estimated_precision'])}, recall {_f(est['estimated_recall'])} "
                f"over {est['predictions']:,} predictions"
            )
        )


def _show_staged(result: Any, settings: Settings) -> None:
    if result.skipped:
        console.print(Text(f"staging: {result.skipped}", style="dim"))
        return
    for check in result.checks:
        mark = "passed" if check["passed"] else "FAILED"
        console.print(Text(f"  integration test {check['name']}: {mark}: {check['detail']}"))
    verdict = "passed its integration tests" if result.passed else "FAILED its integration tests; it goes no further"
    console.print(f"staging: version {result.version} on {result.url} {verdict}")
    if not result.passed:  # the alert is sent once per version and date; a rerun repeats this line
        console.print(Text(f"staging: {alerted(settings.alerts)} (once per failure)"))


def _show_production(result: Any) -> None:
    ab = result.ab or {}
    if ab.get("challenger"):
        console.print(
            f"A/B test of version {ab['challenger']} against {ab['champion']}: {ab['status']}: {ab['reason']}"
        )
    if result.skipped:
        console.print(Text(f"production: {result.skipped}", style="dim"))
        return
    ab = (
        f", A/B ({result.mode}) against version {result.challenger} for {result.weight:.0%} of customers"
        if result.challenger
        else ""
    )
    promoted = " (promoted now)" if result.promoted else ""
    console.print(f"production: version {result.champion}{promoted} on {result.url}{ab}")
    if result.note:
        console.print(Text(f"  {result.note}", style="yellow"))


def _step_errors() -> tuple[type[Exception], ...]:
    """What a step raises when the work fails for a reason its message explains."""
    from churnops.data.validation import BatchRejectedError
    from churnops.features.validation import FeatureValidationError
    from churnops.monitoring.drift import MonitoringError
    from churnops.pipelines.features import FeatureBuildError
    from churnops.pipelines.ingest import IngestError
    from churnops.pipelines.replay import ReplayPendingError
    from churnops.pipelines.simulate import SimulationError
    from churnops.pipelines.train import TrainingError
    from churnops.registry.mlflow_registry import RegistryError
    from churnops.serving.deploy import DeployError

    return (
        ReplayPendingError,
        SimulationError,
        IngestError,
        BatchRejectedError,
        FeatureBuildError,
        FeatureValidationError,
        TrainingError,
        RegistryError,
        DeployError,
        MonitoringError,
    )


def _run_steps(
    settings: Settings, day: date, only: Sequence[str] | None, resume_from: str | None = None, replay: bool = True
) -> Any:
    from churnops.pipelines.steps import StepsError, run_steps

    running: list[str] = []
    days = [day]  # the date running now: later dates run again after it

    def on_step(step: Any, result: Any, seconds: float) -> None:
        _show_step(step, result, settings)

    def on_replay(again: date) -> None:
        days.append(again)
        console.rule(f"churnops run {again} (again, after {day})")

    try:
        return run_steps(
            settings,
            day,
            only=only,
            progress=_progress_line,
            on_step=on_step,
            on_start=lambda step: running.append(step.name),
            resume_from=resume_from,
            replay=replay,
            on_replay=on_replay,
        )
    except StepsError as exc:
        raise _fail(str(exc), 2) from exc
    except _step_errors() as exc:
        resume = f"`churnops run --date {days[-1]} --from {running[-1]}`"
        raise _fail(f"{exc}\n(once fixed, {resume} resumes there)" if running else str(exc)) from exc


@app.command()
def ingest(
    config: ConfigOption = None,
    date_: DateOption = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="Ingest only this source (repeatable). Default: all enabled."),
    ] = None,
) -> None:
    """Load every enabled source into the raw lake, validating and quarantining bad rows and files.

    The logical date names the partition written (a rerun of the date replaces it, never
    duplicates). It takes the orders dated before the date that no earlier date took; later
    orders wait for a later date (the table says how many rows wait). Exit status 1 when a batch
    is rejected (missing required column, too many bad rows, a volume drop); the message says
    which source and why, and nothing of it is published.
    """
    from churnops.pipelines.ingest import IngestError, default_ingest_date
    from churnops.pipelines.ingest import ingest as run_ingest
    from churnops.pipelines.steps import Ingested

    settings = _settings(config)
    try:
        day = _parse_day(date_, "--date") or default_ingest_date(settings)
        reports = run_ingest(settings, day, only=source)
    except IngestError as exc:
        raise _fail(str(exc)) from exc
    _show_ingest(Ingested(day.isoformat(), [r.__dict__ for r in reports]))
    if any(r.status == "published" for r in reports):
        _next(f"`churnops features --as-of {day}` computes features from it; `churnops status` shows the lake")
    elif any(r.warning for r in reports):
        _next("check the source path named above (relative paths are read from here); `churnops status` shows the lake")
    else:
        _next("nothing new was published; `churnops status` shows the lake")


@app.command()
def features(
    config: ConfigOption = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Logical date: the latest snapshot (features as of 00:00 that day). Default: the day after the "
            "last order.",
        ),
    ] = None,
    latest_only: Annotated[
        bool,
        typer.Option("--latest-only", help="Compute only the latest snapshot (for serving), not the history."),
    ] = False,
    no_feast: Annotated[bool, typer.Option("--no-feast", help="Skip Feast apply and materialization.")] = False,
) -> None:
    """Compute customer features from the raw lake, validate them, and publish them to Feast.

    Snapshots go back from --as-of every `features.cadence_days` (weekly by default) while
    orders precede them; each sees only orders strictly before it. A rerun replaces the
    snapshots it computes. The online store receives the table's newest snapshot; a backfill
    of older dates leaves it alone.
    """
    from churnops.features.validation import FeatureValidationError
    from churnops.pipelines.features import FeatureBuildError, build_features

    settings = _settings(config)
    day = _parse_day(as_of, "--as-of")
    try:
        report = build_features(
            settings, day, history=not latest_only, publish_to_feast=not no_feast, progress=_progress_line
        )
    except (FeatureBuildError, FeatureValidationError) as exc:
        raise _fail(str(exc)) from exc
    _show_features(report)
    _next("`churnops train` trains on them; `feast plan` in the workspace's feature_repo/ shows the Feast objects")


@app.command()
def train(config: ConfigOption = None, date_: DateOption = None) -> None:
    """Train the candidates, gate the challenger, register it: the steps train, gate and register.

    Labels: churned = no order in [snapshot, snapshot + training.horizon_days); only snapshots
    whose window closes before the logical date are used, split by time with a horizon between
    fit, validation and holdout. Every candidate is an MLflow run, shown beside the baselines
    "everyone churns" and the recency score. The gate passes the challenger only if, on the
    holdout, its F1 reaches gate.min_f1 and beats "everyone churns" by gate.min_lift_f1, its
    ROC AUC beats the recency score by gate.min_lift_auc, and it is not worse than the champion
    (each by the lower bound of a paired bootstrap). A pass registers a version with the alias
    `challenger` (and `champion` if there is none yet); a failure registers nothing, alerts the
    team once and exits with status 1. Unchanged inputs reuse the earlier training.
    """
    from churnops.pipelines.promotion import GateVerdict, Registered
    from churnops.pipelines.train import default_logical_date

    settings = _settings(config)
    from churnops.pipelines.train import TrainingError

    try:
        day = _parse_day(date_, "--date") or default_logical_date(settings)
    except TrainingError as exc:
        raise _fail(str(exc)) from exc
    results = _run_steps(settings, day, ("train", "gate", "notify", "register"))
    verdict = results.get(GateVerdict)
    if not verdict.passed:
        raise _fail("the challenger failed the gate; nothing was registered")
    registered = results.get(Registered)
    _next(f"`churnops registry promote --to staging` stages version {registered.version}; `churnops ui` shows the runs")


@app.command()
def run(
    config: ConfigOption = None,
    date_: DateOption = None,
    resume_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Resume at this step (after a failure): the steps before it are not run again, the results "
            "they kept for the date stand in.",
        ),
    ] = None,
    replay: Annotated[
        bool,
        typer.Option(
            "--replay/--no-replay",
            help="When later dates have run already: rewind the registry and run them again after this date "
            "(default), or run this date alone on top of what they decided.",
        ),
    ] = True,
) -> None:
    """Run the daily pipeline for one logical date: simulate (if the sources are the simulated shop),
    ingest, features, validate, training when due, gate, register, staging, integration tests,
    production, monitor, trigger.

    The steps are the declared list in `churnops.pipelines.steps`, the same one the Airflow DAG
    is built from. Training runs when there is no champion yet or monitoring triggered a retrain;
    the production step decides a running A/B test. The run stops at the first failing step
    (exit 1). A challenger the gate or staging refuses is no failure of the day: the team is
    alerted, the champion keeps serving, monitoring runs, and the exit status is 0, as an
    Airflow run of the day ends in success.

    When later dates have run already (a date run out of order, or an older one again), the
    registry is first rewound to the day before this date, and after it the later dates run
    again in date order: the end state is what running the dates in order leaves
    (`--no-replay` runs this date alone).
    """
    from churnops.pipelines.ingest import IngestError
    from churnops.pipelines.promotion import GateVerdict, existing_registry
    from churnops.pipelines.steps import StepsError, default_run_date, step_named

    settings = _settings(config)
    try:
        if resume_from is not None:
            step_named(resume_from)  # a misspelt step is a usage error before anything runs
    except StepsError as exc:
        raise _fail(str(exc), 2) from exc
    try:
        day = _parse_day(date_, "--date") or default_run_date(settings)
    except IngestError as exc:
        raise _fail(str(exc)) from exc
    console.rule(f"churnops run {day}")
    if not replay:  # alone, but not on a registry rewound for dates still owed
        from churnops.pipelines.replay import ReplayPendingError, check_pending

        try:
            check_pending(settings, day)
        except ReplayPendingError as exc:
            raise _fail(str(exc)) from exc
    results = _run_steps(settings, day, None, resume_from, replay)
    verdict = results.find(GateVerdict)
    refused = ""
    if verdict is not None and not verdict.passed:
        refused = "the challenger failed the gate; nothing was registered (see the conditions above)"
    registry = existing_registry(settings)
    champion = registry.holder("champion") if registry else None
    console.rule("done")
    console.print(f"champion: {settings.mlflow.model_name} version {champion or '(none yet)'}")
    from churnops.serving.deploy import IntegrationTested

    staged = results.find(IntegrationTested)
    if staged is not None and staged.version and not staged.skipped and not staged.passed:
        refused = f"version {staged.version} failed its integration tests on staging; it goes no further"
    if refused:
        console.print(Text(f"refused: {refused}; the team was alerted", style="bold yellow"))
    if settings.deploy.servers and champion:
        _next("`churnops deploy status` shows the servers, `churnops deploy stop` stops them")
    _next("`churnops status` shows the workspace; `churnops ui` opens MLflow's UI on it (http://127.0.0.1:5000)")


def _scenarios(settings: Settings) -> str:
    described = []
    for scenario in settings.simulation.scenarios:
        what = {
            "price_shift": f"prices x{1 + scenario.magnitude:g}",
            "new_segment": "a new customer segment",
            "concept_drift": "high spenders leave",
        }[scenario.kind]
        described.append(f"{what} from {scenario.start}")
    return ", ".join(described) or "none"


@app.command()
def demo(
    config: ConfigOption = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Simulated days in the time-lapse.")] = 46,
    drift_after: Annotated[
        int, typer.Option("--drift-after", min=0, help="Days into the time-lapse when prices double (the drift).")
    ] = 2,
    traffic: Annotated[int, typer.Option("--traffic", min=1, help="Customers scored per simulated day.")] = 1500,
    restart: Annotated[bool, typer.Option("--restart", help="Remove the demo's workspace and begin again.")] = False,
    stop: Annotated[
        bool, typer.Option("--stop/--keep-serving", help="Stop the servers at the end, or leave them answering.")
    ] = False,
) -> None:
    """A time-lapse of the whole loop on a simulated shop, with drift injected part-way.

    Each simulated day the shop's orders arrive in the sources, the daily steps run (ingest,
    features and the online store, training when due or triggered, staging, the A/B decision,
    production, monitoring), and the production server answers that day's prediction traffic
    over HTTP. Labels arrive as each prediction's four-week horizon passes. Watch for: the first
    model promoted, drift detected after prices double, a retrain, an A/B test decided, the new
    champion serving. About 10 s per simulated day (the first, which trains, 30 s): under ten
    minutes in all. The servers listen on serving.port (8000) and deploy.staging_port (8001).

    The demo's shop and thresholds replace the defaults (a config file still wins); they are
    written to <workspace>/demo.yaml for other commands (`-c`). Each step's output goes to
    <workspace>/demo.log. A rerun carries on after the last finished day.
    """
    from churnops.demo_view import DemoView, milestone_lines
    from churnops.pipelines.demo import Demo, DemoError, DemoPlan, demo_settings
    from churnops.serving.deploy import stop_server

    began = time.perf_counter()
    plan = DemoPlan(days=days, drift_after=drift_after, traffic=traffic)
    settings = demo_settings(config, plan)
    runner = Demo(settings, plan)
    try:
        done = set(runner.prepare(restart))
    except DemoError as exc:
        raise _fail(str(exc), 2) from exc
    todo = [d for d in runner.days() if d.isoformat() not in done]
    console.print(
        f"churnops demo: {plan.days} simulated days from {plan.first_day}; drift: {_scenarios(settings)}; "
        f"workspace {settings.paths.root}" + (f" (carrying on: {len(done)} day(s) done)" if done else "")
    )
    # Step output and log lines go to the demo's log; the view shows what they amount to.
    root_logger = logging.getLogger()
    saved_handlers = root_logger.handlers[:]
    handler = logging.FileHandler(runner.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger.handlers = [handler]
    try:
        with DemoView(console, plan.days) as view:
            for day in todo:
                label = day.isoformat()

                def started(name: str, label: str = label) -> None:
                    view.step(label, name)

                view.day_done(runner.run_day(day, on_step=started))
    except _step_errors() as exc:
        raise _fail(f"{exc}\n(see {runner.log_path}; rerun `churnops demo` to carry on from that day)") from exc
    finally:
        root_logger.handlers = saved_handlers
        handler.close()
        if stop:
            for env in ("staging", "production"):
                stop_server(settings, env)
    from churnops.monitoring.report import write_report

    page = write_report(settings)
    console.rule("the loop")
    for reached, line in milestone_lines(runner.reached()):
        console.print(Text(("  reached  " if reached else "  MISSING  ") + line, style="" if reached else "bold"))
    minutes, seconds = divmod(int(time.perf_counter() - began), 60)
    console.print(f"{len(todo)} simulated day(s) in {minutes} min {seconds:02d} s; the report: {page}")
    _next(
        f"open {page} in a browser; `churnops ui -c {runner.config_path}` opens MLflow's UI on the demo's runs "
        "(the report links to them)"
        + ("" if stop else f"; `churnops deploy stop all -c {runner.config_path}` stops the servers")
    )


@app.command()
def report(config: ConfigOption = None) -> None:
    """Write <workspace>/report.html: realized and estimated F1 and AUC over time per version, drift,
    traffic, latency and error rate, alias moves and alerts, links to the Evidently reports and
    MLflow runs (from what monitoring and the registry recorded)."""
    from churnops.monitoring.report import write_report

    settings = _settings(config)
    page = write_report(settings)
    console.print(f"wrote {page}")
    _next("open it in a browser; `churnops ui` serves the MLflow runs it links to")


@app.command()
def lineage(
    version: Annotated[
        str | None, typer.Argument(help="A registry version of the model (see `churnops registry list`).")
    ] = None,
    prediction: Annotated[
        str | None,
        typer.Option("--prediction", help="A logged prediction's request_id (`<request>-<index>`): start from it."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Trace a model version, or one logged prediction, back to the raw data.

    Prints the chain as recorded: the prediction (its variant, the feature values used and the
    feature snapshot that holds exactly them), the version with its aliases and every alias
    move, the MLflow run, the feature-table hash of the snapshots it trained on, and each raw
    partition with its content hash, checked against the lake today (same, changed or gone).
    """
    from churnops.pipelines.lineage import LineageError, model_lineage, prediction_lineage

    if (version is None) == (prediction is None):
        raise _fail(
            "give a model version (`churnops lineage 3`) or `--prediction REQUEST_ID`"
            + (", not both" if version is not None else ""),
            2,
        )
    settings = _settings(config)
    try:
        chain = prediction_lineage(settings, prediction) if prediction else model_lineage(settings, str(version))
    except LineageError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps(chain.as_dict(), indent=2, default=str))
        return
    _show_lineage(chain)


def _show_lineage(chain: Any) -> None:
    if chain.prediction:
        p = chain.prediction
        served = (
            f"feature snapshot {p['served_snapshot']}" if p["served_snapshot"] else "features sent with the request"
        )
        who = f"customer {p['customer_id']}" if p["customer_id"] is not None else "a feature vector"
        console.print(
            f"prediction {p['request_id']} at {p['ts']}: {who}, variant {p['variant']}, "
            f"probability {p['probability']:.4f}, label {p['label']}"
        )
        console.print(Text(f"  features: {served} ({len(p['features'])} values logged)"))
        for other in p.get("may_have_been", []):
            console.print(
                Text(
                    f"  note: a rewind on {other['rewound_at'][:19]} removed an earlier version {other['version']} "
                    f"(run {other['run_id']}, trained for {other['logical_date']}); the servers' clock is the "
                    "logical date's, so the log cannot tell which of the two served this prediction"
                )
            )
    aliases = ", ".join(chain.aliases) or "no alias now"
    console.print(f"{chain.model} version {chain.version} ({aliases}), trained for {chain.logical_date}")
    for move in chain.alias_moves:
        who = f" {move['alias']} by {move['actor']}" if move["alias"] else ""
        console.print(Text(f"  {move['at']}  {move['kind']}{who}: {move['reason']}"))
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(chain.holdout.items()) if k in ("f1", "roc_auc"))
    console.print(f"MLflow run {chain.run_id} ({chain.candidate}; holdout {metrics or 'not recorded'})")
    console.print(Text(f"  model files sha256 {chain.model_sha256 or 'not recorded'}"))
    parts = chain.snapshots
    spans = ", ".join(f"{name} {v[0]}..{v[-1]} ({len(v)})" for name, v in parts.items() if v)
    console.print(f"feature table sha256 {chain.feature_table_hash} ({spans}); feature service {chain.feature_service}")
    console.print(f"raw partitions ({len(chain.raw_partitions)}):")
    for part in chain.raw_partitions:
        flag = "" if part.now == "same" else f"  ({part.now.upper()} in the lake since)"
        console.print(
            Text(f"  {part.table}/ingest_date={part.ingest_date}  {part.rows:,} rows  sha256 {part.sha256}{flag}")
        )


@app.command()
def backtest(
    cutoff: Annotated[
        list[str],
        typer.Option("--cutoff", help="Date D to replay training as of (repeatable: a rolling-origin evaluation)."),
    ],
    config: ConfigOption = None,
) -> None:
    """What if we had deployed on date D? Train with only what was known before D, score every
    customer at D, and judge against what happened in [D, D + horizon), beside the baselines.

    Writes <workspace>/backtests/<D>.json. Runs go to the MLflow experiment
    `mlflow.backtest_experiment`; nothing is registered, no alias moves, the online store and
    the Feast registry are left alone.
    """
    from churnops.features.validation import FeatureValidationError
    from churnops.pipelines.backtest import backtest as run_backtest
    from churnops.pipelines.train import TrainingError

    settings = _settings(config)
    days = sorted({d for d in (_parse_day(c, "--cutoff") for c in cutoff) if d is not None})
    results = []
    for day in days:
        console.rule(f"backtest {day}")
        try:
            results.append(run_backtest(settings, day, progress=_progress_line).result)
        except (TrainingError, FeatureValidationError) as exc:
            raise _fail(f"backtest at {day}: {exc}") from exc
    rows = []
    for result in results:
        everyone = result.baselines["everyone_churns"]
        recency = result.baselines["recency"]
        for name, m in result.models.items():
            mark = " *" if name == result.best else ""
            rows.append([result.cutoff, name + mark, _f(m["f1"]), _f(m["roc_auc"]), _f(m["pr_auc"]), _f(m["brier"])])
        rows.append([result.cutoff, "everyone churns", _f(everyone["f1"]), "-", "-", "-"])
        rows.append([result.cutoff, "recency score", "-", _f(recency["roc_auc"]), _f(recency["pr_auc"]), "-"])
    console.print(
        _table(
            f"backtests (horizon {settings.training.horizon_days} days)",
            ["cutoff", "model", "F1", "ROC AUC", "PR AUC", "Brier"],
            rows,
            [False, False, True, True, True, True],
        )
    )
    console.print(
        Text("* what the training stage would have picked (by validation data, not this result)", style="dim")
    )
    for result in results:
        console.print(
            Text(f"{result.cutoff}: {result.customers:,} customers, churn rate {result.churn_rate:.1%}", style="dim")
        )
    _next(f"results are in {settings.paths.backtests}/; `churnops ui` shows the runs")


# --- registry ------------------------------------------------------------------------------

registry_app = typer.Typer(
    help="Model versions and their aliases (challenger -> staging -> champion).", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")


def _open_registry(settings: Settings) -> Any:
    from churnops.pipelines.promotion import existing_registry

    return existing_registry(settings)


@registry_app.command("list")
def registry_list(config: ConfigOption = None) -> None:
    """List the registered model's versions: aliases, candidate, holdout F1, the logical date it
    was trained for, its MLflow run; a version that failed its integration tests on staging says so."""
    settings = _settings(config)
    registry = _open_registry(settings)
    versions = registry.versions() if registry else []
    if not versions:
        console.print(f"no versions of {settings.mlflow.model_name} yet")
        _next("`churnops train` (or `churnops run`) trains and registers one")
        return
    from churnops.registry.mlflow_registry import holdout_metrics
    from churnops.serving.deploy import INTEGRATION_PASSED

    rows = []
    for v in versions:
        complete = v["tags"].get("churnops.complete") == "true"
        failed = v["tags"].get(INTEGRATION_PASSED) == "false"
        holdout = holdout_metrics(v["tags"])
        rows.append(
            [
                v["version"],
                ", ".join(v["aliases"])
                + ("" if complete else " (incomplete)")
                + (" (failed staging)" if failed else ""),
                v["tags"].get("candidate", ""),
                _f(holdout.get("f1")),
                v["tags"].get("logical_date", ""),
                v["run_id"][:8],
            ]
        )
    console.print(
        _table(
            registry.model_name,
            ["version", "aliases", "candidate", "F1", "as of", "run"],
            rows,
            [True, False, False, True, False, False],
            whole=[False, False, True, False, True, True],  # names, dates and ids are not cut
        )
    )


@registry_app.command("history")
def registry_history(
    config: ConfigOption = None,
    alias: Annotated[str | None, typer.Option(help="Only moves of this alias.")] = None,
) -> None:
    """Every alias move: when (and for which logical date, when the pipeline made it), which alias,
    from which version to which, who and why."""
    settings = _settings(config)
    registry = _open_registry(settings)
    moves = registry.history(alias) if registry else []
    if not moves:
        console.print("no alias moves yet")
        return
    headers = ["at (UTC)", "for", "alias", "to", "from", "actor", "reason", "F1"]
    numeric = [False, False, False, True, True, False, False, True]
    whole = [True, True, False, False, False, False, False, False]
    rows = [
        [
            m.at[:16].replace("T", " "),
            m.logical_date or "-",
            m.alias,
            m.version,
            m.previous or "",
            m.actor,
            m.reason,
            _f(m.metrics.get("f1")),
        ]
        for m in moves
    ]
    actors = sorted({m.actor for m in moves})
    by = ""
    if len(actors) == 1:  # named once, in the title, and the reasons get the column's width
        by = f"; all by {actors[0]}"
        keep = [i for i, header in enumerate(headers) if header != "actor"]
        headers, numeric, whole = [headers[i] for i in keep], [numeric[i] for i in keep], [whole[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    console.print(
        _table(
            f"alias history of {registry.model_name} (for: the logical date a step moved it for; - by hand{by})",
            headers,
            rows,
            numeric,
            whole=whole,
        )
    )


@registry_app.command("promote")
def registry_promote(
    to: Annotated[str, typer.Option("--to", help="Alias to move: challenger, staging or champion.")],
    config: ConfigOption = None,
    version: Annotated[
        str | None,
        typer.Option(
            help="Version to move it to. Default: the holder of the previous alias (challenger -> staging -> champion)."
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "manual promotion",
    force: Annotated[
        bool, typer.Option("--force", help="Make a version champion although it failed its integration tests.")
    ] = False,
) -> None:
    """Point an alias at a version; the move is recorded with time, actor, reason and metrics.

    A version that failed its integration tests on staging is not made champion without --force
    (`churnops deploy production` never does). When champion leaves a version that also holds
    challenger, challenger is released with it, so production stops A/B-testing that version.
    """
    from churnops.pipelines.promotion import model_registry
    from churnops.registry.mlflow_registry import RegistryError
    from churnops.serving.deploy import INTEGRATION_PASSED

    settings = _settings(config)
    if _open_registry(settings) is None:
        raise _fail("nothing is registered yet; run `churnops train` first")
    with settings.paths.lock("churnops registry promote"):
        registry = model_registry(settings)
        chosen = version or registry.next_in_line(to)
        if chosen is not None and chosen == registry.holder(to):
            console.print(f"{registry.model_name}: {to} holds version {chosen} already; nothing moved")
            return
        challenger = registry.holder("challenger")
        try:
            tested = registry.version_tags(str(chosen)).get(INTEGRATION_PASSED) if chosen else None
            if to == "champion" and tested == "false" and not force:
                raise _fail(
                    f"version {chosen} failed its integration tests on staging (`churnops registry list` "
                    "shows them); pass --force to make it champion anyway"
                )
            move = registry.promote(to, version, reason)
        except RegistryError as exc:
            raise _fail(str(exc)) from exc
    console.print(f"{registry.model_name}: {to} -> version {move.version} (was {move.previous or 'unset'})")
    if to == "champion" and tested is None:
        console.print(
            Text(f"version {move.version} has not been through staging's integration tests (`churnops deploy staging`)")
        )
    _say_released(registry, challenger)
    if to in ("champion", "challenger"):
        _reload_production(settings)


def _say_released(registry: Any, challenger: str | None) -> None:
    """Say when a champion move released `challenger` (see `ModelRegistry.move`)."""
    if challenger is not None and registry.holder("challenger") is None:
        console.print(f"challenger released from version {challenger}: it left champion, so it is not A/B-tested")


@registry_app.command("rollback")
def registry_rollback(
    config: ConfigOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "manual rollback",
) -> None:
    """Move `champion` back to the version that held it before; a second rollback goes further back."""
    from churnops.pipelines.promotion import model_registry
    from churnops.registry.mlflow_registry import RegistryError

    settings = _settings(config)
    if _open_registry(settings) is None:
        raise _fail("nothing is registered yet; nothing to roll back")
    with settings.paths.lock("churnops registry rollback"):
        registry = model_registry(settings)
        challenger = registry.holder("challenger")
        try:
            move = registry.rollback(reason)
        except RegistryError as exc:
            raise _fail(str(exc)) from exc
    console.print(f"{registry.model_name}: champion rolled back to version {move.version} (was {move.previous})")
    _say_released(registry, challenger)
    _reload_production(settings)


def _show_realized(realized: dict[str, Any]) -> None:
    if not realized:
        return
    if realized["groups"]:
        rows = [
            [
                g["version"],
                g["variant"],
                f"{g['predictions']:,}",
                _f(g["f1"]),
                _f(g["precision"]),
                _f(g["recall"]),
                _f(g["roc_auc"]),
                _f(g["estimated_f1"]),
            ]
            for g in realized["groups"]
        ]
        title = f"realized performance, predictions of {realized['first_day']} .. {realized['last_day']}"
        headers = ["version", "variant", "predictions", "F1", "precision", "recall", "ROC AUC", "F1 est."]
        console.print(_table(title, headers, rows, [False, False, True, True, True, True, True, True]))
    if realized["note"]:
        console.print(Text(f"realized performance: {realized['note']}", style="dim"))


@app.command()
def monitor(
    config: ConfigOption = None,
    day: Annotated[
        str | None,
        typer.Option(
            "--day", help="Day of the prediction log (YYYY-MM-DD, UTC). Default: the day before the run date."
        ),
    ] = None,
) -> None:
    """Data drift and prediction drift of one day's production predictions, with Evidently.

    The reference is the features of the day the champion was trained for (every customer with an
    order; its holdout when that snapshot is gone), scored by it, against the answers of the
    version that answered the day as champion. Drift is an effect size (normed
    Wasserstein distance over monitoring.drift_threshold), judged only with at least
    monitoring.min_sample predictions, on at most monitoring.sample_size rows per side. Writes
    <workspace>/monitoring/<day>/report.html and summary.json, and the index page beside them.
    """
    from churnops.monitoring.drift import default_monitor_day, monitor_day
    from churnops.pipelines.ingest import IngestError
    from churnops.pipelines.steps import default_run_date
    from churnops.serving.prediction_log import newest_logged_day

    settings = _settings(config)
    try:
        chosen = _parse_day(day, "--day") or default_monitor_day(default_run_date(settings))
    except IngestError as exc:
        raise _fail(str(exc)) from exc
    newest = newest_logged_day(settings.serving.prediction_log_url)
    if day is not None and (newest is None or chosen > newest):
        # a day nothing can have been served on yet would enter the monitoring history
        logged = f"the newest logged prediction is of {newest}" if newest else "no prediction is logged yet"
        raise _fail(f"--day {chosen} is after the prediction log: {logged}", 2)
    _show_monitored(monitor_day(settings, chosen), settings)
    _next(f"open {settings.paths.root / 'monitoring' / 'index.html'} for every monitored day")


# --- the road to production ------------------------------------------------------------------

deploy_app = typer.Typer(
    help="The road to production with local servers: staging (with integration tests), production "
    "(champion, A/B-testing a staged challenger), their status, stopping them. Servers are `churnops serve` "
    "processes with pid files and logs under <workspace>/servers/.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")

EnvArgument = Annotated[str, typer.Argument(help="staging, production or all.", show_default=True)]


def _envs(env: str) -> list[str]:
    if env == "all":
        return ["staging", "production"]
    if env not in ("staging", "production"):
        raise _fail("give staging, production or all", 2)
    return [env]


@deploy_app.command("staging")
def deploy_staging_command(config: ConfigOption = None, date_: DateOption = None) -> None:
    """Move `staging` to the challenger, serve it on the staging server, run the integration tests.

    The tests, over HTTP: health; training/serving skew (served = offline model on the same
    point-in-time features, for deploy.skew_customers customers); the schema of every endpoint;
    p99 latency within deploy.latency_budget_ms. A failure alerts and exits 1; production never
    A/B-tests that version.
    """
    from churnops.pipelines.ingest import IngestError
    from churnops.pipelines.replay import ReplayPendingError, settle
    from churnops.pipelines.steps import default_run_date
    from churnops.serving.deploy import DeployError, deploy_staging

    settings = _settings(config)
    try:
        day = _parse_day(date_, "--date") or default_run_date(settings)
        with settings.paths.lock("churnops deploy staging"):
            settle(settings, day)
            result = deploy_staging(settings, day, _progress_line)
    except (DeployError, IngestError, ReplayPendingError) as exc:
        raise _fail(str(exc)) from exc
    _show_staged(result, settings)
    if result.version and not result.skipped and not result.passed:
        raise _fail(f"version {result.version} failed its integration tests; see the checks above")
    if result.passed:
        _next("`churnops deploy production` promotes it; until then production A/B-tests it")


@deploy_app.command("production")
def deploy_production_command(
    config: ConfigOption = None,
    date_: DateOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "deploy production",
) -> None:
    """Promote the version on staging to champion; the production server hot-swaps to it.

    The version must have passed its integration tests on staging. `churnops registry rollback`
    goes back.
    """
    from churnops.pipelines.ingest import IngestError
    from churnops.pipelines.replay import ReplayPendingError, settle
    from churnops.pipelines.steps import default_run_date
    from churnops.serving.deploy import DeployError, deploy_production

    settings = _settings(config)
    try:
        day = _parse_day(date_, "--date") or default_run_date(settings)
        with settings.paths.lock("churnops deploy production"):
            settle(settings, day)
            result = deploy_production(settings, day, reason, _progress_line)
    except (DeployError, IngestError, ReplayPendingError) as exc:
        raise _fail(str(exc)) from exc
    _show_production(result)


@deploy_app.command("status")
def deploy_status_command(config: ConfigOption = None) -> None:
    """Show each server: running or not, its URL, pid, version and A/B variants.

    A pid file whose process is gone is removed and reported.
    """
    from churnops.serving.deploy import server_status

    settings = _settings(config)
    rows, notes = [], []
    for env in ("staging", "production"):
        st = server_status(settings, env)
        variants = ", ".join(f"{k} v{v}" for k, v in st.variants.items()) or (f"v{st.version}" if st.version else "")
        rows.append([env, st.state, st.url or "-", str(st.pid or "-"), variants or "-"])
        if st.note:
            notes.append(f"{env}: {st.note}")
    console.print(
        _table("servers", ["env", "state", "url", "pid", "serving"], rows, [False] * 5, whole=[True] * 4 + [False])
    )
    for note in notes:
        console.print(Text(note))


@deploy_app.command("stop")
def deploy_stop_command(env: EnvArgument = "all", config: ConfigOption = None) -> None:
    """Stop a server (SIGTERM to its process group: it drains and flushes its prediction log)."""
    from churnops.serving.deploy import stop_server

    settings = _settings(config)
    for name in _envs(env):
        st = stop_server(settings, name)
        console.print(f"{name}: {st.note}" + (f" ({st.url}, pid {st.pid})" if st.pid else ""))


def _reload_production(settings: Settings) -> None:
    """Tell a running local production server that `champion` moved (it would notice on its next poll)."""
    import httpx

    from churnops.serving.deploy import admin_token, server_status

    st = server_status(settings, "production")
    if st.state != "running":
        return
    try:
        answer = httpx.post(
            f"{st.url}/admin/reload", headers={"Authorization": f"Bearer {admin_token(settings)}"}, timeout=120
        )
        console.print(f"production server: {answer.json().get('result', answer.text)}")
    except (httpx.HTTPError, ValueError) as exc:
        console.print(Text(f"production server did not take the reload ({exc}); it follows on its next poll"))


# --- looking at the workspace --------------------------------------------------------------


@app.command()
def status(config: ConfigOption = None) -> None:
    """Show what is in the workspace: sources, raw partitions and their event dates, features, the
    model's aliases, the local servers, the monitoring alarms, runs."""
    from churnops.pipelines.status import workspace_status
    from churnops.pipelines.steps import simulated_sources

    settings = _settings(config)
    state = workspace_status(settings)
    console.print(Text(f"workspace {settings.workspace.resolve()}, lake {state.lake_uri}"))
    if not settings.workspace.exists():
        console.print(
            Text(
                f"  that folder does not exist yet: relative paths in the settings are read from the current "
                f"directory ({Path.cwd()}), not the settings file's",
                style="yellow",
            )
        )
    if simulated_sources(settings):
        console.print(f"simulated sources published up to: {state.simulated_until or 'nothing yet'}")
    console.print(
        _table(
            "sources",
            ["name", "kind", "table", "enabled"],
            [[s["name"], s["kind"], s["table"], "yes" if s["enabled"] else "no"] for s in state.sources],
            [False] * 4,
        )
    )
    if state.tables:
        rows = [
            [
                t.table,
                str(t.partitions),
                f"{t.rows:,}",
                f"{t.quarantined:,}",
                _interval(t.first_date, t.last_date),
                _interval(t.first_event, t.last_event),
            ]
            for t in state.tables
        ]
        console.print(
            _table(
                "raw lake (dates as first/last)",
                ["table", "parts", "rows", "quar.", "ingested", "event dates"],
                rows,
                [False, True, True, True, False, False],
                whole=[False, False, False, False, True, True],
            )
        )
        aside = {t.table: t.set_aside for t in state.tables if t.set_aside}
        if aside:
            kept = ", ".join(f"{table} {count}" for table, count in aside.items())
            console.print(f"raw lake parts set aside (kept, not read; an older date ran after theirs): {kept}")
    else:
        console.print("raw lake: empty (run `churnops ingest`)")
    if state.features:
        f = state.features
        console.print(
            f"feature table: {f['snapshots']} snapshots {f['first']} .. {f['last']}, {f['rows']:,} rows, "
            f"engine {f['engine']}, content hash {f['content_hash'][:12]}"
        )
    else:
        console.print("feature table: empty (run `churnops features`)")
    registry = _open_registry(settings)
    versions = registry.versions() if registry else []
    if versions:
        holders = {a: v["version"] for v in versions for a in v["aliases"]}
        aliases = ", ".join(f"{a} v{holders[a]}" for a in ("challenger", "staging", "champion") if a in holders)
        console.print(f"model {settings.mlflow.model_name}: {len(versions)} version(s); {aliases or 'no aliases'}")
    else:
        console.print(f"model {settings.mlflow.model_name}: no versions yet (run `churnops train`)")
    _show_servers(settings)
    _show_monitoring(settings)
    _show_replay_state(settings)
    if state.runs:
        rows = [
            [
                r.get("logged_at", "")[:16].replace("T", " "),
                r.get("command", ""),
                r.get("ingest_date", r.get("date", "")),
                r.get("status", ""),
            ]
            for r in state.runs
        ]
        console.print(
            _table("the newest run of each step", ["ran at (UTC)", "step", "logical date", "status"], rows, [False] * 4)
        )
    else:
        console.print("no runs yet")


def _show_servers(settings: Settings) -> None:
    """The local servers in a line each, when any was started (`churnops deploy status` has more)."""
    from churnops.serving.deploy import pid_file, server_status

    for env in ("staging", "production"):
        if not pid_file(settings, env).exists():
            continue
        st = server_status(settings, env, remove_stale=False)
        serving = ", ".join(f"{k} v{v}" for k, v in st.variants.items()) or (f"v{st.version}" if st.version else "")
        console.print(f"{env} server: {st.state} {st.url}" + (f" ({serving})" if serving else f"; {st.note}"))


def _show_monitoring(settings: Settings) -> None:
    """The monitoring history in a line: the days checked, the last, and the alarms it is in."""
    from churnops.monitoring.decide import derive, history_path

    path = history_path(settings)
    if not path.exists():
        return
    history = json.loads(path.read_text())
    if not history:
        return
    last = max(history)
    cfg = settings.monitoring
    decision = derive(history, date.fromisoformat(last), cfg.consecutive_checks, cfg.retrain_cooldown_days)
    alarms = ", ".join(f"{c} since {since}" for c, since in sorted(decision.alarms.items())) or "none"
    console.print(f"monitoring: {len(history)} day(s) checked, the last {last}; alarms: {alarms}")


def _show_replay_state(settings: Settings) -> None:
    """A rewind cut short, and later dates still to run again (`pipelines.replay`), if any."""
    from churnops.pipelines.replay import ReplayPendingError, check_pending, pending, plan_path, span

    if plan_path(settings).exists():
        console.print("registry: a rewind was cut short; the next run or registry command finishes it")
    owed = pending(settings)
    if owed is None:
        return
    dates = owed["dates"]
    console.print(Text(f"dates owed: {len(dates)} later date(s) ({span(dates)}) to run again after {owed['after']}"))
    try:  # a date after every other: what a newer run is told
        check_pending(settings, date.max)
    except ReplayPendingError as exc:
        console.print(Text(f"  {exc}"))


@app.command("quarantine")
def quarantine_command(
    config: ConfigOption = None,
    date_: Annotated[
        str | None,
        typer.Option("--date", help="Only this ingest date (YYYY-MM-DD). Default: every date.", show_default=False),
    ] = None,
    table: Annotated[
        str | None, typer.Option(help="Only this raw table (orders, customers, products).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to show (the newest dates first); 0 shows all.")] = 20,
    csv: Annotated[
        Path | None,
        typer.Option(help="Also write every matching row to this CSV file, source rows whole.", show_default=False),
    ] = None,
) -> None:
    """Show the rows and files ingest set aside: where each came from, why, and the row as read.

    A file source's rows name their file and their row in it (counted from 1 after the header);
    a file set aside whole names the file and no row. Fix the source and ingest the date again:
    a rerun replaces that date's part, quarantine included.
    """
    from churnops.data.contracts import CONTRACTS
    from churnops.pipelines.status import quarantined_rows

    if table is not None and table not in CONTRACTS:
        raise _fail(f"--table: no raw table is called {table!r}; the tables are {', '.join(CONTRACTS)}", 2)
    settings = _settings(config)
    day = _parse_day(date_, "--date")
    found = quarantined_rows(settings, table, day.isoformat() if day else None)
    if csv is not None:
        found.to_csv(csv, index=False)
        console.print(Text(f"wrote {len(found):,} quarantined row(s) to {csv}"))
    if found.empty:
        console.print("nothing quarantined" + (f" on {day}" if day else ""))
        return
    shown = found if limit <= 0 else found.head(limit)
    records: list[dict[Any, Any]] = shown.astype(object).where(shown.notna(), None).to_dict("records")
    rows = [
        [
            str(r["ingest_date"]),
            str(r["table"]),
            str(r["source"]),
            r["file"] or "",
            "" if r["file_row"] is None else f"{int(r['file_row']):,}",
            str(r["reason"]),
            _row_as_read(r["source_row"]),
        ]
        for r in records
    ]
    console.print(
        _table(
            f"quarantine ({len(found):,} row(s))",
            ["ingest date", "table", "source", "file", "row", "reason", "row as read"],
            rows,
            [False, False, False, False, True, False, False],
        )
    )
    if len(shown) < len(found):
        _next(f"{len(found) - len(shown):,} more: --limit 0 shows all, --csv FILE writes them")


def _row_as_read(source_row: Any, width: int = 60) -> str:
    """A quarantined row's JSON as `column=value` pairs (not the id churnops derived), cut at
    `width` characters."""
    from churnops.data.sources import DERIVED_ORDER_ID

    try:
        values = json.loads(str(source_row))
    except ValueError:
        return str(source_row)[:width]
    pairs = " ".join(f"{k}={v}" for k, v in values.items() if k != DERIVED_ORDER_ID)
    return pairs if len(pairs) <= width else pairs[: width - 1] + "…"


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface (default: serving.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serving.port, 8000).")] = None,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve (default: serving.alias, champion).")
    ] = None,
) -> None:
    """Serve predictions over HTTP from the model behind a registry alias.

    POST /predict (customer_ids, with features from the online store, or feature vectors),
    the Open Inference Protocol v2 under /v2, MLflow's POST /invocations, GET /metrics for
    Prometheus. The server follows its alias (every serving.poll_seconds, and POST
    /admin/reload with the serving.admin_token) and logs every prediction. SIGTERM or Ctrl-C
    drains it: readiness turns false, in-flight requests finish, the log is flushed.
    """
    from churnops.serving.deploy import clock_by_hand, port_owner
    from churnops.serving.server import serve as run_server

    settings = _settings(config)
    if alias is not None:
        if alias not in ("champion", "challenger", "staging"):
            raise _fail("--alias must be champion, challenger or staging", 2)
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"alias": alias})})
    clock = clock_by_hand(settings)
    if clock != settings.serving.as_of:
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"as_of": clock})})
        console.print(
            f"the simulated shop's clock: features are judged fresh as of {clock:%Y-%m-%d %H:%M}, its newest "
            "snapshot (serving.as_of sets another)"
        )
    logging.getLogger("churnops.serving").setLevel(logging.INFO)  # each model swap, and why, in the server's log
    bound, number = host or settings.serving.host, port or settings.serving.port
    owner = port_owner(bound, number)
    if owner is not None:
        raise _fail(f"port {number} on {bound} is in use by {owner}; stop it, or give --port")
    console.print(
        f"serving {settings.mlflow.model_name}@{settings.serving.alias} on http://{bound}:{number} (Ctrl-C stops)"
    )
    run_server(settings, host, port)


@app.command()
def ui(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open MLflow's UI on the workspace's tracking store, on loopback; Ctrl-C stops it and all its workers."""
    from churnops.pipelines.ui import serve_mlflow_ui

    settings = _settings(config)
    serve_mlflow_ui(settings, port, say=lambda line: console.print(Text(line)))


def main() -> None:
    """Entry point of the `churnops` script."""
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)
