"""Datasets end to end (SPEC §4) on a real ``airflow standalone`` (scheduler, dag-processor, api-server,
LocalExecutor): the REST API behind auth, the Python client and the ``cdp-ingest datasets`` CLI; a URL
dataset and a PostgreSQL dataset created through the API run without a restart, a sync that changes,
deletes and adds rows ends with exactly the source's rows, a failing source ends in ``failure`` with its
code while the previous rows stay readable, delete removes the DAG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dataset_kit import http_files
from test_partition_live import LiveAirflow

from airflow_env import airflow_env
from cdp_ingest.datasets.client import DatasetsClient, JobError
from cdp_ingest.datasets.raw import alias_name
from cdp_ingest.store import Store, make_client
from devservices import free_port

pytestmark = [pytest.mark.services, pytest.mark.airflow, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PREFIX = "t-dse2e-"


def _pg(postgres):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres")


def _rows(store: Store, name: str) -> dict[str, dict]:
    resp = store._request("POST", f"/{alias_name(PREFIX, name)}/_search", body={"size": 100})
    return {h["_id"]: h["_source"] for h in resp["hits"]["hits"]}


def test_datasets_through_the_api_client_and_cli_on_a_real_airflow(tmp_path, opensearch, postgres):
    home = tmp_path / "airflow"
    home.mkdir()
    port = free_port()
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = PREFIX
    env = {**os.environ, **airflow_env(home, tmp_path / "landing"), "AIRFLOW_CONN_CDP_OPENSEARCH": json.dumps(conn),
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "CDP_DATASETS_DIR": str(tmp_path / "datasets"), "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10"}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")]))
    url = f"http://127.0.0.1:{port}"
    table = f"e2e_customers_{os.getpid()}"
    with _pg(postgres) as c, c.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int primary key, name text, updated_at timestamptz)")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'ann', '2026-01-01'), (2, 'bob', '2026-01-02'), "  # noqa: S608
                    f"(3, 'cy', '2026-01-03')")
    store = Store(make_client(opensearch.info["url"]), prefix=PREFIX)
    af = LiveAirflow(home, env)
    try:
        af.cli("db", "migrate")
        af.start()

        def healthy():
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        af.wait("the api-server", healthy, timeout=180)
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/cdp-datasets/api/datasets", timeout=10)
        assert e.value.code == 401  # behind Airflow auth
        api = DatasetsClient(url, username="admin", password=password)
        # a registry file written by another api-server (shared $CDP_DATASETS_DIR): the dag-processor alone
        # turns it into a DAG at its next parse, without a restart
        registry = tmp_path / "datasets" / "registry"
        registry.mkdir(parents=True, exist_ok=True)
        (registry / "e2e_dropped.json").write_text(json.dumps({
            "source": {"url": "https://example.invalid/x.csv"}, "sync_interval": 86400,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}))

        with http_files() as (base, handler):
            handler.files["/plans.csv"] = (b"plan,price\nfree,0\npro,10\nteam,30\n", "Wed, 01 Jan 2026 10:00:00 GMT")
            # the client waits for the first job and returns the dataset
            plans = api.create("e2e_plans", source=f"{base}/plans.csv", id_column="plan", sync_interval=900,
                               timeout=300, poll=3)
            assert plans["state"] == "complete" and plans["rows"] == 3 and plans["next_sync"]
            assert sorted(_rows(store, "e2e_plans")) == ["free", "pro", "team"]

            # a failing source: the client raises with the job id and state; the dataset stays readable
            del handler.files["/plans.csv"]
            with pytest.raises(JobError) as failed:
                api.sync("e2e_plans", wait=True, timeout=300, poll=3)
            assert failed.value.state == "failure" and failed.value.error_code == "no_data_file"
            assert failed.value.job_id.startswith("job__")
            assert sorted(_rows(store, "e2e_plans")) == ["free", "pro", "team"]
            assert [j["job_id"] for j in api.jobs(dataset="e2e_plans", state="failure")] == [failed.value.job_id]

        # the CLI: a PostgreSQL dataset (refused below 900 s first)
        cli_env = {**env, "CDP_API_URL": url, "CDP_API_USER": "admin", "CDP_API_PASSWORD": password}
        cli = [str(VENV_BIN / "cdp-ingest"), "datasets"]
        low = subprocess.run([*cli, "create", "e2e_pg", "--conn-id", "cdp_postgres", "--table", table,
                              "--sync-interval", "300"], env=cli_env, capture_output=True, text=True, timeout=60)
        assert low.returncode == 1 and "at least 900 seconds" in low.stderr
        made = subprocess.run([*cli, "create", "e2e_pg", "--conn-id", "cdp_postgres", "--table", f"public.{table}",
                               "--id-column", "id", "--watermark-column", "updated_at", "--sync-interval", "3600",
                               "--timeout", "300"], env=cli_env, capture_output=True, text=True, timeout=400)
        assert made.returncode == 0, made.stderr[-2000:]
        assert json.loads(made.stdout)["rows"] == 3
        with _pg(postgres) as c, c.cursor() as cur:
            cur.execute(f"UPDATE {table} SET name = 'ann b', updated_at = '2026-02-01' WHERE id = 1")  # noqa: S608
            cur.execute(f"DELETE FROM {table} WHERE id = 2")  # noqa: S608
            cur.execute(f"INSERT INTO {table} VALUES (4, 'dee', '2026-02-02')")  # noqa: S608
        synced = subprocess.run([*cli, "sync", "e2e_pg", "--wait", "--timeout", "300"], env=cli_env,
                                capture_output=True, text=True, timeout=400)
        assert synced.returncode == 0, synced.stderr[-2000:]
        assert json.loads(synced.stdout)["state"] == "complete"
        rows = _rows(store, "e2e_pg")
        assert sorted(rows) == ["1", "3", "4"] and rows["1"]["name"] == "ann b"  # exactly the source's rows
        jobs = subprocess.run([*cli, "jobs", "e2e_pg"], env=cli_env, capture_output=True, text=True, timeout=60)
        assert [j["state"] for j in json.loads(jobs.stdout)] == ["complete", "complete"]

        af.wait("the dag-processor to parse the dropped registry entry", lambda: af.query(
            "SELECT 1 FROM serialized_dag WHERE dag_id = 'dataset_sync_e2e_dropped'"), timeout=180)
        dropped = api.get("e2e_dropped")
        assert dropped["state"] == "new" and dropped["origin"] == "api" and dropped["paused"] is False

        # delete: alias, DAG and registry entry are gone
        gone = api.delete("e2e_pg")
        assert gone["dag_removed"] and gone["registry_entry_removed"]
        assert store._request("HEAD", f"/{alias_name(PREFIX, 'e2e_pg')}", ok_statuses=(404,)) is False
        assert not af.query("SELECT 1 FROM dag WHERE dag_id = 'dataset_sync_e2e_pg'")
        assert "e2e_pg" not in [d["name"] for d in api.list()]
    finally:
        af.stop()
        store._request("DELETE", f"/{PREFIX}*")
