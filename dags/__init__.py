"""Airflow DAGs (TaskFlow): thin, idempotent tasks that call package functions with their data interval."""
