"""The daily pipeline, declared once: an ordered list of dated steps.

A step is a plain function of the settings, the logical date and the results of the steps before
it; it returns a small result (counts, versions, run ids, the gate's verdict) that turns into a
JSON-able dict and back, so the in-process runner (`run_steps`, behind `churnops run`) and an
orchestrator (the Airflow DAG, which passes results by XCom) run the same list. A step never
reads the wall clock for what it computes, and rerunning it for the same date replaces its own
outputs. A step with `runs_if` is a branch: it is skipped unless its condition holds on the
results so far (register runs only when the gate passed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from churnops.settings import Settings

Progress = Callable[[str], None]


class StepResult(Protocol):
    """What a step returns."""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""


R = TypeVar("R")


class Results:
    """The results of the steps run so far for one logical date, looked up by type."""

    def __init__(self, results: Iterable[object] = ()) -> None:
        self._by_type: dict[type, object] = {type(r): r for r in results}

    def add(self, result: object) -> None:
        """Record a step's result."""
        self._by_type[type(result)] = result

    def get(self, kind: type[R]) -> R:
        """The result of that type; a step asking for one that was not run is a wiring error."""
        found = self._by_type.get(kind)
        if found is None:
            raise LookupError(f"no {kind.__name__} yet: the step producing it has not run for this date")
        return found  # type: ignore[return-value]

    def find(self, kind: type[R]) -> R | None:
        """The result of that type, if its step ran."""
        return self._by_type.get(kind)  # type: ignore[return-value]

    def __iter__(self) -> Any:
        return iter(self._by_type.values())


@dataclass(frozen=True)
class Step:
    """One step of the daily pipeline."""

    name: str
    run: Callable[[Settings, date, Results, Progress], object]
    result: type
    description: str
    runs_if: Callable[[Results], bool] | None = None
    after: tuple[str, ...] = ()  # the steps it waits for in a DAG; default: the one before it in the list
    branch: str = ""  # a DAG picks it by its `runs_if` right after this step (the gate's two ways)


# --- results of the steps that have no result type of their own -------------------------


@dataclass
class Simulated:
    """What the simulate step published (nothing when the sources are already that far)."""

    until: str
    orders_written: int = 0
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Simulated:
        """The inverse of `as_dict`."""
        return cls(**body)


@dataclass
class Ingested:
    """One report per source."""

    date: str
    sources: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Ingested:
        """The inverse of `as_dict`."""
        return cls(**body)


@dataclass
class TrainingDue:
    """Whether the training steps run for this date, and why (or why not)."""

    due: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> TrainingDue:
        """The inverse of `as_dict`."""
        return cls(**body)


# --- the steps --------------------------------------------------------------------------


def simulated_sources(settings: Settings) -> list[str]:
    """Enabled sources that read what `churnops simulate` writes (under the workspace's sources/)."""
    folder = str(settings.paths.sources)
    return [
        s.name
        for s in settings.enabled_sources()
        if any(folder in str(getattr(s, attr, "")) for attr in ("path", "url"))
    ]


def simulate_step(settings: Settings, day: date, results: Results, say: Progress) -> Simulated:
    """Publish the simulated shop up to the day before the logical date (if it simulates at all)."""
    from churnops.pipelines.simulate import SimulationPaths, published_until, simulate

    if not simulated_sources(settings):
        return Simulated(until="", skipped="no source reads the simulated shop")
    target = min(day - timedelta(days=1), settings.simulation.end)
    _, published = published_until(SimulationPaths.from_settings(settings).sources_dir)
    if published is not None and published >= target:
        return Simulated(until=published.isoformat(), skipped=f"already published up to {published}")
    say(f"simulating {settings.simulation.customers:,} customers up to {target}")
    report = simulate(settings, target)
    return Simulated(until=report.until.isoformat(), orders_written=report.orders_written)


def ingest_step(settings: Settings, day: date, _: Results, say: Progress) -> Ingested:
    """Ingest every enabled source into the raw lake under the logical date."""
    from churnops.pipelines.ingest import ingest

    def show(report: Any) -> None:
        aside = f", {report.files_quarantined} file(s) set aside" if report.files_quarantined else ""
        say(
            f"{report.source}: {report.status}, {report.rows_read:,} read, "
            f"{report.rows_quarantined:,} quarantined{aside}"
        )

    reports = ingest(settings, day, on_source=show)
    return Ingested(date=day.isoformat(), sources=[r.__dict__ for r in reports])


def features_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """Features as of the logical date (and the history), validated, in Feast."""
    from churnops.pipelines.features import build_features

    return build_features(settings, day, progress=say)


def validate_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """The newest snapshot as training and serving read it: the committed one, valid, online."""
    from churnops.pipelines.features import check_features

    return check_features(settings, day)


