"""Airflow imports this module in each of its processes at start (``$AIRFLOW_HOME/config`` first, then
the plugins folder, both on its path): the scheduler and Celery workers load the engine's libraries
before they fork task processes (see ``cdp_ingest_airflow.preload``). It defines no policy."""

from cdp_ingest_airflow.preload import preload as _preload

_preload()

__all__: list[str] = []  # nothing here for Airflow's settings / cluster policies
