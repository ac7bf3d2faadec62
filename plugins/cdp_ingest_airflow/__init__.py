"""Airflow adapters for the cdp_ingest engine: connections, operators, sensors, notifiers, UI plugin.

Everything here is thin: it turns Airflow connections/context into engine objects and engine results
into task results. Import-heavy modules (pyarrow, opensearch-py) are imported inside ``execute``.
"""
