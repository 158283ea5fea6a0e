"""Drive the churnops DAG with real Airflow in a process of its own (Airflow reads its
configuration, AIRFLOW_HOME included, when first imported).

    python airflow_driver.py describe OUT.json
    python airflow_driver.py run OUT.json 2025-01-01 [2025-01-02 ...]

`describe` loads the dags folder with a DagBag and writes the DAG's shape; `run` runs
`dag.test()` for each logical date in turn (the SQLite metadata database must exist) and writes
each run's state and task states.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any


def describe(dags_folder: str) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dags_folder)
    body: dict[str, Any] = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
    for dag_id, dag in bag.dags.items():
        dag.check_cycle()  # raises on a cycle
        body["dags"][dag_id] = {
            "schedule": str(dag.timetable.expression),
            "timetable": type(dag.timetable).__name__,
            "catchup": dag.catchup,
            "tags": sorted(dag.tags),
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params.keys()),
            "tasks": {
                t.task_id: {
                    "upstream": sorted(t.upstream_task_ids),
                    "trigger_rule": str(t.trigger_rule.value if hasattr(t.trigger_rule, "value") else t.trigger_rule),
                    "retries": t.retries,
                    "retry_delay_s": t.retry_delay.total_seconds(),
                    "execution_timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                    "owner": t.owner,
                    "depends_on_past": t.depends_on_past,
                    "operator": type(t).__name__,
                }
                for t in dag.tasks
            },
        }
    return body


def run(dates: list[str]) -> list[dict[str, Any]]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.settings import DAGS_FOLDER

    dag = DagBag(dag_folder=DAGS_FOLDER).dags["churnops_daily"]
    runs = []
    for day in dates:
        logical = datetime.fromisoformat(day).replace(tzinfo=UTC)
        dag_run = dag.test(logical_date=logical)
        runs.append(
            {
                "date": day,
                "state": str(dag_run.state),
                "interval": [str(dag_run.data_interval_start), str(dag_run.data_interval_end)],
                "tasks": {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()},
            }
        )
    return runs


if __name__ == "__main__":
    command, out = sys.argv[1], sys.argv[2]
    if command == "describe":
        from airflow.settings import DAGS_FOLDER

        result: Any = describe(DAGS_FOLDER)
    else:
        result = run(sys.argv[3:])
    with open(out, "w") as handle:
        json.dump(result, handle)
