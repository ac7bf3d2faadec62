"""The partition DAG under a real Airflow (``airflow standalone``: scheduler, dag-processor, triggerer,
api-server, LocalExecutor) on its own SQLite metadata DB, against moto S3 and the real OpenSearch:

- ``airflow backfill create`` over a date range, then the same range again after one day's file was
  replaced (``--reprocess-behavior completed``): exactly one document per insert_id.
- The deadline alert: the run the scheduler creates on unpausing (yesterday, no ``_SUCCESS``) misses the
  configured local deadline, the triggerer runs ``partition_deadline_missed`` and the webhook receives one
  ``partition-deadline-missed``; the backfill runs (whose deadlines passed long ago) notify nothing.
- Of Airflow's components only the scheduler has the engine's libraries loaded (the preload).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from test_partition_e2e import _create_bucket, ev, insert_id, parquet

from airflow_env import airflow_env
from cdp_ingest.store import Store, make_client
from devservices import free_port
from live_airflow import LiveAirflow, standalone_env

pytestmark = [pytest.mark.services, pytest.mark.airflow, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
DAYS = [date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)]


def _pick_zone(now: datetime) -> str:
    """A zone where it is between 02:00 and 21:59 now, so a schedule an hour ago and a deadline half an
    hour ago fall on the same local day."""
    for zone in ("UTC", "Etc/GMT-6", "Etc/GMT+6", "Etc/GMT-12"):
        if 2 <= now.astimezone(ZoneInfo(zone)).hour <= 21:
            return zone
    raise AssertionError("unreachable: one of the zones is always in range")


def test_backfill_rerun_and_deadline_alert_with_the_real_scheduler(tmp_path, opensearch, s3_server, webhook):
    now = datetime.now(UTC)
    zone = _pick_zone(now)
    local = now.astimezone(ZoneInfo(zone))
    scheduled, due = local - timedelta(minutes=60), local - timedelta(minutes=30)
    name, prefix, bucket = f"live_{os.getpid()}", f"t-live-{os.getpid()}-", f"cdp-live-{os.getpid()}"
    dag_id = f"partition_import_{name}"
    url = f"s3://{bucket}/events"
    _create_bucket("s3", bucket)

    from airflow.sdk import ObjectStoragePath

    def put(day: date, fname: str, rows: list[dict]) -> None:
        ObjectStoragePath(f"{url}/dt={day}/{fname}", conn_id="cdp_s3").write_bytes(parquet(rows))
        ObjectStoragePath(f"{url}/dt={day}/_SUCCESS", conn_id="cdp_s3").write_bytes(b"")

    # three days; each day repeats some events of the day before
    expected: dict[str, str] = {}
    for i, day in enumerate(DAYS):
        rows = [ev(n, day) for n in range(i * 20 - 5 if i else 0, i * 20 + 20)]
        put(day, "part-00000.parquet", rows)
        for r in rows:
            expected.setdefault(r["insert_id"], r["event_key"])

    home = tmp_path / "airflow"
    home.mkdir()
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": {name: {
        "url": url, "conn_id": "cdp_s3", "source_id": "live", "timezone": zone,
        "schedule": f"{scheduled.minute} {scheduled.hour} * * *", "load_deadline": f"{due:%H:%M}",
        "start_date": "2025-01-01", "max_active_runs": 3,
        "sensor": {"mode": "reschedule", "poke_interval": 2, "timeout": 20}}}}))
    port = free_port()
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = prefix
    env = {**os.environ, **airflow_env(home, tmp_path / "landing"),
           "AIRFLOW_CONN_CDP_OPENSEARCH": json.dumps(conn), "CDP_PARTITION_SOURCES": str(sources)}
    env = standalone_env(env, port)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")]))
    af = LiveAirflow(home, env)
    store = Store(make_client(opensearch.info["url"]), prefix=prefix)
    inbox = Path(webhook.info["inbox"])
    try:
        af.boot(dag_id)

        # the scheduler loaded the engine's libraries before forking the LocalExecutor's workers (so each
        # task process starts with them); no other component did (cdp_ingest_airflow.preload)
        procs = af.components()
        assert {"scheduler", "dag-processor", "triggerer"} <= set(procs), procs
        arrow = {c for c, pid in procs.items() if "libarrow" in Path(f"/proc/{pid}/maps").read_text()}
        assert arrow == {"scheduler"}, procs

        # the scheduler's own run: yesterday (local) has no _SUCCESS, and its deadline has passed already
        af.cli("dags", "unpause", dag_id)
        yesterday = (local - timedelta(days=1)).date()

        def deadline_notes() -> list[dict]:
            notes = [json.loads(p.read_text()) for p in sorted(inbox.glob("*.json"))]
            return [n["body"] for n in notes
                    if n["path"] == "/cdp-ingest/partition-deadline-missed" and n["body"].get("dag_id") == dag_id]

        notes = af.wait("the deadline alert", deadline_notes, timeout=240)
        assert len(notes) == 1
        assert notes[0]["run_type"] == "scheduled" and notes[0]["source"] == name
        assert notes[0]["day"] == str(yesterday)
        assert notes[0]["deadline_local"] == datetime.combine(
            yesterday + timedelta(days=1), due.time().replace(second=0, microsecond=0),
            tzinfo=ZoneInfo(zone)).isoformat()

        # backfill over the three days (bounds in the source's zone, the last day included to its end)
        offset = local.isoformat()[-6:]
        first, last = f"{DAYS[0]}T00:00:00{offset}", f"{DAYS[-1]}T23:59:59{offset}"
        runs = af.run_backfill(dag_id, first, last, expect=3)
        assert len(runs) == 3 and {r[1] for r in runs} == {"success"}, runs
        store.refresh([f"{prefix}event-*"])
        assert store.count(f"{prefix}event-*") == len(expected) == 60

        # day 2's file replaced after its first load, then the same range backfilled again
        replaced = [ev(n, DAYS[1], event_key="changed") for n in range(20, 30)] + \
            [ev(n, DAYS[1]) for n in range(500, 505)]
        put(DAYS[1], "part-00000.parquet", replaced)
        runs = af.run_backfill(dag_id, first, last, "--reprocess-behavior", "completed", expect=3)
        assert len(runs) == 3 and {r[1] for r in runs} == {"success"}, runs
        for r in replaced:
            expected.setdefault(r["insert_id"], r["event_key"])
        store.refresh([f"{prefix}event-*"])
        resp = store._request("POST", f"/{prefix}event-*/_search", body={"size": 1000, "_source": ["type"]})
        got = {h["_id"]: h["_source"]["type"] for h in resp["hits"]["hits"]}
        assert got == expected  # one document per insert_id; the replaced copies did not overwrite
        assert insert_id(500) in got and got[insert_id(25)] != "changed"

        ledger = store._request("POST", f"/{prefix}import-ledger/_search", body={"size": 100})["hits"]["hits"]
        entries = [h["_source"] for h in ledger]
        assert len(entries) == 4 and {e["status"] for e in entries} == {"committed"}  # 3 days + day 2's new file
        assert sum(e["loaded"] for e in entries) == len(expected)
        assert all(e["rows_in"] == e["loaded"] + e["rejected"] + e["duplicates"] for e in entries)

        # a manual run for one more day, triggered through the REST API as the UI's Trigger button does
        # (the day in its conf): its new events are loaded, those of the day before are duplicates
        extra_day = DAYS[-1] + timedelta(days=1)
        rows = [ev(n, extra_day) for n in range(55, 70)]
        put(extra_day, "part-00000.parquet", rows)
        run = af.trigger(dag_id, "rest-manual", {"date": str(extra_day)})
        assert run["run_type"] == "manual" and run["conf"] == {"date": str(extra_day)}, run
        state, end = af.wait("the REST-triggered run", lambda: af.run_end(dag_id, "rest-manual"), timeout=240)
        assert state == "success" and end.tzinfo is not None and end <= datetime.now(UTC)
        store.refresh([f"{prefix}event-*"])
        assert store.count(f"{prefix}event-*") == len(expected) + 10  # insert_ids 60-69 are new
        entry = [h["_source"] for h in store._request("POST", f"/{prefix}import-ledger/_search", body={
            "size": 100})["hits"]["hits"] if f"/dt={extra_day}/" in h["_source"]["path"]]
        assert [(e["rows_in"], e["loaded"], e["duplicates"]) for e in entry] == [(15, 10, 5)], entry

        # no deadline notification for any backfill run, still only the scheduled one
        assert len(deadline_notes()) == 1
    finally:
        af.stop()
