"""The datasets REST API plugin (SPEC §4) inside Airflow's own api-server app (in process), behind Airflow auth:
create → DAG + queued first job, list/get, force sync, jobs with states, delete. (test_dataset_e2e.py runs the
same API on a real ``airflow standalone`` where the scheduler completes the jobs.)"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from dataset_kit import http_files

from cdp_ingest.datasets.raw import alias_name
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]
PREFIX = "t-dsapi-"
API = "/cdp-datasets/api"


@pytest.fixture
def env(tmp_path, monkeypatch, opensearch, airflow_db):
    monkeypatch.setenv("CDP_DATASETS_DIR", str(tmp_path / "datasets"))
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = PREFIX
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    store = Store(make_client(opensearch.info["url"]), prefix=PREFIX)
    yield store
    store._request("DELETE", f"/{PREFIX}*")


@pytest.fixture
def client():
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app("core")) as c:
        yield c


def token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))


def test_every_route_requires_airflow_auth(env, client):
    routes = [("GET", f"{API}/datasets"), ("POST", f"{API}/datasets"), ("GET", f"{API}/datasets/x"),
              ("DELETE", f"{API}/datasets/x"), ("POST", f"{API}/datasets/x/sync"), ("GET", f"{API}/jobs"),
              ("GET", f"{API}/jobs/some-job")]
    viewer = {"Authorization": f"Bearer {token('viewer')}"}
    for method, route in routes:
        assert client.request(method, route).status_code == 401, route
        no_role = client.request(method, route, headers={"Authorization": f"Bearer {token(None)}"})
        assert no_role.status_code == 403, route
    # a viewer reads, but may not create, sync or delete
    assert client.get(f"{API}/datasets", headers=viewer).status_code == 200
    assert client.post(f"{API}/datasets", json={"name": "x"}, headers=viewer).status_code == 403
    assert client.post(f"{API}/datasets/x/sync", headers=viewer).status_code == 403
    assert client.delete(f"{API}/datasets/x", headers=viewer).status_code == 403


@pytest.mark.slow  # ~60 s: the DAG is parsed and stored, then run once through dag.test()
def test_create_list_get_sync_jobs_and_delete(env, client, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    store = env
    admin = {"Authorization": f"Bearer {token('admin')}"}
    with http_files() as (base, handler):
        handler.files["/users.csv"] = (b"uid,plan\nu1,free\nu2,pro\n", "Wed, 01 Jan 2026 10:00:00 GMT")
        too_often = client.post(f"{API}/datasets", headers=admin,
                                json={"name": "users", "source": f"{base}/users.csv", "sync_interval": 60})
        assert too_often.status_code == 400
        assert too_often.json()["detail"] == {"code": "invalid_sync_interval", "message":
                                              "sync_interval must be at least 900 seconds (15 minutes); got 60"}

        created = client.post(f"{API}/datasets", headers=admin, json={
            "name": "users", "source": f"{base}/users.csv", "id_column": "uid", "sync_interval": 900})
        assert created.status_code == 201, created.text
        body = created.json()
        first_job = body["job_id"]
        assert body["name"] == "users" and body["state"] == "queued" and body["origin"] == "api"
        assert body["latest_job"]["job_id"] == first_job and body["latest_job"]["force"] is True
        assert (tmp_path / "datasets" / "registry" / "users.json").exists()  # the registry entry the DAG file reads
        assert client.post(f"{API}/datasets", headers=admin, json={
            "name": "users", "source": f"{base}/users.csv"}).status_code == 409
        with create_session() as session:
            dm = session.get(DagModel, "dataset_sync_users")
            assert dm is not None and not dm.is_paused  # known to Airflow without a restart, unpaused
            run = session.query(DagRun).filter_by(dag_id="dataset_sync_users", run_id=first_job).one()
            assert run.state == "queued" and run.conf == {"force": True}

        # a run of the same DAG (what the scheduler would execute) completes a job the API then shows
        dag = DagBag(dag_folder=str(ROOT / "dags" / "dataset_sync.py")).dags["dataset_sync_users"]
        done = dag.test(logical_date=None)  # like the API's runs (the schedule starts an interval later)
        assert done.state == "success"
        job = client.get(f"{API}/jobs/{done.run_id}", headers=admin).json()
        assert job["state"] == "complete" and job["result"]["loaded"] == 2 and job["dataset"] == "users"
        got = client.get(f"{API}/datasets/users", headers=admin).json()
        assert (got["rows"], got["index"].startswith(alias_name(PREFIX, "users")), got["sync_interval"]) == (2, True,
                                                                                                              900)
        assert got["last_sync"] and got["source"] == {"url": f"{base}/users.csv"}
        listed = client.get(f"{API}/datasets", headers=admin).json()["datasets"]
        assert "users" in [d["name"] for d in listed]

        synced = client.post(f"{API}/datasets/users/sync", headers=admin)
        assert synced.status_code == 202 and synced.json()["state"] == "queued", synced.text
        jobs = client.get(f"{API}/jobs", params={"dataset": "users"}, headers=admin).json()["jobs"]
        # (dag.test() replaced the API's queued first job: it clears runs with the same, empty, logical date)
        assert {j["job_id"] for j in jobs} == {done.run_id, synced.json()["job_id"]}
        assert [j["state"] for j in jobs] == ["queued", "complete"]  # newest first
        complete = client.get(f"{API}/jobs", params={"dataset": "users", "state": "complete"}, headers=admin).json()
        assert [j["job_id"] for j in complete["jobs"]] == [done.run_id]
        assert client.get(f"{API}/jobs", params={"state": "bogus"}, headers=admin).status_code == 400
        assert client.get(f"{API}/jobs/no-such-job", headers=admin).status_code == 404

        gone = client.delete(f"{API}/datasets/users", headers=admin)
        assert gone.status_code == 200 and gone.json()["registry_entry_removed"] and gone.json()["removed_indices"]
        assert client.get(f"{API}/datasets/users", headers=admin).status_code == 404
        assert not (tmp_path / "datasets" / "registry" / "users.json").exists()
        assert store._request("HEAD", f"/{alias_name(PREFIX, 'users')}", ok_statuses=(404,)) is False
        with create_session() as session:
            assert session.get(DagModel, "dataset_sync_users") is None  # its schedule is gone
    # config-declared datasets are not deleted through the API
    refused = client.delete(f"{API}/datasets/demo_products", headers=admin)
    assert refused.status_code == 409 and refused.json()["detail"]["code"] == "declared_in_config"


def test_job_state_comes_from_the_run_and_the_job_document():
    from types import SimpleNamespace

    from cdp_ingest_airflow.dataset_api import job_view

    def run(state):
        return SimpleNamespace(run_id="r1", dag_id="dataset_sync_x", state=state, run_type="manual", queued_at=None,
                               start_date=None, end_date=None, conf={"force": True})

    assert job_view(run("queued"), None, "x")["state"] == "queued"
    assert job_view(run("running"), None, "x")["state"] == "queued"  # no task has started the sync yet
    assert job_view(run("running"), {"state": "importing", "started": "t"}, "x")["state"] == "importing"
    # a task failed and will be retried: still importing, with the error so far
    assert job_view(run("running"), {"state": "importing", "started": "t", "error_code": "source_unavailable"},
                    "x")["state"] == "importing"
    done = job_view(run("success"), {"state": "complete", "changed": False, "reason": "not modified (HTTP 304)"}, "x")
    assert (done["state"], done["changed"], done["error_code"]) == ("complete", False, None)
    failed = job_view(run("failed"), {"state": "failure", "error_code": "no_data_file", "error_message": "404"}, "x")
    assert (failed["state"], failed["error_code"], failed["error_message"]) == ("failure", "no_data_file", "404")
    died = job_view(run("failed"), None, "x")  # ended without any task recording why
    assert (died["state"], died["error_code"]) == ("failure", "run_failed")


def test_parsing_in_a_request_thread_keeps_the_importers_signal_warnings_out_of_the_log(tmp_path):
    """The API server parses the dataset DAG file in a request thread, where Airflow's importer can set
    neither its SIGSEGV handler nor its import timeout and says so (the second with a traceback): each
    dataset created looked like a failure in the log. Only those two records of that thread are dropped."""
    import logging

    from airflow.dag_processing.dagbag import DagBag

    from cdp_ingest_airflow.dataset_api import _IMPORTER_LOGGER, quiet_thread_signal_warnings

    dag_file = tmp_path / "tiny_dag.py"
    dag_file.write_text("from airflow.sdk import DAG\n\nwith DAG('t_quiet_parse', schedule=None):\n    pass\n")
    records: list[logging.LogRecord] = []
    capture = logging.Handler(logging.DEBUG)
    capture.emit = records.append  # type: ignore[method-assign]
    importer = logging.getLogger(_IMPORTER_LOGGER)
    importer.addHandler(capture)

    def parse_in_a_thread(quiet: bool) -> list[str]:
        records.clear()
        bags: list = []

        def parse() -> None:
            with quiet_thread_signal_warnings() if quiet else contextlib.nullcontext():
                bags.append(DagBag(dag_folder=str(dag_file)))
                if quiet:  # another warning of the importer in the same thread is kept
                    importer.warning("a warning of its own")

        t = threading.Thread(target=parse)
        t.start()
        t.join()
        assert list(bags[0].dags) == ["t_quiet_parse"] and not bags[0].import_errors  # parsed all the same
        return [r.getMessage() for r in records if r.levelno >= logging.WARNING]

    try:
        loud = parse_in_a_thread(quiet=False)  # what Airflow logs (if its words change, the filter must follow)
        assert any(m.startswith("SIGSEGV signal handler registration failed") for m in loud), loud
        assert any(m.startswith("timeout can't be used in the current context") for m in loud), loud
        assert parse_in_a_thread(quiet=True) == ["a warning of its own"]
        assert not importer.filters  # the filter goes with the parse
        with quiet_thread_signal_warnings():  # the main thread: nothing is dropped
            importer.warning("SIGSEGV signal handler registration failed. Not in the main thread")
        assert [r.getMessage() for r in records][-1].startswith("SIGSEGV signal handler registration failed")
    finally:
        importer.removeHandler(capture)


@contextlib.contextmanager
def sqlite_locked(db: Path, seconds: float):
    """Another connection holds an exclusive lock on the SQLite metadata DB for ``seconds`` (what a scheduler
    or task runner writing at the same time does, for longer)."""
    locked = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        con.execute("ROLLBACK")
        con.close()

    t = threading.Thread(target=hold)
    t.start()
    assert locked.wait(30)
    try:
        yield
    finally:
        t.join()


@pytest.mark.slow  # ~70 s: locks held 7, 30 and 20 s
def test_create_waits_out_a_locked_sqlite_metadata_db_then_answers_503(env, client, airflow_db, monkeypatch):
    """A create that meets the metadata DB locked by another writer is tried again and succeeds once the lock
    is gone (it answered a bare 500 before); a lock that outlasts every attempt answers 503
    ``metadata_db_busy`` and leaves no registry entry behind, and a delete answered so leaves the dataset."""
    from cdp_ingest.datasets.spec import all_datasets
    from cdp_ingest_airflow import dataset_api

    admin = {"Authorization": f"Bearer {token('admin')}"}
    db = Path(airflow_db) / "airflow.db"
    with http_files() as (base, handler):
        handler.files["/users.csv"] = (b"uid,plan\nu1,free\n", "Wed, 01 Jan 2026 10:00:00 GMT")
        with sqlite_locked(db, 7):
            created = client.post(f"{API}/datasets", headers=admin, json={
                "name": "locked_once", "source": f"{base}/users.csv", "id_column": "uid"})
        assert created.status_code == 201, created.text
        assert created.json()["latest_job"]["job_id"] == created.json()["job_id"]

        monkeypatch.setattr(dataset_api, "DB_RETRY_DELAYS", ())  # one attempt (Airflow's DAG sync retries ~15 s)
        with sqlite_locked(db, 30):
            refused = client.post(f"{API}/datasets", headers=admin, json={
                "name": "locked_long", "source": f"{base}/users.csv", "id_column": "uid"})
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert detail["code"] == "metadata_db_busy" and "stayed locked" in detail["message"]
        assert "locked_long" not in all_datasets() and "locked_once" in all_datasets()
        assert client.get(f"{API}/datasets/locked_long", headers=admin).status_code == 404

        # a delete that meets a lock outlasting its attempts leaves the dataset as it was (entry and DAG)
        with sqlite_locked(db, 20):
            kept = client.delete(f"{API}/datasets/locked_once", headers=admin)
        assert kept.status_code == 503 and kept.json()["detail"]["code"] == "metadata_db_busy", kept.text
        assert "locked_once" in all_datasets()
        assert client.get(f"{API}/datasets/locked_once", headers=admin).status_code == 200
