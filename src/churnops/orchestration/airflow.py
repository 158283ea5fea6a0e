"""The Airflow adapter: the daily steps (`pipelines.steps.steps`) as an Airflow 3 DAG.

Each step is one task, in the list's order; a step's `after` names the tasks it waits for. The
steps a gate's verdict chooses between (`branch="gate"`) hang off a branch task, so a failing gate
shows in Airflow as the `notify` branch taken and `register` skipped. A step whose condition
does not hold (no training due, nothing registered) skips itself; every later task still runs
unless something upstream failed.

Tasks hand each other their small results (counts, versions, run ids, the verdict) by XCom and
everything else through the workspace and the configured stores. The churnops logical date of
a run is the end of its data interval: the run for [D-1, D) is the day D, whose data is every
order before D. Nothing here reads the wall clock, so a rerun or a backfill of a date computes
what `churnops run --date D` computes. A run of a date before dates that have run (a manual
trigger, a cleared run) ends as in-order runs do: its first task rewinds what the later dates
decided in the registry and sets their raw partitions aside, and its `replay` task, after the
last step, runs them again in this process (`pipelines.replay`).

Importing this module imports no Airflow; `build_dag` does, when the DAG file calls it.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

DAG_ID = "churnops_daily"
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

log = logging.getLogger("churnops.airflow")


def logical_day(context: dict[str, Any]) -> date:
    """The churnops logical date of a task's run: the end of its data interval."""
    end = context.get("data_interval_end") or context["logical_date"]
    return end.date()


def _settings(context: dict[str, Any]) -> Any:
    from churnops.settings import load_settings

    config = (context.get("params") or {}).get("config") or None
    return load_settings(Path(config) if config else None)


def _results(context: dict[str, Any], before: str) -> Any:
    """The results of the steps before `before`, from their tasks' XComs (a skipped task has none)."""
    from churnops.pipelines.steps import Results, steps

    results = Results()
    for step in steps():
        if step.name == before:
            break
        body = context["ti"].xcom_pull(task_ids=step.name)
        if body:
            results.add(step.result.from_dict(body))  # type: ignore[attr-defined]
    return results


def run_step_task(step_name: str, **context: Any) -> dict[str, Any]:
    """The callable of a step's task: run the step for the run's logical date, return its result."""
    from airflow.sdk.exceptions import AirflowSkipException

    from churnops.pipelines.steps import run_step, step_named, steps

    step = step_named(step_name)
    settings = _settings(context)
    day = logical_day(context)
    if step_name == steps()[0].name:
        _rewind_for_later_days(settings, day)
    else:
        _refuse_a_partial_rerun(settings, day)
    result = run_step(settings, day, step, _results(context, step_name), log.info)
    if result is None:
        raise AirflowSkipException(f"{step.name} for {day}: its condition does not hold")
    body: dict[str, Any] = result.as_dict()  # type: ignore[attr-defined]
    return body


def _rewind_for_later_days(settings: Any, day: date) -> None:
    """A run of a date before dates that have run (triggered by hand, or cleared and run again):
    its first task records the later dates as owed, rewinds what they decided in the registry
    and sets their raw partitions aside (`pipelines.replay`); the `replay` task runs them again."""
    from churnops.pipelines.replay import later_days, owe, rewind, set_aside_later, settle, span

    with settings.paths.lock("churnops airflow: rewind"):
        settle(settings, day)  # refuses while an earlier date's replay is owed
        later = later_days(settings, day)
        if later:
            log.info("%d later date(s) have run (%s): rewinding their decisions", len(later), span(later))
            owe(settings, day, later)
            rewind(settings, day, log.info)
            set_aside_later(settings, later, log.info)


def _refuse_a_partial_rerun(settings: Any, day: date) -> None:
    """A task of an older date run again on its own (a partial clear) after later dates ran:
    it would act on their decisions. Only a run whose first task rewound for them may go on.

    Raises:
        churnops.pipelines.replay.ReplayPendingError: Later dates have run and this date's run
            did not rewind for them.
    """
    from churnops.pipelines.replay import ReplayPendingError, later_days, pending, span

    later = later_days(settings, day)
    owed = pending(settings)
    if later and (owed is None or owed["after"] != day.isoformat()):
        raise ReplayPendingError(
            f"later dates have run since this run of {day} began ({span(later)}); clear the whole run, "
            "from its first task, so their decisions are rewound and they run again"
        )


