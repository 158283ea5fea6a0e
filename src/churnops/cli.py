"""The `churnops` command line: one Typer app, each command a thin call into `pipelines`."""

from __future__ import annotations

import logging
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from churnops.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    name="churnops",
    help=(
        "MLOps for customer-churn prediction.\n\n"
        "Typical first steps: `churnops simulate` writes a simulated shop into the sources, "
        "`churnops ingest` loads them into the raw lake, `churnops status` shows the workspace. "
        "`churnops run` does all of it."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML settings file (default: $CHURNOPS_CONFIG, then ./churnops.yaml if present).",
        show_default=False,
    ),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _print_error(str(exc))
        raise typer.Exit(2) from exc


def _parse_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        _print_error(f"{option} must be a date like 2025-01-31, got {value!r}")
        raise typer.Exit(2) from exc


def _progress_line(line: str) -> None:
    console.print(f"  {line}")


def _print_error(message: str) -> None:
    # Text, not markup: messages quote source rows, which may hold square brackets.
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _print_error(message)
    return typer.Exit(code)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
    started = time.perf_counter()
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
        + f" ({time.perf_counter() - started:.1f}s)"
    )


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


@app.command()
def ingest(
    config: ConfigOption = None,
    date_: Annotated[
        str | None,
        typer.Option(
            "--date",
            help="Logical ingest date (YYYY-MM-DD); its partition is written or replaced. Default: today.",
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="Ingest only this source (repeatable). Default: all enabled."),
    ] = None,
) -> None:
    """Load every enabled source into the raw lake, validating and quarantining bad rows.

    Exit status 1 when a batch is rejected (missing required column, too many bad rows, a
    volume drop); the message says which source and why, and nothing of it is published.
    """
    from churnops.pipelines.ingest import IngestError, SourceReport
    from churnops.pipelines.ingest import ingest as run_ingest
    from churnops.runlog import WorkspaceBusyError

    settings = _settings(config)
    day = _parse_day(date_, "--date") or datetime.now().date()
    table = Table(title=f"ingest {day}")
    for col in ("source", "table", "status", "read", "accepted", "quarantined", "seconds"):
        table.add_column(col, justify="right" if col in ("read", "accepted", "quarantined", "seconds") else "left")

    def show(report: SourceReport) -> None:
        console.print(
            f"  {report.source}: {report.status}, {report.rows_read:,} read, "
            f"{report.rows_quarantined:,} quarantined ({report.seconds:.1f}s)"
        )
        table.add_row(
            report.source,
            report.table,
            report.status,
            f"{report.rows_read:,}",
            f"{report.rows_accepted:,}",
            f"{report.rows_quarantined:,}",
            f"{report.seconds:.1f}",
        )

    try:
        reports = run_ingest(settings, day, only=source, on_source=show)
    except (IngestError, WorkspaceBusyError) as exc:
        raise _fail(str(exc)) from exc
    console.print(table)
    for report in reports:
        if report.reasons:
            reasons = ", ".join(f"{k}: {v:,}" for k, v in report.reasons.items())
            console.print(f"  quarantine reasons for {report.source}: {reasons}")