def due_step(settings: Settings, day: date, _: Results, say: Progress) -> TrainingDue:
    """Train when there is no champion yet, when monitoring triggered a retrain (unless a
    challenger is in an A/B test), or to redo the day the champion was trained on; otherwise the
    champion stays and training waits."""
    from churnops.monitoring.decide import mark_retrain, retrain_trigger
    from churnops.pipelines.promotion import existing_registry

    registry = existing_registry(settings)
    champion = registry.holder("champion") if registry else None
    if registry is None or champion is None:
        return TrainingDue(True, "no champion yet")
    trained_on = registry.version_tags(champion).get("logical_date")
    if trained_on == day.isoformat():
        return TrainingDue(True, f"the champion (version {champion}) was trained for this date: a rerun")
    trigger = retrain_trigger(settings, day)
    if trigger:
        from churnops.serving.deploy import ab_challenger

        tested = ab_challenger(registry, settings)
        if tested is not None:  # the answer to the alarm is already being tested: a new one would restart it
            mark_retrain(settings, day, declined=True)  # no cooldown from it: once the test is decided, it retrains
            return TrainingDue(False, f"{trigger}; but version {tested} is in an A/B test, whose decision comes first")
        mark_retrain(settings, day, declined=False)
        return TrainingDue(True, trigger)
    return TrainingDue(
        False,
        f"version {champion} (trained for {trained_on}) stays champion; monitoring has not triggered a retrain",
    )


def train_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """Train the candidates on what was known before the logical date; hand on the challenger's run."""
    from churnops.pipelines.train import train

    return train(settings, day, progress=say)


def gate_step(settings: Settings, day: date, results: Results, say: Progress) -> Any:
    """Judge the challenger's run; the verdict decides the branch (register, or notify the team)."""
    from churnops.pipelines.promotion import gate
    from churnops.pipelines.train import TrainResult

    return gate(settings, day, results.get(TrainResult).run_id, progress=say, alert=False)


def notify_step(settings: Settings, day: date, results: Results, say: Progress) -> Any:
    """The gate failed: alert the team (once per failure) with its reasons."""
    from churnops.alerts import alerted
    from churnops.pipelines.promotion import GateVerdict, notify_gate_failure

    notice = notify_gate_failure(settings, day, results.get(GateVerdict))
    say(alerted(settings.alerts) if notice.alerted else "already alerted for this failure")
    return notice


def register_step(settings: Settings, day: date, results: Results, say: Progress) -> Any:
    """Record the challenger's run as a registry version with the alias `challenger`."""
    from churnops.pipelines.promotion import register
    from churnops.pipelines.train import TrainResult

    return register(settings, day, results.get(TrainResult).run_id, progress=say)


def staging_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """Put the challenger on staging: the alias, and the staging server serving it."""
    from churnops.serving.deploy import stage_challenger

    return stage_challenger(settings, day, say)


def integration_step(settings: Settings, day: date, results: Results, say: Progress) -> Any:
    """Run the integration tests over HTTP against the staging server."""
    from churnops.serving.deploy import Staged, run_integration_tests

    return run_integration_tests(settings, day, results.get(Staged), say)


def production_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """Decide a running A/B test if its labels allow (promote or end it), then serve the champion
    in production, A/B-testing a challenger that passed staging."""
    from churnops.monitoring.ab_test import decide_ab
    from churnops.serving.deploy import serve_production

    decision = decide_ab(settings, day, say)
    result = serve_production(settings, day, say)
    result.ab = decision.as_dict()
    return result


def monitor_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """Monitor the day before's production predictions: drift against the champion's reference,
    realized and estimated performance, system figures (the trigger step decides on them)."""
    from churnops.monitoring.drift import default_monitor_day, monitor_day

    return monitor_day(settings, default_monitor_day(day), decide=False)


def trigger_step(settings: Settings, day: date, _: Results, say: Progress) -> Any:
    """Decide on the monitored day: alarms that held long enough, their alerts, and whether to
    retrain (the next logical date's `due` step reads it)."""
    from churnops.monitoring.drift import decide_day, default_monitor_day

    return decide_day(settings, default_monitor_day(day))


def _training_due(results: Results) -> bool:
    due = results.find(TrainingDue)
    return due is None or due.due  # not asked (a chosen subset of steps): train


def _trained(results: Results) -> bool:
    from churnops.pipelines.train import TrainResult

    return results.find(TrainResult) is not None


def _registered(results: Results) -> bool:
    from churnops.pipelines.promotion import Registered

    return results.find(Registered) is not None


def _staged(results: Results) -> bool:
    from churnops.serving.deploy import Staged

    staged = results.find(Staged)
    return staged is not None and staged.version is not None and not staged.skipped


