"""Airflow UI plugin: the import activity console (SPEC §2, §7) at ``/cdp-activity/`` and in the nav bar.

The FastAPI app (see ``cdp_ingest_airflow.activity_ui``; the log itself is ``cdp_ingest_airflow.activity``)
is served by the api-server; every route depends on Airflow's auth manager, so the pages and the JSON
endpoints need a logged-in user who may read DAG runs. Restart the api-server after changing this file.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cdp_ingest_airflow.activity_ui import create_app

URL_PREFIX = "/cdp-activity"


class ActivityLogPlugin(AirflowPlugin):
    name = "cdp_activity_log"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "cdp-ingest import activity"}]
    external_views = [{
        "name": "Import activity",
        "href": "/cdp-activity/",
        "destination": "nav",
        "category": "browse",
        "url_route": "cdp-activity",
    }]
