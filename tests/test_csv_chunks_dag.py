"""csv_import_demo with its files split into chunks (dag.test, real OpenSearch): the same documents,
counts and error files as one chunk per file; a chunk whose load dies part-way, then a rerun, ends with
exact accounting and no extra documents."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_csv_import_dag import write_inputs as write_csv_inputs

from cdp_ingest import sample
from cdp_ingest.chunks import chunk_bytes_from, plan_csv
from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.errors import StoreError
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]
SMALL_MB = "0.004"  # ~4 KB: every sample file below is 3 chunks or more


@pytest.fixture
def landing(tmp_path, monkeypatch, opensearch):
    root = tmp_path / "landing"
    monkeypatch.setenv("CDP_LANDING_DIR", str(root))
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
    return root / "demo"


def use_prefix(monkeypatch, opensearch, prefix: str, **extra) -> Store:
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"] = {**conn.get("extra", {}), "index_prefix": prefix, **extra}
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    return Store(make_client(opensearch.info["url"]), prefix=prefix)


def write_inputs(base: Path) -> dict[str, sample.Expected]:
    return write_csv_inputs(base, profiles=200, sessions=120, events=600)


def run(no_retries: bool = False, **conf):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "csv_import.py"))
    assert not bag.import_errors
    dag = bag.dags["csv_import_demo"]
    if no_retries:  # the injected failure should fail the run now, not after minutes of retry delays
        for t in dag.tasks:
            t.retries = 0
    return dag.test(run_conf=conf or None)


def restore(backup: Path, landing: Path) -> None:
    for sub in ("profiles", "sessions", "events"):
        for f in (backup / sub).glob("*.csv"):
            shutil.copy2(f, landing / sub / f.name)


def documents(store: Store) -> dict[str, dict]:
    """Every stored document by index kind and id, without what depends on the run's clock."""
    store.refresh([f"{store.prefix}*"])
    out = {}
    for pattern in ("profile", "session", "event-*"):
        resp = store._request("POST", f"/{store.prefix}{pattern}/_search",
                              body={"size": 10_000, "query": {"match_all": {}}})
        for h in resp["hits"]["hits"]:
            src = h["_source"]
            src.get("metadata", {}).pop("time", None)  # insert/update times: the run's clock
            out[f"{h['_index'].removeprefix(store.prefix)}/{h['_id']}"] = src
    return out


def ledger(store: Store) -> dict[str, dict]:
    hits = store._request("POST", f"/{store.prefix}import-ledger/_search", body={"size": 50})["hits"]["hits"]
    return {h["_source"]["kind"]: h["_source"] for h in hits}


def error_files(landing: Path) -> dict[str, bytes]:
    found = {p.name: p.read_bytes() for p in (landing / "errors").glob("*.errors.csv")}
    shutil.rmtree(landing / "errors", ignore_errors=True)
    return found


