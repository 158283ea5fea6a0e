"""Orchestration: the Airflow adapter (the in-process runner is `pipelines.steps.run_steps`)."""
