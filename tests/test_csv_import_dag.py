"""The CSV import DAG end to end with Airflow (dag.test) against the real OpenSearch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cdp_ingest import sample
from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def landing(tmp_path, monkeypatch, opensearch):
    root = tmp_path / "landing"
    monkeypatch.setenv("CDP_LANDING_DIR", str(root))
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = "t-csvdag-"
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    return root / "demo"


def write_inputs(base: Path, profiles: int = 300, sessions: int = 200, events: int = 3000
                 ) -> dict[str, sample.Expected]:
    """The demo CSV source's three folders with generated files (also used by test_csv_chunks_dag)."""
    for sub in ("profiles", "sessions", "events"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return {
        "profile": sample.write_profiles(base / "profiles" / "crm.csv", profiles),
        "session": sample.write_sessions(base / "sessions" / "web.csv", sessions, profiles=profiles),
        "event": sample.write_events(base / "events" / "tracker.csv", events, profiles=profiles, sessions=sessions),
    }


def _run(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors
    return bag.dags[dag_id].test()


def test_csv_import_dag_loads_everything_once(landing, airflow_db, opensearch, tmp_path):
    expected = write_inputs(landing)
    backup = tmp_path / "backup"
    shutil.copytree(landing, backup)
    dr = _run("csv_import_demo")
    assert dr.state == "success"

    store = Store(make_client(opensearch.info["url"]), prefix="t-csvdag-")
    assert store.count("t-csvdag-profile") == expected["profile"].good
    assert store.count("t-csvdag-session") == expected["session"].good
    assert store.count("t-csvdag-event-*") == expected["event"].good
    # events land in the monthly index of their own time
    assert store.count("t-csvdag-event-2025-11") > 0 and store.count("t-csvdag-event-2025-12") > 0

    errors = sorted((landing / "errors").glob("*.errors.csv"))
    assert len(errors) == 3
    rows = {p.name.split(".")[0]: read_error_file(p) for p in errors}
    assert len(rows["crm"]) == expected["profile"].bad
    assert all(r[FAILURE_COLUMN] for r in rows["crm"])
    assert {r[FAILURE_COLUMN] for r in rows["crm"]} == {"column 'email': not a valid email address",
                                                        "column 'loyalty_points': expected INTEGER"}
    assert len(rows["tracker"]) == expected["event"].bad

    processed = list((landing / "processed").rglob("*.csv"))
    assert sorted(p.name for p in processed) == ["crm.csv", "tracker.csv", "web.csv"]
    assert not list((landing / "events").glob("*.csv"))

    ledger = store._request("POST", "/t-csvdag-import-ledger/_search", body={"size": 10})["hits"]["hits"]
    entries = [h["_source"] for h in ledger]
    assert {e["status"] for e in entries} == {"committed"}
    ev = next(e for e in entries if e["kind"] == "event")
    assert (ev["rows_in"], ev["loaded"], ev["rejected"], ev["duplicates"]) == (
        3000, expected["event"].good, expected["event"].bad, expected["event"].duplicates)

    # the same files dropped again: nothing new is loaded, the run still succeeds
    for sub in ("profiles", "sessions", "events"):
        for f in (backup / sub).glob("*.csv"):
            shutil.copy(f, landing / sub / f.name)
    dr = _run("csv_import_demo")
    assert dr.state == "success"
    store.refresh(["t-csvdag-*"])
    assert store.count("t-csvdag-profile") == expected["profile"].good
    assert store.count("t-csvdag-event-*") == expected["event"].good