@app.command()
def features(
    config: ConfigOption = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Latest snapshot date (features as of 00:00 that day). Default: the day after the last order.",
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
    snapshots it computes. The online store receives the newest row of every customer.
    """
    from churnops.features.validation import FeatureValidationError
    from churnops.pipelines.features import FeatureBuildError, build_features
    from churnops.runlog import WorkspaceBusyError

    settings = _settings(config)
    day = _parse_day(as_of, "--as-of")

    try:
        with console.status("computing features ..."):
            report = build_features(
                settings, day, history=not latest_only, publish_to_feast=not no_feast, progress=_progress_line
            )
    except (FeatureBuildError, FeatureValidationError, WorkspaceBusyError) as exc:
        raise _fail(str(exc)) from exc
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    console.print(
        f"features: {len(report.snapshots)} snapshot(s) {report.snapshots[0]} .. {report.snapshots[-1]}, "
        f"{report.rows:,} rows, content hash {report.content_hash[:12]} ({timings})"
    )


@app.command()
def train(config: ConfigOption = None) -> None:
    """Train the candidates on Feast's point-in-time training set, gate the best, register it.

    Labels: churned = no order in (snapshot, snapshot + training.horizon_days]; only snapshots
    whose horizon has passed are used. Every candidate is an MLflow run. The best (by
    training.selection_metric on validation data) must reach gate.min_f1 on the holdout and,
    if a champion exists, not be worse than it (paired bootstrap). A pass registers a new
    version with the alias `challenger` (and `champion` if there is none yet); a failure
    registers nothing, alerts the team once and exits with status 1.
    """
    from churnops.pipelines.train import GateFailedError, TrainingError
    from churnops.pipelines.train import train as run_train
    from churnops.runlog import WorkspaceBusyError

    settings = _settings(config)

    try:
        with console.status("training ..."):
            report = run_train(settings, progress=_progress_line)
    except GateFailedError as exc:
        alerted = "the team was alerted" if exc.report.alerted else "already alerted for this failure"
        raise _fail(f"{exc}; nothing was registered ({alerted})") from exc
    except (TrainingError, WorkspaceBusyError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(title=f"candidates ({report.rows:,} labelled rows)")
    for col in ("candidate", "F1", "precision", "recall", "ROC AUC", "PR AUC", "CV F1", "threshold", "seconds"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for c in report.candidates:
        mark = " *" if c.name == report.challenger else ""
        table.add_row(
            c.name + mark,
            f"{c.holdout['f1']:.3f}",
            f"{c.holdout['precision']:.3f}",
            f"{c.holdout['recall']:.3f}",
            f"{c.holdout['roc_auc']:.3f}",
            f"{c.holdout['pr_auc']:.3f}",
            f"{c.cv_f1_mean:.3f}±{c.cv_f1_std:.3f}",
            f"{c.threshold:.3f}",
            f"{c.seconds:.1f}",
        )
    console.print(table)
    gate = report.gate
    versus = (
        f"; vs champion {gate.metric} {gate.difference:+.4f} (CI {gate.ci_low:+.4f} .. {gate.ci_high:+.4f})"
        if gate.compared_with_champion and gate.difference is not None
        else "; no champion to compare with"
    )
    console.print(f"gate passed: F1 {gate.challenger_f1:.3f} >= {gate.min_f1}{versus}")
    promoted = " and champion (first model)" if report.promoted_to_champion else ""
    console.print(f"registered {settings.mlflow.model_name} version {report.version} as challenger{promoted}")


registry_app = typer.Typer(
    help="Model versions and their aliases (challenger, staging, champion).", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")

NEXT_ALIAS_SOURCE = {"staging": "challenger", "champion": "staging", "challenger": None}


def _registry(config: Path | None) -> tuple[Settings, Any]:
    from churnops.pipelines.train import model_registry

    settings = _settings(config)
    return settings, model_registry(settings)


@registry_app.command("list")
def registry_list(config: ConfigOption = None) -> None:
    """List the registered model's versions with their aliases and key metrics."""
    _, registry = _registry(config)
    versions = registry.versions()
    if not versions:
        console.print(f"no versions of {registry.model_name} yet (run `churnops train`)")
        return
    table = Table(title=registry.model_name)
    for col in ("version", "aliases", "candidate", "threshold", "created", "run"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            v["tags"].get("candidate", ""),
            v["tags"].get("threshold", ""),
            v["created"],
            v["run_id"][:12],
        )
    console.print(table)


@registry_app.command("history")
def registry_history(
    config: ConfigOption = None,
    alias: Annotated[str | None, typer.Option(help="Only moves of this alias.")] = None,
) -> None:
    """Every alias move: when, which alias, from which version to which, who and why."""
    _, registry = _registry(config)
    moves = registry.history(alias)
    if not moves:
        console.print("no alias moves yet")
        return
    table = Table(title=f"alias history of {registry.model_name}")
    for col in ("at", "alias", "version", "previous", "actor", "reason", "F1"):
        table.add_column(col)
    for m in moves:
        f1 = f"{m.metrics['f1']:.3f}" if "f1" in m.metrics else ""
        table.add_row(m.at, m.alias, m.version, m.previous or "", m.actor, m.reason, f1)
    console.print(table)


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
) -> None:
    """Point an alias at a version; the move is recorded with time, actor, reason and metrics."""
    from churnops.registry.mlflow_registry import RegistryError

    _, registry = _registry(config)
    target = version
    if target is None:
        source = NEXT_ALIAS_SOURCE.get(to)
        chain = [source, "challenger"] if source else []
        for alias in chain:
            if alias and (target := registry.holder(alias)):
                break
        if target is None:
            raise _fail(f"give --version: no version holds the alias before {to!r}")
    try:
        move = registry.move(to, target, reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{registry.model_name}: {to} -> version {move.version} (was {move.previous or 'unset'})")


@registry_app.command("rollback")
def registry_rollback(
    config: ConfigOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "manual rollback",
) -> None:
    """Move `champion` back to the version that held it before the current one."""
    from churnops.registry.mlflow_registry import RegistryError

    _, registry = _registry(config)
    try:
        move = registry.rollback(reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{registry.model_name}: champion rolled back to version {move.version} (was {move.previous})")


@app.command()
def status(config: ConfigOption = None) -> None:
    """Show what is in the workspace: sources, raw partitions, row counts, last runs."""
    from churnops.pipelines.status import workspace_status

    settings = _settings(config)
    state = workspace_status(settings)
    console.print(f"workspace [bold]{state.workspace}[/bold], lake {state.lake_uri}")
    console.print(f"simulated sources published up to: {state.simulated_until or 'nothing yet'}")
    sources = Table(title="sources")
    for col in ("name", "kind", "table", "enabled"):
        sources.add_column(col)
    for s in state.sources:
        sources.add_row(s["name"], s["kind"], s["table"], "yes" if s["enabled"] else "no")
    console.print(sources)
    raw = Table(title="raw lake")
    for col in ("table", "partitions", "rows", "quarantined", "first", "last", "sources"):
        raw.add_column(col)
    for t in state.tables:
        raw.add_row(
            t.table,
            str(t.partitions),
            f"{t.rows:,}",
            f"{t.quarantined:,}",
            t.first_date or "",
            t.last_date or "",
            ", ".join(t.sources),
        )
    console.print(raw if state.tables else "raw lake: empty (run `churnops ingest`)")
    if state.features:
        f = state.features
        console.print(
            f"feature table: {f['snapshots']} snapshots {f['first']} .. {f['last']}, {f['rows']:,} rows, "
            f"engine {f['engine']}, content hash {f['content_hash'][:12]}"
        )
    else:
        console.print("feature table: empty (run `churnops features`)")
    if state.runs:
        runs = Table(title="last runs")
        for col in ("logged at", "command", "date", "status"):
            runs.add_column(col)
        for r in state.runs:
            runs.add_row(
                r.get("logged_at", ""),
                r.get("command", ""),
                r.get("ingest_date", r.get("date", "")),
                r.get("status", ""),
            )
        console.print(runs)
    else:
        console.print("no runs yet")


@app.command()
def run(
    config: ConfigOption = None,
    date_: Annotated[
        str | None,
        typer.Option(
            "--date",
            help="Logical date of the run. Default: the simulation's last published day, else today.",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline that exists so far on embedded defaults.

    Today that is: simulate the shop (if its sources are not written yet), ingest every
    source into the raw lake, compute features and publish them to Feast, train and gate the
    candidates and register the challenger, and show the workspace status.
    """
    from churnops.pipelines.ingest import IngestError
    from churnops.pipelines.ingest import ingest as run_ingest
    from churnops.pipelines.simulate import SimulationPaths, published_until
    from churnops.pipelines.simulate import simulate as run_simulation

    settings = _settings(config)
    paths = SimulationPaths.from_settings(settings)
    _, until = published_until(paths.sources_dir)
    if until is None:
        console.rule("simulate")
        with console.status(f"simulating {settings.simulation.customers:,} customers ..."):
            report = run_simulation(settings)
        console.print(f"published {report.orders_written:,} orders up to {report.until}")
        until = report.until
    day = _parse_day(date_, "--date") or until
    console.rule(f"ingest {day}")
    try:
        reports = run_ingest(
            settings,
            day,
            on_source=lambda r: console.print(
                f"  {r.source}: {r.status}, {r.rows_read:,} rows read, {r.rows_quarantined:,} quarantined"
            ),
        )
    except IngestError as exc:
        raise _fail(str(exc)) from exc
    del reports
    console.rule("features")
    features(config, as_of=None, latest_only=False, no_feast=False)
    console.rule("train")
    train(config)
    console.rule("status")
    status(config)


def main() -> None:
    """Entry point of the `churnops` script."""
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)
