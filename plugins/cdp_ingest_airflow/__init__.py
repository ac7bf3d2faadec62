"""Airflow adapters for the cdp_ingest engine: connections, operators, sensors, notifiers, UI plugin.

Everything here is thin: it turns Airflow connections/context into engine objects and engine results
into task results. Import-heavy modules (pyarrow, opensearch-py) are imported inside ``execute``.
"""

import warnings

# apache-airflow-providers-standard (1.21.0, the latest release) imports ``determine_kwargs`` from its old
# place, so Airflow warned once in every task log of a DAG with a ``@task.sensor`` — about the
# provider's own code, nothing a user can act on. Only that message is ignored.
warnings.filterwarnings("ignore", message=r"The `airflow\.utils\.operator_helpers\.determine_kwargs` attribute is "
                        r"deprecated")