@pytest.mark.slow
def test_chunked_files_give_the_documents_counts_and_error_files_of_one_chunk(landing, airflow_db, opensearch,
                                                                               monkeypatch, tmp_path):
    expected = write_inputs(landing)
    backup = tmp_path / "backup"
    shutil.copytree(landing, backup)
    monkeypatch.setenv("CDP_CSV_CHUNK_MB", SMALL_MB)
    for sub in ("profiles", "sessions", "events"):  # the case under test: several chunks per file
        [f] = (landing / sub).glob("*.csv")
        assert len(plan_csv(f, chunk_bytes_from()).chunks) >= 3

    chunked = use_prefix(monkeypatch, opensearch, "t-chunked-")
    assert run().state == "success"
    monkeypatch.delenv("CDP_CSV_CHUNK_MB")
    chunked_errors = error_files(landing)
    restore(backup, landing)  # same paths and bytes: the same unit and import ids
    whole = use_prefix(monkeypatch, opensearch, "t-whole-")
    assert run().state == "success"
    whole_errors = error_files(landing)

    assert chunked_errors == whole_errors and len(whole_errors) == 3  # byte for byte, rows in file order
    assert {name.split(".")[0] for name in whole_errors} == {"crm", "web", "tracker"}
    a, b = ledger(chunked), ledger(whole)
    for kind, exp in expected.items():
        counts = [(e["import_id"], e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"])
                  for e in (a[kind], b[kind])]
        assert counts[0] == counts[1] == (b[kind]["import_id"], "committed", exp.rows, exp.good, exp.bad,
                                          exp.duplicates)
        assert a[kind]["extra"].get("chunks", 1) >= 3 and "chunks" not in b[kind]["extra"]
    from cdp_ingest_airflow.activity import view_entries

    for store in (chunked, whole):  # one activity entry per file, chunked or not, with the file's counts
        units = {r["unit"]: r for r in view_entries(store, source="csv")}
        assert set(units) == {"crm.csv", "web.csv", "tracker.csv"}
        for r in units.values():
            e = ledger(store)[r["type"]]
            assert (r["status"], r["rows_in"], r["loaded"], r["rejected"], r["duplicates"]) == (
                "done", e["rows_in"], e["loaded"], e["rejected"], e["duplicates"])
            assert [s["step"] for s in r["events"]] == ["transform", "staged", "load", "committed"]
    docs_chunked, docs_whole = documents(chunked), documents(whole)
    assert len(docs_whole) == sum(e.good for e in expected.values())
    assert docs_chunked == docs_whole  # same ids, same bodies, same metadata.aux.cdp (import_id, row)


@pytest.mark.slow
def test_a_chunk_load_that_dies_part_way_then_a_rerun_ends_exact(landing, airflow_db, opensearch, monkeypatch):
    expected = write_inputs(landing)["event"]
    events = landing / "events" / "tracker.csv"
    monkeypatch.setenv("CDP_CSV_CHUNK_MB", SMALL_MB)
    plan = plan_csv(events, chunk_bytes_from())
    assert len(plan.chunks) >= 3
    victim = plan.chunks[1]
    # small bulk requests, so the chunk is several requests and the failing one comes after others went through
    store = use_prefix(monkeypatch, opensearch, "t-chunkfail-", bulk_chunk_docs=10)
    marker = f'"e-{victim.first_row - 1 + victim.rows // 2:010d}"'.encode()  # a row in the middle of chunk 1
    original = Store._send_bulk
    died = []

    def dying_send(self, payload, *args, **kw):
        body = b"".join(payload) if isinstance(payload, list) else payload  # a bulk body is a list of blocks
        if marker in body:
            died.append(body.count(b"\n") // 2)
            raise StoreError("worker lost its connection")
        return original(self, payload, *args, **kw)

    monkeypatch.setattr(Store, "_send_bulk", dying_send)
    assert run(no_retries=True).state == "failed"
    assert died, "the fault never fired"
    entry = ledger(store)["event"]
    assert entry["status"] == "failed" and "chunk 2/" in entry["message"]
    store.refresh([f"{store.prefix}*"])
    partial = store.count(f"{store.prefix}event-*")
    assert 0 < partial < expected.good  # other chunks and part of chunk 1 were written
    assert events.exists() and not list((landing / "errors").glob("tracker.*"))  # neither archived nor committed

    monkeypatch.setattr(Store, "_send_bulk", original)
    assert run().state == "success"
    entry = ledger(store)["event"]
    assert (entry["status"], entry["rows_in"], entry["loaded"], entry["rejected"], entry["duplicates"]) == (
        "committed", expected.rows, expected.good, expected.bad, expected.duplicates)
    assert entry["import_id"].endswith("-0")  # the rerun resumed the same import: its earlier writes are its own
    store.refresh([f"{store.prefix}*"])
    assert store.count(f"{store.prefix}event-*") == expected.good
    [err] = (landing / "errors").glob("tracker.*.errors.csv")
    rows = read_error_file(err)
    assert len(rows) == expected.bad and all(r[FAILURE_COLUMN] for r in rows)
    ids = [r["insert_id"] for r in rows]
    assert ids == sorted(ids)  # the chunks' error rows merged in file order
    assert not list((landing / "events").glob("*.csv")) and list((landing / "processed").rglob("tracker.csv"))


@pytest.mark.slow
def test_dry_run_and_force_with_chunks(landing, airflow_db, opensearch, monkeypatch):
    (landing / "events").mkdir(parents=True)
    exp = sample.write_events(landing / "events" / "tracker.csv", 400, profiles=50, sessions=20)
    monkeypatch.setenv("CDP_CSV_CHUNK_MB", SMALL_MB)
    store = use_prefix(monkeypatch, opensearch, "t-chunkparams-")

    # dry run: every chunk staged and validated, nothing loaded, committed or archived
    assert run(dry_run=True).state == "success"
    entry = ledger(store)["event"]
    assert entry["status"] == "loading" and entry["rows_in"] == 0
    assert store.count(f"{store.prefix}event-*") == 0 and (landing / "events" / "tracker.csv").exists()

    assert run().state == "success"  # the real run resumes the same import
    first = ledger(store)["event"]
    assert (first["import_id"], first["status"], first["loaded"]) == (entry["import_id"], "committed", exp.good)

    # force: the archived file dropped again is re-imported under a new generation: its writes are duplicates
    [archived] = (landing / "processed").rglob("tracker.csv")
    shutil.copy2(archived, landing / "events" / "tracker.csv")
    assert run(force=True).state == "success"
    again = ledger(store)["event"]
    assert again["import_id"].endswith("-1") and again["extra"]["chunks"] >= 3
    assert (again["rows_in"], again["loaded"], again["rejected"], again["duplicates"]) == (
        exp.rows, 0, exp.bad, exp.good + exp.duplicates)
    store.refresh([f"{store.prefix}*"])
    assert store.count(f"{store.prefix}event-*") == exp.good


def test_a_file_that_fails_its_plan_fails_the_run_and_later_kinds_wait(landing, airflow_db, opensearch, monkeypatch):
    (landing / "profiles").mkdir(parents=True)
    (landing / "events").mkdir(parents=True)
    (landing / "profiles" / "crm.csv").write_text("first_name,last_name\nAda,Lovelace\n")  # no identity column
    sample.write_events(landing / "events" / "tracker.csv", 50, profiles=5, sessions=5)
    store = use_prefix(monkeypatch, opensearch, "t-chunkplanfail-")
    dr = run(no_retries=True)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "failed"
    assert states["profile.plan"] == "success" and states["profile.commit"] == "failed"
    # sessions and events wait (profiles first): their plan never ran, their commit (all_done) skipped instead
    # of failing, and their archive passes the failure on to the next kind
    for kind in ("session", "event"):
        assert (states[f"{kind}.plan"], states[f"{kind}.commit"], states[f"{kind}.archive"]) == (
            "upstream_failed", "skipped", "upstream_failed")
    entries = ledger(store)
    assert set(entries) == {"profile"} and entries["profile"]["status"] == "failed"
    assert "email" in entries["profile"]["message"]
    assert (landing / "events" / "tracker.csv").exists() and (landing / "profiles" / "crm.csv").exists()
