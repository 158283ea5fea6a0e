"""`churnops demo`: a time-lapse of the whole loop on the simulated shop, drift injected part-way.

For each simulated day D: the daily steps run for D (the shop publishes the orders up to D - 1,
ingest, features and the online store, training when due or triggered, the road to production
with the A/B decision, monitoring of D - 1), then the production server answers D's prediction
traffic over HTTP (its clock set to D). Labels arrive by themselves: a prediction's horizon
passes and the next monitoring joins it to the orders. What each day did is handed to a view
as a `DemoDay`; the milestones of the loop (the first model promoted, drift detected, a retrain,
an A/B test decided, a new champion serving) are named when they happen.

The demo's shop and thresholds (`DEMO_DEFAULTS`) replace the built-in defaults; a config file and
CHURNOPS_* variables still win over them. The workspace remembers the plan and the finished
days (`demo.json`): a rerun carries on after the last finished day and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from churnops.settings import Settings, load_settings

log = logging.getLogger(__name__)

FIRST_DAY = date(2024, 8, 1)
MILESTONES = {
    "first_model": "the first model trained and promoted",
    "drift": "drift detected after the injection",
    "retrain": "a retrain triggered by monitoring",
    "ab_decided": "an A/B test decided",
    "new_champion": "a new champion serving",
}


class DemoError(RuntimeError):
    """The demo cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class DemoPlan:
    """Which simulated days the time-lapse covers, when the drift starts, how much traffic."""

    first_day: date = FIRST_DAY
    days: int = 46
    drift_after: int = 2
    traffic: int = 1500  # customers scored per day
    batch: int = 20  # customer_ids per request

    @property
    def drift_day(self) -> date:
        """The day the price shift starts."""
        return self.first_day + timedelta(days=self.drift_after)

    @property
    def last_day(self) -> date:
        """The last day of the time-lapse."""
        return self.first_day + timedelta(days=self.days - 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {**asdict(self), "first_day": self.first_day.isoformat()}


def demo_defaults(plan: DemoPlan) -> dict[str, Any]:
    """The demo's shop and thresholds: small enough for a day to take seconds.

    A four-week horizon lets labels come within the time-lapse; over it this shop's churn is
    mostly recency and "everyone churns" is a strong baseline, so the gate keeps the design's F1
    floor of 0.7 and asks only that the model be no worse than either baseline (by 0.01 in F1,
    0.03 in AUC) nor than the champion (by 0.03): with the stricter defaults, a retrain three
    weeks after the first model was refused on noise (F1 0.017 below the champion's) in one of
    two runs. A 50/50 A/B split and a non-inferiority margin of 0.05 let a test be decided from a
    few days of labels; a drift share of a fifth on 2 checks in a row sees doubled prices within
    about two weeks (they move the eight spend features, a third of them, gradually).
    """
    return {
        "simulation": {
            "customers": 3000,
            "products": 400,
            "start": "2024-01-01",
            "end": (plan.last_day + timedelta(days=1)).isoformat(),
            "seed": 7,
            "scenarios": [{"kind": "price_shift", "start": plan.drift_day.isoformat(), "magnitude": 1.0}],
        },
        "training": {
            "horizon_days": 28,
            "holdout_snapshots": 2,
            "validation_snapshots": 2,
            "cv_folds": 3,
            "candidates": {
                "lightgbm": {
                    "algorithm": "lightgbm",
                    "params": {"n_estimators": 120, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 40},
                }
            },
        },
        "gate": {"min_lift_f1": -0.01, "min_lift_auc": -0.03, "non_inferiority_margin": 0.03, "bootstrap_rounds": 300},
        "serving": {"ab_weight": 0.5},
        "deploy": {"latency_requests": 100},
        "monitoring": {"drift_share": 0.2, "consecutive_checks": 2},
        "ab_test": {"margin": 0.05},
    }


def demo_settings(config: Path | None, plan: DemoPlan) -> Settings:
    """The settings of the demo: its defaults, under the config file and environment."""
    return load_settings(config, defaults=demo_defaults(plan))


@dataclass
class Traffic:
    """One day's prediction traffic against the production server."""

    requests: int = 0
    predictions: int = 0
    refused: int = 0
    by_variant: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)  # "<version> <variant>" -> predictions
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DemoDay:
    """What one simulated day did, for the view."""

    day: str
    champion: str | None = None
    challenger: str | None = None
    ab_status: str = ""
    trained: str = ""  # why training ran, or ""
    registered: str | None = None
    traffic: Traffic = field(default_factory=Traffic)
    monitored: str | None = None  # the day monitoring checked
    drift: bool | None = None
    drifted_share: float | None = None
    realized: dict[str, float] = field(default_factory=dict)  # "v3 champion" -> F1
    estimated: dict[str, float] = field(default_factory=dict)
    alerts: int = 0
    events: list[str] = field(default_factory=list)
    milestones: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Demo:
    """The time-lapse over one workspace."""

    def __init__(self, settings: Settings, plan: DemoPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.state_path = settings.paths.root / "demo.json"
        self.log_path = settings.paths.root / "demo.log"

    # --- the workspace ---------------------------------------------------------------------

    def prepare(self, restart: bool) -> list[str]:
        """Check (or reset) the workspace; return the days already done.

        Raises:
            DemoError: The workspace holds other work, or a demo with another plan.
        """
        root = self.settings.paths.root
        state = self._state()
        if restart and root.exists():
            if state is None and any(root.iterdir()):
                raise DemoError(f"{root} holds work that is not a demo's; --restart removes only a demo's workspace")
            from churnops.serving.deploy import stop_server

            for env in ("staging", "production"):
                stop_server(self.settings, env)
            shutil.rmtree(root)
            state = None
        if state is None:
            if root.exists() and any(p.name != ".lock" for p in root.iterdir()):
                raise DemoError(
                    f"{root} already holds a workspace that is not a demo's; give the demo an empty one "
                    "(workspace: in a config file, or CHURNOPS_WORKSPACE=...) or remove it"
                )
            root.mkdir(parents=True, exist_ok=True)
            self._save({"plan": self.plan.as_dict(), "done": []})
            self._write_config()
            return []
        if state["plan"] != self.plan.as_dict():
            raise DemoError(
                f"{root} holds a demo with another plan ({state['plan']}); run with --restart to begin again"
            )
        return list(state["done"])

    def _state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return None

    def _save(self, state: dict[str, Any]) -> None:
        from churnops.data.lake import write_local_atomic

        write_local_atomic(str(self.state_path), json.dumps(state, indent=1).encode())

    def _write_config(self) -> None:
        """The demo's effective settings, for other commands on its workspace (`-c`)."""
        import yaml

        from churnops.data.lake import write_local_atomic

        body = self.settings.model_dump(mode="json", exclude={"sources"})
        body["serving"].pop("admin_token", None)
        # database passwords stay out of the file: the environment gives them (CHURNOPS_FEAST__REGISTRY, ...)
        for section, key in (("feast", "registry"), ("serving", "prediction_log_url")):
            if body[section].get(key):
                body[section][key] = _without_password(body[section][key])
        text = "# The settings `churnops demo` ran with; pass them to other commands: -c " + str(self.config_path)
        write_local_atomic(str(self.config_path), (text + "\n" + yaml.safe_dump(body, sort_keys=False)).encode())

    @property
    def config_path(self) -> Path:
        """Where the demo's settings are written."""
        return self.settings.paths.root / "demo.yaml"

    # --- the days --------------------------------------------------------------------------

    def days(self) -> list[date]:
        """Every day of the time-lapse."""
        return [self.plan.first_day + timedelta(days=i) for i in range(self.plan.days)]

    def run_day(self, day: date, on_step: Callable[[str], None] | None = None) -> DemoDay:
        """The daily steps for `day`, then its traffic; the result says what happened.

        Args:
            day: The simulated day.
            on_step: Called with the name of each step as it starts (and "traffic").
        """
        from churnops.pipelines.steps import run_steps

        started = time.perf_counter()
        alerts_before = self._alert_count()
        with self.log_path.open("a") as lines:
            lines.write(f"=== {day}\n")

            def say(line: str) -> None:
                lines.write(line + "\n")

            def step_done(step: Any, result: Any, seconds: float) -> None:
                lines.write(f"-- {step.name}: {'skipped' if result is None else f'{seconds:.1f}s'}\n")
                lines.flush()

            results = run_steps(
                self.settings,
                day,
                progress=say,
                on_step=step_done,
                on_start=(lambda step: on_step(step.name)) if on_step else None,
            )
        traffic = Traffic()
        url = _production_url(results)
        if url and self._answered(day):
            say_later = f"{day}: the day's traffic was answered before (a rerun of an unfinished day): not sent again"
            with self.log_path.open("a") as lines:
                lines.write(say_later + "\n")
        elif url:
            if on_step is not None:
                on_step("traffic")
            traffic = self.send_traffic(url, day)
        view = self._summarise(day, results, traffic)
        raised = self._alerts()[alerts_before:]
        view.alerts = len(raised)
        view.events.extend(f"alert: {alert.get('title', '?')}" for alert in raised)
        view.seconds = time.perf_counter() - started
        state = self._state() or {"plan": self.plan.as_dict(), "done": []}
        state["done"] = sorted({*state["done"], day.isoformat()})
        milestones = state.setdefault("milestones", {})
        for name in view.milestones:
            milestones.setdefault(name, day.isoformat())
        if view.champion:
            state["champion"] = view.champion
        self._save(state)
        return view

    def _answered(self, day: date) -> bool:
        """The prediction log already holds production predictions of `day`."""
        from churnops.serving.prediction_log import read_predictions

        logged = read_predictions(self.settings.serving.prediction_log_url, day=day)
        return bool(logged["variant"].isin(("champion", "challenger", "shadow")).any())

    def reached(self) -> dict[str, str]:
        """Milestone -> the day it was first reached."""
        return dict((self._state() or {}).get("milestones", {}))

    def _alert_count(self) -> int:
        return len(self._alerts())

    def _alerts(self) -> list[dict[str, Any]]:
        from churnops.jsonl import read_lines

        return list(read_lines(Path(self.settings.alerts.file)))

    def _summarise(self, day: date, results: Any, traffic: Traffic) -> DemoDay:
        from churnops.monitoring.decide import Decision
        from churnops.monitoring.drift import Monitored
        from churnops.pipelines.promotion import GateVerdict, Registered
        from churnops.pipelines.steps import TrainingDue
        from churnops.serving.deploy import IntegrationTested, Production

        view = DemoDay(day=day.isoformat(), traffic=traffic)
        reached = self.reached()
        due = results.find(TrainingDue)
        if due is not None and due.due:
            view.trained = due.reason
            if due.reason.startswith("monitoring triggered"):
                view.events.append(f"retrain: {due.reason}")
                view.milestones.append("retrain")
        verdict = results.find(GateVerdict)
        registered = results.find(Registered)
        if verdict is not None and not verdict.passed:
            view.events.append("the retrained model failed the gate; the champion stays")
        if registered is not None and not registered.reused:
            view.registered = registered.version
            if registered.promoted_to_champion:
                view.events.append(f"version {registered.version} trained and promoted: the first champion")
                view.milestones.append("first_model")
            else:
                view.events.append(f"version {registered.version} passed the gate: the challenger")
        staged = results.find(IntegrationTested)
        if staged is not None and staged.version and not staged.skipped:
            view.events.append(
                f"version {staged.version} "
                + ("passed staging: A/B test begins" if staged.passed else "FAILED staging: it goes no further")
            )
        production = results.find(Production)
        if production is not None:
            view.champion, view.challenger = production.champion, production.challenger
            ab = production.ab or {}
            view.ab_status = ab.get("status", "") if ab.get("challenger") else ""
            if ab.get("status") in ("promoted", "ended"):
                view.events.append(f"A/B test decided: {ab['reason']}")
                view.milestones.append("ab_decided")
            previous = (self._state() or {}).get("champion")
            answered = traffic.by_version.get(f"{production.champion} champion", 0)
            if production.champion and previous and production.champion != previous and answered:
                view.events.append(
                    f"version {production.champion} is the new champion: it answered {answered:,} predictions today"
                )
                view.milestones.append("new_champion")
        monitored = results.find(Monitored)
        if monitored is not None:
            view.monitored = monitored.day
            view.drift = monitored.dataset_drift
            view.drifted_share = monitored.drifted_share
            for group in (monitored.realized or {}).get("groups", []):
                view.realized[f"v{group['version']} {group['variant']}"] = group["f1"]
            for est in monitored.estimated:
                if est["estimated_f1"] is not None:
                    view.estimated[f"v{est['version']} {est['variant']}"] = est["estimated_f1"]
            decision = results.find(Decision)
            alarms = decision.alarms if decision is not None else {}
            for condition, what in (("data_drift", "data drift"), ("newcomer_drift", "the newcomers' data drift")):
                if condition in alarms and "drift" not in reached and "drift" not in view.milestones:
                    view.events.append(f"drift detected: {what} on every check since {alarms[condition]}")
                    view.milestones.append("drift")
        return view

    # --- traffic ---------------------------------------------------------------------------

    def send_traffic(self, url: str, day: date) -> Traffic:
        """The day's prediction requests: `plan.traffic` customers who had signed up by then, in
        requests of `plan.batch`; about one request in fifty is malformed (clients err)."""
        import httpx

        from churnops.pipelines.simulate import SimulationPaths, load_world

        started = time.perf_counter()
        customers = load_world(self.settings.simulation, SimulationPaths.from_settings(self.settings).cache_dir)
        known = customers.customers
        ids = known.loc[known["created_at"] < np.datetime64(day), "customer_id"].to_numpy()
        rng = np.random.default_rng([self.settings.simulation.seed, day.toordinal()])
        chosen = rng.choice(ids, size=min(self.plan.traffic, len(ids)), replace=False) if len(ids) else ids
        traffic = Traffic()
        with httpx.Client(base_url=url, timeout=30) as client:
            for i, start in enumerate(range(0, len(chosen), self.plan.batch)):
                body: dict[str, Any] = {"customer_ids": [int(c) for c in chosen[start : start + self.plan.batch]]}
                if i % 50 == 0:
                    body = {"customer_ids": body["customer_ids"], "explain": True}  # an unknown field: a 422
                answer = client.post("/predict", json=body)
                traffic.requests += 1
                traffic.by_status[str(answer.status_code)] = traffic.by_status.get(str(answer.status_code), 0) + 1
                if answer.status_code != 200:
                    traffic.refused += 1
                    continue
                for item in answer.json()["predictions"]:
                    if item["status"] == "ok":
                        traffic.predictions += 1
                        variant, key = item["variant"], f"{item['version']} {item['variant']}"
                        traffic.by_variant[variant] = traffic.by_variant.get(variant, 0) + 1
                        traffic.by_version[key] = traffic.by_version.get(key, 0) + 1
        traffic.seconds = time.perf_counter() - started
        return traffic


def _production_url(results: Any) -> str:
    from churnops.serving.deploy import Production

    production = results.find(Production)
    return production.url if production is not None and production.url and not production.skipped else ""


def _without_password(url: str) -> str:
    """A database URL with its password shown as ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not SQLAlchemy's form: written as given
        return url