def replay_task(**context: Any) -> list[str]:
    """The callable of the `replay` task: run again, in date order and in this process, the
    later dates this run's first task rewound for, so the workspace ends as an in-order run
    leaves it (their own Airflow runs keep their states). Each date done is recorded, so a
    retry carries on with the next."""
    from airflow.sdk.exceptions import AirflowSkipException

    from churnops.pipelines import replay
    from churnops.pipelines.steps import run_steps

    settings = _settings(context)
    day = logical_day(context)
    ran = []
    with settings.paths.lock("churnops airflow: replay"):
        owed = replay.pending(settings)
        if owed is None or owed["after"] != day.isoformat():
            _refuse_a_partial_rerun(settings, day)
            # the date a failed run again stopped at, run again on its own: crossed off
            replay.done(settings, day)
            raise AirflowSkipException(f"no later date to run again after {day}")
        replay.done(settings, day)  # this date's steps are done: their tasks succeeded or skipped
        for again in owed["dates"]:
            log.info("running %s again, after %s", again, day)
            run_steps(settings, date.fromisoformat(again), progress=log.info, replay=False)
            replay.paid(settings, date.fromisoformat(again))
            ran.append(again)
    return ran


def choose_branch(after: str, **context: Any) -> list[str]:
    """The callable of a branch task: the steps after `after` whose condition holds."""
    from churnops.pipelines.steps import steps

    results = _results(context, "")
    chosen = [s.name for s in steps() if s.branch == after and (s.runs_if is None or s.runs_if(results))]
    log.info("after %s: %s", after, ", ".join(chosen) or "nothing to run")
    return chosen


def build_dag(
    dag_id: str = DAG_ID,
    start_date: datetime = DEFAULT_START,
    cron: str = "0 0 * * *",
    config: str = "",
) -> Any:
    """The daily churnops DAG.

    Args:
        dag_id: The DAG's id.
        start_date: The first data interval's start (catchup is off: only the newest runs).
        cron: When each day's run starts (UTC), at the end of its data interval.
        config: The churnops YAML file the tasks load (default: $CHURNOPS_CONFIG, then
            ./churnops.yaml); a run's `config` param overrides it.

    Returns:
        An `airflow.sdk.DAG`.
    """
    from airflow.providers.standard.operators.python import BranchPythonOperator, PythonOperator
    from airflow.sdk import DAG, CronDataIntervalTimetable, Param, TriggerRule

    from churnops.pipelines.steps import steps

    listed = steps()
    default_args = {
        "owner": "churnops",
        # a day builds on the day before (the champion it keeps, monitoring's decision it reads):
        # each task waits for its own task of the previous run, so days run in date order
        "depends_on_past": True,
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=2),
    }
    with DAG(
        dag_id,
        schedule=CronDataIntervalTimetable(cron, timezone="UTC"),
        start_date=start_date,
        catchup=False,
        max_active_runs=1,  # a day builds on the day before (the champion, monitoring's history)
        default_args=default_args,
        tags=["churnops", "mlops", "churn"],
        params={"config": Param(config, type="string", description="the churnops YAML file the tasks load")},
        doc_md=__doc__,
    ) as dag:
        tasks: dict[str, Any] = {}
        branches: dict[str, Any] = {}
        for index, step in enumerate(listed):
            task = PythonOperator(
                task_id=step.name,
                python_callable=run_step_task,
                op_kwargs={"step_name": step.name},
                trigger_rule=TriggerRule.NONE_FAILED if index else TriggerRule.ALL_SUCCESS,
                doc_md=step.description,
            )
            for name in step.after or ((listed[index - 1].name,) if index else ()):
                if step.branch == name:
                    if name not in branches:
                        branches[name] = BranchPythonOperator(
                            task_id=f"{name}_branch",
                            python_callable=choose_branch,
                            op_kwargs={"after": name},
                            trigger_rule=TriggerRule.NONE_FAILED,
                            doc_md=f"choose the steps that follow {name}'s result",
                        )
                        tasks[name] >> branches[name]
                    branches[name] >> task
                else:
                    tasks[name] >> task
            tasks[step.name] = task
        replay = PythonOperator(
            task_id="replay",
            python_callable=replay_task,
            trigger_rule=TriggerRule.NONE_FAILED,
            # one run of each later date, each up to a day's run: not the 2-hour limit of a step
            execution_timeout=timedelta(hours=24),
            # a DAG without this task before (an upgrade) must not wait for its past run; the
            # owed-dates record and one active run keep the dates in order
            depends_on_past=False,
            doc_md="run again the later dates this run's first task rewound for (skipped when none)",
        )
        tasks[listed[-1].name] >> replay
    return dag