def _gate_passed(results: Results) -> bool:
    from churnops.pipelines.promotion import GateVerdict

    verdict = results.find(GateVerdict)
    return verdict is not None and verdict.passed


def _gate_failed(results: Results) -> bool:
    from churnops.pipelines.promotion import GateVerdict

    verdict = results.find(GateVerdict)
    return verdict is not None and not verdict.passed


def steps() -> list[Step]:
    """The daily pipeline, in order."""
    from churnops.monitoring.decide import Decision
    from churnops.monitoring.drift import Monitored
    from churnops.pipelines.features import FeatureReport, FeaturesChecked
    from churnops.pipelines.promotion import GateNotice, GateVerdict, Registered
    from churnops.pipelines.train import TrainResult
    from churnops.serving.deploy import IntegrationTested, Production, Staged

    return [
        Step("simulate", simulate_step, Simulated, "publish the simulated shop up to the day before (if configured)"),
        Step("ingest", ingest_step, Ingested, "load every source into the raw lake, quarantining bad rows"),
        Step(
            "features",
            features_step,
            FeatureReport,
            "compute the snapshots (each validated before it is written), publish them to Feast",
        ),
        Step(
            "validate",
            validate_step,
            FeaturesChecked,
            "the newest snapshot as committed, valid again, and equal in the online store",
        ),
        Step("due", due_step, TrainingDue, "train today? (no champion yet, or monitoring triggered a retrain)"),
        Step(
            "train",
            train_step,
            TrainResult,
            "train the candidates, tracked in MLflow; pick the challenger",
            runs_if=_training_due,
        ),
        Step(
            "gate",
            gate_step,
            GateVerdict,
            "floor, lift over both baselines, not worse than the champion",
            runs_if=_trained,
        ),
        Step(
            "notify",
            notify_step,
            GateNotice,
            "the gate failed: alert the team with its reasons; nothing is registered",
            runs_if=_gate_failed,
            after=("gate",),
            branch="gate",
        ),
        Step(
            "register",
            register_step,
            Registered,
            "record the challenger in the registry",
            runs_if=_gate_passed,
            after=("gate",),
            branch="gate",
        ),
        Step(
            "staging",
            staging_step,
            Staged,
            "serve the challenger on the staging server",
            runs_if=_registered,
        ),
        Step(
            "integration",
            integration_step,
            IntegrationTested,
            "integration tests over HTTP against staging (a failure stops the road)",
            runs_if=_staged,
        ),
        Step(
            "production",
            production_step,
            Production,
            "decide the A/B test from realized labels; serve the champion, A/B-testing a staged challenger",
            after=("integration", "notify"),
        ),
        Step(
            "monitor",
            monitor_step,
            Monitored,
            "the day before's predictions: drift, realized and estimated performance, system figures",
        ),
        Step(
            "trigger",
            trigger_step,
            Decision,
            "alarms that held long enough (hysteresis), their alerts, and a retrain (with a cooldown)",
        ),
    ]


class StepsError(RuntimeError):
    """The steps cannot be run as asked (an unknown step, or one to resume after that never ran)."""


def results_dir(settings: Settings, day: date) -> Path:
    """Where each step's result for a logical date is kept (`<step>.json`)."""
    return settings.paths.root / "runs" / day.isoformat()


def _keep(settings: Settings, day: date, step: Step, result: object | None) -> None:
    from churnops.data.lake import write_local_atomic

    body = {"step": step.name, "skipped": result is None}
    if result is not None:
        body["result"] = result.as_dict()  # type: ignore[attr-defined]
    write_local_atomic(str(results_dir(settings, day) / f"{step.name}.json"), json.dumps(body).encode())


def _kept(settings: Settings, day: date, step: Step, earlier: Results) -> object | None:
    """A step's recorded result for the date (None: it was skipped, or it is a branch that the
    earlier steps' results do not take, which an Airflow run skips without running it).

    Raises:
        StepsError: It never ran for that date.
    """
    path = results_dir(settings, day) / f"{step.name}.json"
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if step.runs_if is not None and not step.runs_if(earlier):
            return None
        raise StepsError(
            f"step {step.name} has not run for {day}, so the run cannot resume after it; run the whole day"
        ) from exc
    return None if body["skipped"] else step.result.from_dict(body["result"])  # type: ignore[attr-defined]


def step_named(name: str) -> Step:
    """The step of that name.

    Raises:
        StepsError: No step is called that.
    """
    for step in steps():
        if step.name == name:
            return step
    raise StepsError(f"no step is called {name!r}; the steps are {', '.join(s.name for s in steps())}")


