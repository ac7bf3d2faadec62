"""Load the engine's libraries once in the process that forks Airflow's task processes.

Airflow runs every task instance in a process of its own, forked (LocalExecutor) from a worker the
scheduler forked at start, or (CeleryExecutor) from a pool process of ``airflow celery worker``. Each
task process used to import pyarrow, opensearch-py, s3fs, the engine and this package itself — 0.2–0.4
CPU-s per task process, 32 of them for an 8-file partition day (README, Benchmark results) — although
they are the same in every task. Imported in the scheduler (or Celery worker) before it forks, they are
in every task process from its first instruction, shared copy-on-write.

``airflow_local_settings.py`` in the plugins folder calls :func:`preload`: Airflow imports that module in
each of its processes at start (from ``$AIRFLOW_HOME/config`` first, then the plugins folder), and only
the processes that fork task processes load anything. Memory: ~100 MB more in those processes, none in
the API server, DAG processor or triggerer. ``CDP_PRELOAD=0`` turns it off; a deployment with an
``airflow_local_settings.py`` of its own calls :func:`preload` from it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

# What the tasks of this project import (each an ImportError away from being skipped: an optional
# provider that is not installed is simply not preloaded).
MODULES = (
    "pyarrow.parquet", "pyarrow.compute", "pyarrow.csv", "opensearchpy",
    "airflow.dag_processing.dagbag",  # every task process parses its DAG file with it
    "cdp_ingest.store", "cdp_ingest.pipeline", "cdp_ingest.fastmap", "cdp_ingest.readers",
    "cdp_ingest.partitions", "cdp_ingest.ledger",
    "cdp_ingest_airflow.operators", "cdp_ingest_airflow.activity_hooks", "cdp_ingest_airflow.staging",
    "cdp_ingest_airflow.connections", "cdp_ingest_airflow.csv_dags", "cdp_ingest_airflow.partition_dags",
    "cdp_ingest_airflow.sftp_dags", "cdp_ingest_airflow.replay_dags", "cdp_ingest_airflow.dataset_dags",
    "s3fs", "airflow.providers.amazon.aws.fs.s3",  # the partition DAGs' S3 reads
    "airflow.providers.sftp.hooks.sftp",
)


def forks_tasks(argv: Sequence[str]) -> bool:
    """Whether this Airflow command is one whose child processes run tasks."""
    args = list(argv[1:3])
    return args[:1] == ["scheduler"] or args == ["celery", "worker"]


def preload(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Import :data:`MODULES` when this process forks task processes; the names imported (or already in)."""
    argv = sys.argv if argv is None else argv
    env = os.environ if env is None else env
    if env.get("CDP_PRELOAD", "1").strip().lower() in ("0", "false", "no", "off") or not forks_tasks(argv):
        return []
    loaded = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            log.debug("not preloaded: %s (%s)", name, e)
        else:
            loaded.append(name)
    return loaded
