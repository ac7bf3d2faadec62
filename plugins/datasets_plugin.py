"""Airflow plugin: the datasets REST API (SPEC §4) at ``/cdp-datasets/api/...`` on the api-server.

Every route depends on Airflow's auth manager (see ``cdp_ingest_airflow.dataset_api``): no token = 401.
Restart the api-server after changing this file.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cdp_ingest_airflow.dataset_api import create_app

URL_PREFIX = "/cdp-datasets"


class DatasetsPlugin(AirflowPlugin):
    name = "cdp_datasets"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "cdp-ingest datasets API"}]
