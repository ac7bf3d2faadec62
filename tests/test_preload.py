"""The engine's libraries are loaded in the processes that fork Airflow's task processes (scheduler,
Celery worker) and nowhere else, through ``plugins/airflow_local_settings.py`` (see
``cdp_ingest_airflow.preload``). The live check on a running scheduler is in test_partition_live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdp_ingest_airflow.preload import MODULES, forks_tasks, preload

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("pyarrow.parquet", "opensearchpy", "cdp_ingest.store", "cdp_ingest_airflow.operators")


def _loaded_at_start(command: list[str], **env: str) -> dict[str, bool]:
    """Which of PROBE a fresh interpreter that is ``airflow <command>`` holds once Airflow imported its
    local settings module (as it does at start: the plugins folder is on its path)."""
    code = ("import sys, json; sys.argv = ['airflow', *json.loads(sys.argv[1])]; import airflow_local_settings; "
            f"print(json.dumps({{m: m in sys.modules for m in {list(PROBE)!r}}}))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(command)], check=True, capture_output=True,
                         text=True, env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
                             [str(ROOT / "plugins"), str(ROOT / "include")])}).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("command, forks", [
    (["scheduler"], True), (["scheduler", "--num-runs", "1"], True), (["celery", "worker"], True),
    (["api-server"], False), (["dag-processor"], False), (["triggerer"], False), (["celery", "flower"], False),
    (["dags", "test", "x"], False), (["standalone"], False), ([], False),
])
def test_only_the_commands_that_fork_task_processes_preload(command, forks):
    assert forks_tasks(["airflow", *command]) is forks


def test_the_scheduler_starts_with_the_engine_loaded_and_the_api_server_without():
    assert _loaded_at_start(["scheduler"]) == dict.fromkeys(PROBE, True)
    assert _loaded_at_start(["celery", "worker"]) == dict.fromkeys(PROBE, True)
    assert _loaded_at_start(["api-server"]) == dict.fromkeys(PROBE, False)
    assert _loaded_at_start(["scheduler"], CDP_PRELOAD="0") == dict.fromkeys(PROBE, False)


def test_every_listed_module_exists():
    # a renamed module would otherwise be skipped in silence (an optional provider may be missing, so
    # preload() passes over ImportErrors): here every dependency is installed
    assert preload(["airflow", "scheduler"], {}) == list(MODULES)
    assert preload(["airflow", "scheduler"], {"CDP_PRELOAD": "off"}) == []
    assert preload(["airflow", "triggerer"], {}) == []
