"""Defaults every cdp-ingest DAG shares: owner, retries with exponential backoff, failure callback."""

from __future__ import annotations

from datetime import timedelta

from cdp_ingest_airflow.notify import on_task_failure

OWNER = "cdp-ingest"
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": on_task_failure,
}
