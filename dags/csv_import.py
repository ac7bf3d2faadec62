"""Scheduled CSV imports from the landing folder: one DAG per entry of config/csv_imports.yaml."""

from cdp_ingest_airflow.csv_dags import build_all

globals().update(build_all())
