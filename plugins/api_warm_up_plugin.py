"""Airflow plugin: the api-server builds its task execution API's routes when it starts, so the first task
after a start does not wait for them (see ``cdp_ingest_airflow.warm_api``). Restart the api-server after
changing this file."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cdp_ingest_airflow.warm_api import WarmExecutionAPI


class ExecutionAPIWarmUpPlugin(AirflowPlugin):
    name = "cdp_execution_api_warm_up"
    fastapi_root_middlewares = [{"middleware": WarmExecutionAPI, "name": "cdp-ingest: execution API warm-up"}]
