"""Orchestration: the in-process runner and the Airflow DAG (not built yet; a later issue)."""