def run_step(
    settings: Settings,
    day: date,
    step: Step,
    results: Results,
    say: Progress,
    on_start: Callable[[Step], None] | None = None,
) -> object | None:
    """Run one step for a logical date on the results so far (None: its condition did not hold).

    Its result is added to `results` and kept under `results_dir`, whichever runner called it,
    so `churnops run --from` can resume after a run an orchestrator began.
    """
    with settings.paths.lock(f"churnops run: {step.name}"):
        if step.runs_if is not None and not step.runs_if(results):
            _keep(settings, day, step, None)
            return None
        if on_start:
            on_start(step)
        result = step.run(settings, day, results, say)
        results.add(result)
        _keep(settings, day, step, result)
        return result


def run_steps(
    settings: Settings,
    day: date,
    only: Iterable[str] | None = None,
    progress: Progress | None = None,
    on_step: Callable[[Step, object | None, float], None] | None = None,
    on_start: Callable[[Step], None] | None = None,
    resume_from: str | None = None,
    replay: bool = True,
    on_replay: Callable[[date], None] | None = None,
) -> Results:
    """Run the steps in order for one logical date, in this process, under the workspace lock.

    Each step's result is kept under `results_dir`, so a run that failed at a step can resume
    from it: the steps before it are not run again, their kept results stand in.

    When later dates have run already, a whole day's run (or its resumption) is followed by
    theirs again, in date order, and a whole day's run first rewinds what they decided in the
    registry (`pipelines.replay`): the end state is what running the dates in order leaves.

    Args:
        settings: The loaded settings.
        day: The logical date.
        only: Run just these steps (by name), still in list order.
        progress: Called with progress lines.
        on_step: Called after each step with its result (None if skipped) and seconds.
        on_start: Called before each step that runs.
        resume_from: Start at this step, with the kept results of the steps before it.
        replay: Run the later dates that have run already again after this one (a whole day's
            run or a resumption only; `only` runs just what it names).
        on_replay: Called with each later date before it runs again.

    Returns:
        Every step's result (of this date; the later dates' are kept under `results_dir`).

    Raises:
        StepsError: `resume_from` names no step, or a step before it never ran for this date.
        ReplayPendingError: An earlier date's run rewound the registry and has not run the
            later dates again yet (see `pipelines.replay`).
    """
    say = progress or (lambda _: None)
    chosen = set(only) if only is not None else None
    if resume_from is not None:
        step_named(resume_from)
    results = Results()
    with settings.paths.lock("churnops run"):
        from churnops.pipelines import replay as replays

        if replays.finish_rewind(settings):
            say("finished a registry rewind an earlier run began")
        if replay:
            replays.check_pending(settings, day)
        if resume_from is not None:  # a resumption that cannot start fails before anything is rewound
            earlier = Results()
            for step in steps():
                if step.name == resume_from:
                    break
                kept = _kept(settings, day, step, earlier)
                if kept is not None:
                    earlier.add(kept)
        later = replays.later_days(settings, day) if replay and chosen is None else []
        if later:
            say(
                f"{len(later)} later date(s) have run ({replays.span(later)}): "
                f"{day} runs first, then they run again in date order"
            )
            replays.owe(settings, day, later)
            # a resumed date keeps what its own steps did; the later dates' decisions go either way
            replays.rewind(settings, day if resume_from is None else day + timedelta(days=1), say)
            replays.set_aside_later(settings, later, say)
        resuming = resume_from is not None
        for step in steps():
            if resuming and step.name != resume_from:
                kept = _kept(settings, day, step, results)
                if kept is not None:
                    results.add(kept)
                continue
            resuming = False
            if chosen is not None and step.name not in chosen:
                continue
            started = time.perf_counter()
            result = run_step(settings, day, step, results, say, on_start)
            if on_step:
                on_step(step, result, time.perf_counter() - started)
        if replay and chosen is None:
            replays.done(settings, day)
        for again in later:
            if on_replay:
                on_replay(again)
            else:
                say(f"running {again} again, after {day}")
            run_steps(settings, again, progress=progress, on_step=on_step, on_start=on_start, replay=False)
            replays.paid(settings, again)
    return results


def default_run_date(settings: Settings) -> date:
    """The logical date of `churnops run` when none is given.

    With the simulated shop: the day after its last published day (after its end when nothing
    is published yet). Over real data: the day after the newest order in the lake or the order
    sources. Never the wall clock.
    """
    from churnops.pipelines.ingest import default_ingest_date
    from churnops.pipelines.simulate import SimulationPaths, published_until

    if simulated_sources(settings):
        _, until = published_until(SimulationPaths.from_settings(settings).sources_dir)
        return (until or settings.simulation.end) + timedelta(days=1)
    return default_ingest_date(settings)
