"""Dataset sync DAGs (SPEC §4) through Airflow (dag.test) against OpenSearch and a local HTTP server:
one DAG per dataset from config/datasets.yaml and the registry folder, jobs = runs, force, failures."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from dataset_kit import http_files

from cdp_ingest.datasets.raw import alias_name
from cdp_ingest.datasets.spec import parse_spec, write_registry_entry
from cdp_ingest.datasets.state import DatasetIndex
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]
PREFIX = "t-dsdag-"


@pytest.fixture
def env(tmp_path, monkeypatch, opensearch, airflow_db):
    monkeypatch.setenv("CDP_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("CDP_LANDING_DIR", str(tmp_path / "landing"))
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = PREFIX
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    store = Store(make_client(opensearch.info["url"]), prefix=PREFIX)
    yield store
    store._request("DELETE", f"/{PREFIX}*")


def _bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "dataset_sync.py"))
    assert not bag.import_errors
    return bag


def test_config_and_registry_datasets_each_get_a_dag(env, tmp_path):
    write_registry_entry(parse_spec("from_api", {"source": "https://example.invalid/x.csv", "sync_interval": 1800,
                                                 "origin": "api"}))
    (tmp_path / "datasets" / "registry" / "broken.json").write_text("{")
    bag = _bag()
    api = bag.dags["dataset_sync_from_api"]
    assert api.schedule == timedelta(seconds=1800)
    assert "dataset_sync_demo_products" in bag.dags  # from config/datasets.yaml
    assert [t.task_id for t in api.topological_sort()] == ["fetch", "transform", "validate", "load", "finish"]
    assert api.params["force"] is False and api.max_active_runs == 1
    assert api.deadline and api.deadline[0].interval == timedelta(seconds=1800)
    for t in api.tasks:
        assert t.retries >= 2 and t.on_failure_callback
    assert not api.is_paused_upon_creation  # created through the API: runs without a manual unpause


def test_an_interval_below_900_in_the_config_is_an_import_error(tmp_path, monkeypatch, airflow_db):
    cfg = tmp_path / "datasets.yaml"
    cfg.write_text("datasets:\n  fast: {source: https://example.invalid/x.csv, sync_interval: 300}\n")
    monkeypatch.setenv("CDP_DATASETS", str(cfg))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "dataset_sync.py"))
    (error,) = bag.import_errors.values()
    assert "sync_interval must be at least 900 seconds (15 minutes); got 300" in error


def test_dag_runs_are_jobs_nothing_changed_force_and_failure(env):
    store = env
    with http_files() as (base, handler):
        handler.files["/items.csv"] = (b"sku,price\na,1\nb,2\n", "Wed, 01 Jan 2026 10:00:00 GMT")
        write_registry_entry(parse_spec("items", {"source": f"{base}/items.csv", "id_column": "sku",
                                                  "sync_interval": 900, "origin": "api"}))
        dag = _bag().dags["dataset_sync_items"]  # an ImportDAG: test() runs without the deadline alert
        first = dag.test()
        assert first.state == "success"
        jobs = DatasetIndex(store)
        job = jobs.job(first.run_id)
        assert job["state"] == "complete" and job["changed"] is True and job["result"]["loaded"] == 2
        assert store.count(alias_name(PREFIX, "items")) == 2

        handler.files["/items.csv"] = (b"sku,price\na,1\nb,2\n", "Wed, 01 Jan 2026 10:00:00 GMT")
        second = dag.test()
        assert jobs.job(second.run_id)["changed"] is False  # 304: nothing changed
        forced = dag.test(run_conf={"force": True})
        assert jobs.job(forced.run_id)["changed"] is True and jobs.job(forced.run_id)["reason"] == "forced"

        del handler.files["/items.csv"]  # the source disappears: no retry can fix a 404
        failed = dag.test()
        assert failed.state == "failed"
        job = jobs.job(failed.run_id)
        assert job["state"] == "failure" and job["error_code"] == "no_data_file"
        assert "HTTP 404" in job["error_message"]
        assert store.count(alias_name(PREFIX, "items")) == 2  # the previous dataset is still readable
        assert DatasetIndex(store).state("items")["last_error"]["code"] == "no_data_file"
        # every job is on the import activity console, with its counts or its error
        from cdp_ingest_airflow.activity import ActivityLog

        entries = ActivityLog(store)._search([{"term": {"source": "dataset"}}, {"term": {"account": "items"}}])
        by_run = {e["run_id"]: e for e in entries}
        assert by_run[first.run_id]["status"] == "done" and by_run[first.run_id]["loaded"] == 2
        assert by_run[failed.run_id]["status"] == "failed" and by_run[failed.run_id]["error_code"] == "no_data_file"
        assert len(entries) == 4
