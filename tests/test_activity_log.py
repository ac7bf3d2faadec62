"""The activity log of every source family and the operators' console API (issue 13), against the real
OpenSearch and, for the partition family, real DAG runs (dag.test) on a local ``file://`` partition source.

* ``ActivityLog.record`` (the API replay/dataset call): entries, timeline, statuses, filters, chart;
* the console's JSON API through Airflow's own api-server app: filters, an entry's page with its timeline,
  task links and notifications, the error-file download of a local (partition) error file, 401 without login;
* a partition day whose ``_SUCCESS`` never came: the sensor times out, the day is recorded ``timed_out``
  with the missing marker, and the webhook text names the day and the marker;
* CSV files through the CSV DAG: one entry per file with the ledger's counts, its steps and error file.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pendulum
import pytest
import yaml

from cdp_ingest.store import Store, make_client
from cdp_ingest_airflow.activity import ActivityLog, view_entries

pytestmark = [pytest.mark.services]
ROOT = Path(__file__).resolve().parents[1]
TZ = "UTC"
_n = iter(range(1, 1 << 30))


@pytest.fixture
def store(opensearch, monkeypatch) -> Store:
    prefix = f"t-act-{next(_n)}-{os.getpid()}-"
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = prefix
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    return Store(make_client(opensearch.info["url"]), prefix=prefix)


def test_record_keeps_one_entry_per_unit_with_a_timeline_counts_and_filters(store):
    log = ActivityLog(store)
    ids = {"dag_id": "replay_import_demo", "run_id": "manual__1"}
    log.record(source="replay", unit="archive-01.jsonl.gz", account="seg", status="processing", step="send",
               path="s3://b/archive-01.jsonl.gz", **ids)
    done = log.record(source="replay", unit="archive-01.jsonl.gz", account="seg", status="done", rows_in=10,
                      loaded=8, rejected=2, duplicates=0, error_file="/tmp/x.errors.csv", **ids)
    assert done["file_name"] == "archive-01.jsonl.gz" and done["error_file_on"] == "local"
    assert [e["status"] for e in done["events"]] == ["processing", "done"]
    assert done["events"][0]["step"] == "send" and done["started_at"] and done["finished_at"]
    log.record(source="dataset", unit="Orders", account="crm", status="timed_out", missing="table public.orders",
               message="the table did not appear within 1 h")
    log.record(source="csv", unit="crm-export.csv", account="demo", status="failed", error_code="validation",
               message="too many rejected rows")
    with pytest.raises(ValueError, match="status"):
        log.record(source="csv", unit="x.csv", status="exploded")
    with pytest.raises(ValueError, match="source"):
        log.record(source="CSV files!", unit="x.csv", status="done")

    def names(**f):
        return sorted(r["unit"] for r in view_entries(store, **f))

    assert names() == ["Orders", "archive-01.jsonl.gz", "crm-export.csv"]
    assert names(source="replay") == ["archive-01.jsonl.gz"]
    assert names(account="crm") == ["Orders"]
    assert names(q="ORDERS") == ["Orders"]  # case-insensitive substring of unit / file / manifest / path
    assert names(q="s3://b/") == ["archive-01.jsonl.gz"]
    assert names(status="timed_out") == ["Orders"]
    today = datetime.now(UTC).date()
    assert names(date_from=today, date_to=today) == names()
    assert names(date_to=today - timedelta(days=1)) == []
    [timed_out] = view_entries(store, status="timed_out")
    assert timed_out["missing"] == "table public.orders" and timed_out["source"] == "dataset"

    # the one-call form other families use (store from the connection; outside a task: no run ids)
    from cdp_ingest_airflow.activity import record_activity

    entry = record_activity(source="dataset", unit="Orders", account="crm", status="picked_up", step="sync")
    assert entry["status"] == "picked_up" and "missing" not in entry and entry["events"][-1]["step"] == "sync"
    assert record_activity(source="dataset", unit="Orders", status="bogus") is None  # logged, never raised

    chart = log.daily_counts(days=3)
    assert chart["replay"][-1] == {"day": today.isoformat(), "loaded": 8, "rejected": 2, "units": 1}
    assert [d["day"] for d in chart["replay"]] == [(today - timedelta(days=i)).isoformat() for i in (2, 1, 0)]
    assert chart["csv"][-1]["loaded"] == 0

    # an overwrite-mode re-import: its replaced rows are counted and shown as updated
    from cdp_ingest_airflow.activity_ui import render_list

    log.record(source="csv", unit="fix.csv", account="demo", status="done", rows_in=5, loaded=1, updated=3,
               rejected=1, duplicates=0)
    [fix] = [r for r in view_entries(store, source="csv") if r["unit"] == "fix.csv"]
    assert (fix["loaded"], fix["updated"], fix["rejected"]) == (1, 3, 1)
    page = render_list([fix], base="/", filters={}, accounts=[], charts={})
    assert "1 loaded · 3 updated" in page
    assert "updated" not in render_list([done], base="/", filters={}, accounts=[], charts={}).split("<tbody")[-1]


def test_an_index_from_before_gets_the_new_fields_and_its_entries_count_as_sftp(store):
    """Entries written by the SFTP-only version (no source/unit, old mapping) are still listed and filtered."""
    index = f"{store.prefix}sftp-activity"
    store._request("PUT", f"/{index}", body={"mappings": {"dynamic": False, "properties": {
        "id": {"type": "keyword"}, "account": {"type": "keyword"}, "status": {"type": "keyword"},
        "manifest": {"type": "keyword"}, "file_name": {"type": "keyword"},
        "updated_at": {"type": "date"}, "finished_at": {"type": "date"}, "loaded": {"type": "long"}}}})
    store._request("PUT", f"/{index}/_doc/old1", params={"refresh": "true"}, body={
        "id": "old1", "account": "acme", "manifest": "old.manifest", "file_name": "old.csv", "status": "done",
        "updated_at": "2026-01-02T10:00:00", "finished_at": "2026-01-02T10:00:00", "loaded": 5})
    ActivityLog(store).record(source="csv", unit="new.csv", status="done", loaded=1)
    assert [r["unit"] for r in view_entries(store, source="sftp")] == ["old.manifest"]
    assert [r["unit"] for r in view_entries(store, q="new")] == ["new.csv"]
    assert [r["unit"] for r in view_entries(store, q="OLD.CSV")] == ["old.manifest"]
    mapping = store._request("GET", f"/{index}/_mapping")[index]["mappings"]["properties"]
    assert mapping["source"] == {"type": "keyword"} and mapping["events"]["enabled"] is False


# ---- partitions through real DAG runs ----------------------------------------------------------------------
@pytest.fixture
def partition_source(store, tmp_path, monkeypatch, airflow_db, webhook):
    name = f"act_{next(_n)}_{os.getpid()}"
    base = tmp_path / "bucket" / "events"
    base.mkdir(parents=True)
    cfg = {"sources": {name: {"url": f"file://{base}", "schedule": "0 2 * * *", "timezone": TZ,
                              "max_reject_ratio": 0.9, "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 3}}}}
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("CDP_PARTITION_SOURCES", str(tmp_path / "sources.yaml"))
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("CDP_LANDING_DIR", str(tmp_path / "landing"))
    return name, base


def run_partition(name: str, day: date):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "partition_import.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[f"partition_import_{name}"].test(
        logical_date=pendulum.datetime(day.year, day.month, day.day, 2, tz=TZ).add(days=1))


def webhook_messages(webhook, event: str) -> list[dict]:
    out = []
    for p in sorted(Path(webhook.info["inbox"]).glob("*.json")):
        msg = json.loads(p.read_text())
        if msg["path"] == f"/cdp-ingest/{event}":
            out.append(msg["body"])
    return out


def write_day(base: Path, day: date, *, marker: bool) -> None:
    from test_partition_e2e import ev, parquet

    d = base / f"dt={day}"
    d.mkdir(parents=True)
    rows = [ev(n, day) for n in range(6)] + [ev(100, day, insert_id="not-a-uuid")]
    (d / "part-00000.parquet").write_bytes(parquet(rows))
    if marker:
        (d / "_SUCCESS").write_bytes(b"")


@pytest.fixture
def client(airflow_db):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app("core")) as c:
        yield c


def viewer() -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="u-viewer", role="viewer"))
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.airflow
@pytest.mark.slow
def test_partition_day_without_success_times_out_and_a_loaded_day_is_on_the_console(
        store, partition_source, webhook, client):
    name, base = partition_source
    missing_day, good_day = date(2026, 1, 5), date(2026, 1, 6)
    write_day(base, missing_day, marker=False)
    write_day(base, good_day, marker=True)

    dr = run_partition(name, missing_day)
    assert dr.state == "failed"
    rows = view_entries(store, source="partition", account=name, q=f"dt={missing_day}")
    day = next(r for r in rows if r["unit"] == f"dt={missing_day}")
    assert (day["status"], day["missing"], day["error_code"]) == ("timed_out", "_SUCCESS", "wait_timed_out")
    assert f"dt={missing_day}/_SUCCESS did not appear" in day["message"]
    assert [e["status"] for e in day["events"]][:1] == ["waiting"]
    assert "partition-wait-timed-out" in day["notified"]
    [sent] = [m for m in webhook_messages(webhook, "partition-wait-timed-out") if m["source"] == name]
    assert (sent["day"], sent["missing"]) == (str(missing_day), "_SUCCESS")
    assert sent["marker"].endswith(f"dt={missing_day}/_SUCCESS") and str(missing_day) in sent["message"]

    assert run_partition(name, good_day).state == "success"
    rows = {r["unit"]: r for r in view_entries(store, source="partition", account=name)}
    f = rows[f"dt={good_day}/part-00000.parquet"]
    assert (f["status"], f["rows_in"], f["loaded"], f["rejected"], f["duplicates"]) == ("done", 7, 6, 1, 0)
    assert f["dag_id"] == f"partition_import_{name}" and f["error_file_on"] == "local"
    d = rows[f"dt={good_day}"]
    assert (d["status"], d["loaded"], d["rejected"]) == ("done", 6, 1) and "partition-loaded" in d["notified"]

    # the console's JSON: filters, the file's own page, the error file through the authenticated endpoint
    api = "/cdp-activity/api/activity"
    assert client.get(api).status_code == 401
    got = client.get(api, params={"source": "partition", "q": "part-00000", "account": name}, headers=viewer())
    assert got.status_code == 200
    assert [r["unit"] for r in got.json()["entries"]] == [f"dt={good_day}/part-00000.parquet"]
    timed = client.get(api, params={"status": "timed_out", "account": name}, headers=viewer()).json()["entries"]
    assert [r["unit"] for r in timed] == [f"dt={missing_day}"]
    assert client.get(api, params={"date_from": "2026-13-01"}, headers=viewer()).status_code == 400

    one = client.get(f"{api}/{f['id']}", headers=viewer()).json()
    steps = [i["step"] for i in one["timeline"]]
    assert {"transform", "staged", "load", "committed"} <= set(steps)
    assert any(s.startswith("task file.load") for s in steps) and any(s.startswith("task record_accounting")
                                                                       for s in steps)
    assert one["links"]["dag_run"].startswith(f"/dags/partition_import_{name}/runs/")
    assert any("/tasks/file.load/mapped/0" in link for link in one["links"]["tasks"].values())

    csv = client.get(f"{api}/{f['id']}/error-file", headers=viewer())
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.content == Path(f["error_file"]).read_bytes()
    assert b"Failure Description" in csv.content and b"insert_id: not a UUID" in csv.content
    assert client.get(f"{api}/{f['id']}/error-file").status_code == 401

    # a file that cannot be read fails alone; its day is marked failed and names it
    bad_day = date(2026, 1, 7)
    write_day(base, bad_day, marker=True)
    (base / f"dt={bad_day}" / "part-00001.parquet").write_bytes(b"this is not parquet")
    assert run_partition(name, bad_day).state == "failed"
    rows = {r["unit"]: r for r in view_entries(store, source="partition", account=name, q=str(bad_day))}
    assert rows[f"dt={bad_day}/part-00000.parquet"]["status"] == "done"
    assert rows[f"dt={bad_day}/part-00001.parquet"]["status"] == "failed"
    assert rows[f"dt={bad_day}"]["status"] == "failed" and "part-00001.parquet" in rows[f"dt={bad_day}"]["message"]

    client.cookies.set("_token", viewer()["Authorization"].split()[1])
    page = client.get(f"/cdp-activity/entry/{d['id']}")
    listing = client.get("/cdp-activity/", params={"account": name})
    client.cookies.clear()
    assert page.status_code == 200 and f"dt={good_day}" in page.text and "partition-loaded" in page.text
    assert listing.status_code == 200 and "<svg" in listing.text and 'data-source="partition"' in listing.text
    assert "timed out" in listing.text and "missing: _SUCCESS" in listing.text


@pytest.mark.airflow
@pytest.mark.slow
def test_csv_files_are_on_the_activity_log_with_counts_steps_and_error_file(store, tmp_path, monkeypatch,
                                                                           airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from cdp_ingest import sample
    from cdp_ingest.ledger import Ledger

    landing = tmp_path / "landing"
    monkeypatch.setenv("CDP_LANDING_DIR", str(landing))
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
    base = landing / "demo"
    for sub in ("profiles", "sessions", "events"):
        (base / sub).mkdir(parents=True)
    sample.write_profiles(base / "profiles" / "crm.csv", 30)
    sample.write_sessions(base / "sessions" / "web.csv", 20, profiles=30)
    sample.write_events(base / "events" / "tracker.csv", 200, profiles=30, sessions=20)
    bag = DagBag(dag_folder=str(ROOT / "dags" / "csv_import.py"))
    assert bag.dags["csv_import_demo"].test().state == "success"

    rows = {r["unit"]: r for r in view_entries(store, source="csv")}
    assert set(rows) == {"crm.csv", "web.csv", "tracker.csv"}
    ledger = {e.import_id: e for e in Ledger(store).list()}
    for r in rows.values():
        e = ledger[r["import_id"]]
        assert (r["status"], r["account"], r["dag_id"]) == ("done", "demo", "csv_import_demo")
        assert (r["rows_in"], r["loaded"], r["rejected"], r["duplicates"]) == (e.rows_in, e.loaded, e.rejected,
                                                                               e.duplicates)
        assert [s["step"] for s in r["events"]] == ["transform", "staged", "load", "committed"]
        assert r.get("error_file") == e.error_file
    events = rows["tracker.csv"]
    assert events["rejected"] > 0 and Path(events["error_file"]).is_file() and events["error_file_on"] == "local"
    # the ledger entries are not listed a second time
    assert len(view_entries(store)) == 3


@pytest.mark.airflow
def test_error_files_of_every_kind_download_through_the_authenticated_endpoint(store, tmp_path, client):
    """A replay-style object-store URL (file:// here; s3:// / gs:// go through the same ObjectStoragePath
    with ``error_file_conn_id``) and a local path; a file that is gone is a clean 404."""
    log = ActivityLog(store)
    obj = tmp_path / "archive.errors.csv"
    obj.write_text("messageId,Failure Description\nm1,message larger than 32 KB\n")
    local = tmp_path / "orders.errors.csv"
    local.write_text("identity,Failure Description\n,identity is missing\n")
    by_url = log.record(source="replay", unit="archive.jsonl.gz", status="done", error_file=obj.as_uri())
    by_path = log.record(source="dataset", unit="orders", status="done", error_file=str(local))
    gone = log.record(source="dataset", unit="gone", status="failed", error_file=str(tmp_path / "gone.errors.csv"))
    assert (by_url["error_file_on"], by_path["error_file_on"]) == ("object", "local")
    api = "/cdp-activity/api/activity"
    for entry, src in ((by_url, obj), (by_path, local)):
        assert client.get(f"{api}/{entry['id']}/error-file").status_code == 401
        got = client.get(f"{api}/{entry['id']}/error-file", headers=viewer())
        assert got.status_code == 200 and got.content == src.read_bytes()
        assert src.name in got.headers["content-disposition"]
    assert client.get(f"{api}/{gone['id']}/error-file", headers=viewer()).status_code == 404
    assert client.get(f"{api}/no-such-entry/error-file", headers=viewer()).status_code == 404
