"""The daily churnops pipeline for Airflow 3: ingest, features, validate, train, gate, staging,
integration tests, A/B and production, monitor, retrain trigger.

Built from the project's own step list (`churnops.pipelines.steps`), so it runs what
`churnops run --date D` runs. Point `CHURNOPS_CONFIG` (or the run's `config` param) at the
churnops YAML file the tasks should load. Parsing this file loads no settings and touches no
workspace.
"""

from churnops.orchestration.airflow import build_dag

dag = build_dag()
