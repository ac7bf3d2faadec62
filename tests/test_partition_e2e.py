"""The partition import DAG end to end with Airflow (dag.test) against moto S3 and the GCS emulator
through real Airflow connections, loading into the real OpenSearch.

Runs use ``dag.test(logical_date=...)``: the scheduled-run-equivalent logical date of day D is D+1 at the
scheduled time, whose data interval starts on D. (The sources here have no ``load_deadline``:
Airflow 3.3.2's ``dag.test()`` fails when a run of a DAG with a deadline alert succeeds — see
``test_partition_live.py`` for the deadline under a real scheduler and triggerer.)
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pendulum
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.mapping import profile_id_for
from cdp_ingest.partitions import SCHEMA
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]
TZ = "Europe/Berlin"
NS = uuid.UUID("5d1c7a0e-2f7b-4f36-9a55-1f0f3c6f7e21")
JSON_IDS_SCHEMA = SCHEMA.set(SCHEMA.get_field_index("identifiers"), pa.field("identifiers", pa.string()))


# ---- data ---------------------------------------------------------------------------------------------
def insert_id(n: int) -> str:
    return str(uuid.uuid5(NS, f"event-{n}"))


def ev(n: int, day: date, **over) -> dict:
    row = {
        "ts": datetime(day.year, day.month, day.day, 10, tzinfo=UTC) + timedelta(seconds=n, microseconds=123456),
        "event_key": "purchase" if n % 2 else "page_view",
        "identifiers": [("ID", f"anon-{n % 7}"), ("Device_Id", f"dev-{n % 5}"), ("session_id", f"sess-{n % 3}")]
        + ([("user_id", f"user-{n % 4}")] if n % 2 else []),
        "insert_id": insert_id(n),
        "metric_value": Decimal(n) + Decimal("0.000001"),
        "user_properties": [("Plan", "gold")],
        "event_properties": [("Page", f"/p/{n}")],
        "platform_properties": [("osName", "Android"), ("appVersion", "5.1.0")],
    }
    row.update(over)
    return row


def as_json_ids(row: dict) -> dict:
    return {**row, "identifiers": json.dumps({k: v for k, v in row["identifiers"]})}


def parquet(rows: list[dict], schema: pa.Schema = SCHEMA) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


@dataclass
class Expect:
    """What the store must hold: insert_id → event_key of the copy written first."""

    docs: dict[str, str] = field(default_factory=dict)

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.docs.setdefault(r["insert_id"], r["event_key"])


# ---- one isolated source per test -------------------------------------------------------------------
class PartitionEnv:
    def __init__(self, *, store: str, name: str, bucket: str, prefix: str, base: Path, opensearch, webhook):
        self.store_kind, self.name, self.bucket, self.prefix = store, name, bucket, prefix
        self.dag_id = f"partition_import_{name}"
        self.conn_id = "cdp_s3" if store == "s3" else "cdp_gcs"
        self.url = f"{'s3' if store == 's3' else 'gs'}://{bucket}/export/events"
        self.base = base
        self.errors_dir = base / "landing" / "partitions" / name / "errors"
        self.store = Store(make_client(opensearch.info["url"]), prefix=prefix)
        self.webhook = webhook
        self.config = base / "sources.yaml"
        self.write_config()

    def write_config(self, **sensor) -> None:
        cfg = {"sources": {self.name: {
            "url": self.url, "conn_id": self.conn_id, "store_conn_id": "cdp_opensearch",
            "source_id": f"src-{self.name}", "schedule": "0 2 * * *", "timezone": TZ, "max_reject_ratio": 0.5,
            "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 6, **sensor}}}}
        self.config.write_text(yaml.safe_dump(cfg))

    # objects
    def path(self, key: str):
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(f"{self.url}/{key}", conn_id=self.conn_id)

    def put(self, key: str, data: bytes) -> None:
        self.path(key).write_bytes(data)

    def put_day(self, day: date, files: dict[str, bytes], *, marker: bool = True) -> None:
        for name, data in files.items():
            self.put(f"dt={day}/{name}", data)
        if marker:
            self.mark(day)

    def mark(self, day: date) -> None:
        self.put(f"dt={day}/_SUCCESS", b"")

    # runs
    def run(self, day: date, conf: dict | None = None):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(ROOT / "dags" / "partition_import.py"))
        assert not bag.import_errors, bag.import_errors
        # the scheduled run of day D fires at D+1 02:00 local; its data interval starts on D
        logical = pendulum.datetime(day.year, day.month, day.day, 2, tz=TZ).add(days=1)
        return bag.dags[self.dag_id].test(logical_date=logical, run_conf=conf)

    # results
    def documents(self) -> dict[str, dict]:
        self.store.refresh([f"{self.prefix}event-*"])
        resp = self.store._request("POST", f"/{self.prefix}event-*/_search", body={"size": 10000},
                                   params={"ignore_unavailable": "true"}, ok_statuses=(404,)) or {}
        hits = resp.get("hits", {}).get("hits", [])
        out = {}
        for h in hits:
            assert h["_id"] == h["_source"]["id"]
            assert h["_id"] not in out, f"insert_id {h['_id']} stored twice"
            out[h["_id"]] = {**h["_source"], "_index": h["_index"]}
        return out

    def ledger(self) -> list[dict]:
        resp = self.store._request("POST", f"/{self.prefix}import-ledger/_search", body={"size": 1000},
                                   ok_statuses=(404,)) or {}
        return [h["_source"] for h in resp.get("hits", {}).get("hits", [])]

    def summaries(self) -> list[dict]:
        out = []
        for p in sorted(Path(self.webhook.info["inbox"]).glob("*.json")):
            msg = json.loads(p.read_text())
            if msg["path"] == "/cdp-ingest/partition-loaded" and msg["body"].get("source") == self.name:
                out.append(msg["body"])
        return out

    def error_rows(self, day: date) -> list[dict]:
        rows = []
        for p in sorted(self.errors_dir.glob("*.errors.csv")):
            entry = next(e for e in self.ledger() if e["error_file"] == str(p))
            if f"/dt={day}/" in entry["path"]:
                rows.extend(read_error_file(p))
        return rows


_counter = iter(range(1, 1 << 30))


def _create_bucket(kind: str, bucket: str) -> None:
    if kind == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        S3Hook(aws_conn_id="cdp_s3").create_bucket(bucket)
    else:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        storage.Client(project="cdp-test", credentials=AnonymousCredentials()).create_bucket(bucket)


@pytest.fixture
def partition_env(request, tmp_path, monkeypatch, opensearch, airflow_db, webhook):
    def make(kind: str) -> PartitionEnv:
        request.getfixturevalue("s3_server" if kind == "s3" else "gcs_server")
        n = next(_counter)
        name = f"e2e_{kind}_{n}_{os.getpid()}"
        prefix = f"t-part-{kind}-{n}-{os.getpid()}-"
        bucket = f"cdp-part-{kind}-{n}-{os.getpid()}"
        _create_bucket(kind, bucket)
        conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
        conn["extra"]["index_prefix"] = prefix
        monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
        monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
        monkeypatch.setenv("CDP_LANDING_DIR", str(tmp_path / "landing"))
        env = PartitionEnv(store=kind, name=name, bucket=bucket, prefix=prefix, base=tmp_path,
                           opensearch=opensearch, webhook=webhook)
        monkeypatch.setenv("CDP_PARTITION_SOURCES", str(env.config))
        return env

    return make


def _xcom_keys(dr) -> set[str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return {k for (k,) in session.query(XComModel.key).filter(XComModel.dag_id == dr.dag_id,
                                                                    XComModel.run_id == dr.run_id)}


def _states(dr) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ti in dr.get_task_instances():
        out.setdefault(ti.task_id, set()).add(str(ti.state))
    return out


# ---- the story, in both stores ----------------------------------------------------------------------------
D1, D2, D3 = date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_days_duplicates_bad_rows_markers_reruns_and_replaced_files(partition_env, kind):
    env = partition_env(kind)
    expect = Expect()

    # ---- day 1: two files, duplicates within and across them, bad rows, identifiers as JSON strings
    f0 = [ev(n, D1) for n in range(40)]
    f0.append(ev(200, D1, ts=datetime(2025, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)))  # late event: Feb index
    bad0 = [ev(100, D1, identifiers=[("device_id", "d")]),                                # no id
            ev(101, D1, platform_properties=[("appversion", "1")]),                      # no osname
            ev(102, D1, insert_id="not-a-uuid")]
    f1 = [as_json_ids(ev(n, D1)) for n in range(30, 50)]                                  # 30..39 in both files
    f1.append(as_json_ids(ev(45, D1)))                                                   # twice in one file
    bad1 = [ev(103, D1, identifiers='{"id": "x", "device_id": '),                        # broken JSON
            ev(104, D1, identifiers='{"id": "", "device_id": "d"}')]                     # empty id
    env.put_day(D1, {"part-00000.parquet": parquet(f0 + bad0), "part-00001.parquet": parquet(f1 + bad1,
                                                                                         JSON_IDS_SCHEMA)})
    env.put(f"dt={D1}/_temporary/0/part-x.parquet", parquet([ev(900, D1)]))  # not a file of the day
    env.put(f"dt={D1}/notes.txt", b"not data")
    dr = env.run(D1)
    assert dr.state == "success"
    # each task's result is one XCom: no copy of every key of the dicts the tasks return
    assert _xcom_keys(dr) == {"return_value"}
    expect.add(f0 + f1)
    docs = env.documents()
    assert set(docs) == set(expect.docs)
    assert insert_id(900) not in docs
    assert len(docs) == 51  # 0..49 and the late event

    s = env.summaries()[-1]
    assert (s["day"], s["files"], s["committed"], s["skipped"]) == (str(D1), 2, 2, 0)
    assert s["rows_in"] == 44 + 23
    assert s["rejected"] == 5
    assert s["loaded"] == 51
    assert s["duplicates"] == 11  # 30..39 again in file 1, 45 twice in file 1
    assert s["rows_in"] == s["loaded"] + s["rejected"] + s["duplicates"]

    entries = [e for e in env.ledger() if f"/dt={D1}/" in e["path"]]
    assert len(entries) == 2 and {e["status"] for e in entries} == {"committed"}
    assert sorted(e["path"].rsplit("/", 1)[-1] for e in entries) == ["part-00000.parquet", "part-00001.parquet"]
    assert all(e["path"].startswith(env.url) and e["checksum"].startswith("sha256:") for e in entries)
    assert all(e["rows_in"] == e["loaded"] + e["rejected"] + e["duplicates"] for e in entries)

    reasons = sorted(r[FAILURE_COLUMN] for r in env.error_rows(D1))
    assert reasons == sorted(["identifiers: required key 'id' is missing or empty",
                              "platform_properties: required key 'osname' is missing or empty",
                              "insert_id: not a UUID", "identifiers: not a JSON object",
                              "identifiers: required key 'id' is missing or empty"])
    assert all(set(r) == {*SCHEMA.names, FAILURE_COLUMN} for r in env.error_rows(D1))

    # documents: shape, profile linking, exact metric, monthly index by event time
    d7 = docs[insert_id(7)]
    assert d7["_index"] == f"{env.prefix}event-2025-03"
    assert d7["type"] == "purchase" and d7["source"] == {"id": f"src-{env.name}"}
    assert d7["profile"] == {"id": profile_id_for("user-3")}                 # user_id wins over id
    assert docs[insert_id(8)]["profile"] == {"id": profile_id_for("anon-1")}  # else id
    assert d7["session"]["id"] == "sess-1" and d7["device"] == {"id": "dev-2"}
    assert d7["metadata"]["time"]["create"] == "2025-03-01T10:00:07.123"
    assert d7["data"]["metric_value"] == "7.000001"
    assert d7["context"]["identifiers"]["id"] == "anon-0" and d7["os"] == {"name": "Android"}
    assert docs[insert_id(200)]["_index"] == f"{env.prefix}event-2025-02"
    assert docs[insert_id(41)]["context"]["identifiers"] == {"id": "anon-6", "device_id": "dev-1",
                                                             "session_id": "sess-2", "user_id": "user-1"}

    # ---- day 2: new events plus copies of day-1 events (dedup across days), one bad row
    f2 = [ev(n, D2) for n in range(50, 70)] + [ev(n, D2) for n in range(5)]
    env.put_day(D2, {"part-00000.parquet": parquet(f2 + [ev(105, D2, identifiers=[("id", "a")])])})
    assert env.run(D2).state == "success"
    expect.add(f2)
    s = env.summaries()[-1]
    assert (s["day"], s["rows_in"], s["loaded"], s["rejected"], s["duplicates"]) == (str(D2), 26, 20, 1, 5)
    assert set(env.documents()) == set(expect.docs)
    assert [r[FAILURE_COLUMN] for r in env.error_rows(D2)] == [
        "identifiers: required key 'device_id' is missing or empty"]

    # ---- day 3: files without _SUCCESS are never read; then the marker arrives late
    f3 = [ev(n, D3) for n in range(70, 80)]
    env.put_day(D3, {"part-00000.parquet": parquet(f3)}, marker=False)
    dr = env.run(D3)
    assert dr.state == "failed"
    states = _states(dr)
    assert states["wait_for_success"] == {"failed"}
    assert states["list_files"] == {"upstream_failed"}
    assert states.get("file.transform", {"upstream_failed"}) == {"upstream_failed"}
    assert not any(f"/dt={D3}/" in e["path"] for e in env.ledger())
    assert set(env.documents()) == set(expect.docs)

    env.write_config(timeout=60)
    timer = threading.Timer(3.0, env.mark, args=(D3,))
    timer.start()
    try:
        t0 = time.monotonic()
        assert env.run(D3).state == "success"
        assert time.monotonic() - t0 > 2.5
    finally:
        timer.join()
    expect.add(f3)
    assert set(env.documents()) == set(expect.docs)

    # ---- rerun of day 1 with unchanged files: skipped by the ledger, nothing new
    assert env.run(D1).state == "success"
    s = env.summaries()[-1]
    assert (s["files"], s["skipped"], s["loaded"], s["duplicates"]) == (2, 2, 0, 0)
    assert set(env.documents()) == set(expect.docs)

    # ---- day 2's file replaced after its first load: changed copies, new events, some dropped
    f2b = [ev(n, D2, event_key="changed") for n in range(50, 60)] + [ev(n, D2) for n in range(80, 85)]
    env.put_day(D2, {"part-00000.parquet": parquet(f2b)})
    assert env.run(D2).state == "success"
    expect.add(f2b)
    s = env.summaries()[-1]
    assert (s["rows_in"], s["loaded"], s["rejected"], s["duplicates"]) == (15, 5, 0, 10)
    docs = env.documents()
    assert set(docs) == set(expect.docs)
    assert {docs[insert_id(n)]["type"] for n in range(50, 60)} == {"page_view", "purchase"}  # first write wins
    assert insert_id(65) in docs  # dropped from the new file, still loaded from the first one
    d2_entries = [e for e in env.ledger() if f"/dt={D2}/" in e["path"]]
    assert len(d2_entries) == 2 and len({e["checksum"] for e in d2_entries}) == 2

    # ---- forced rerun of day 1: every file re-imported, every event a duplicate
    assert env.run(D1, conf={"force": True}).state == "success"
    s = env.summaries()[-1]
    assert (s["files"], s["skipped"], s["loaded"], s["duplicates"], s["rejected"]) == (2, 0, 0, 62, 5)
    assert {e["generation"] for e in env.ledger() if f"/dt={D1}/" in e["path"]} == {1}

    # exactly one document per insert_id, across every day, file and run
    docs = env.documents()
    assert set(docs) == set(expect.docs)
    assert len(docs) == len(expect.docs) == 51 + 20 + 10 + 5


def test_run_imports_its_data_interval_day_not_the_wall_clock_and_date_param_dry_run(partition_env):
    env = partition_env("s3")
    day = date(2025, 4, 1)
    wall_yesterday = datetime.now(UTC).date() - timedelta(days=1)
    env.put_day(day, {"a.parquet": parquet([ev(n, day) for n in range(5)])})
    env.put_day(wall_yesterday, {"a.parquet": parquet([ev(n, wall_yesterday) for n in range(300, 303)])})
    env.put_day(wall_yesterday + timedelta(days=1),
                {"a.parquet": parquet([ev(n, wall_yesterday) for n in range(310, 313)])})

    assert env.run(day).state == "success"  # logical date 2025-04-02 02:00 Berlin → day 2025-04-01
    assert set(env.documents()) == {insert_id(n) for n in range(5)}
    assert env.summaries()[-1]["day"] == "2025-04-01"
    assert all("/dt=2025-04-01/" in e["path"] for e in env.ledger())

    # date param: a manual run for another day; dry run stages and validates, loads nothing
    other = date(2025, 4, 5)
    env.put_day(other, {"a.parquet": parquet([ev(n, other) for n in range(400, 404)] +
                                             [ev(404, other, insert_id="x")])})
    dr = env.run(day, conf={"date": str(other), "dry_run": True})
    assert dr.state == "success"
    assert _states(dr)["file.load"] == {"skipped"}
    assert set(env.documents()) == {insert_id(n) for n in range(5)}
    assert [e["status"] for e in env.ledger() if "/dt=2025-04-05/" in e["path"]] == ["loading"]

    staged = list((env.base / "staging").rglob("staged.parquet"))
    assert staged == []  # a dry run leaves no staged files behind

    # a complete day with no data files: nothing to do, still accounted for
    empty = date(2025, 4, 6)
    env.mark(empty)
    assert env.run(empty).state == "success"
    assert (env.summaries()[-1]["day"], env.summaries()[-1]["files"]) == (str(empty), 0)

    assert env.run(day, conf={"date": str(other)}).state == "success"
    assert set(env.documents()) == {insert_id(n) for n in range(5)} | {insert_id(n) for n in range(400, 404)}
    assert [e["status"] for e in env.ledger() if "/dt=2025-04-05/" in e["path"]] == ["committed"]


def test_a_file_with_the_wrong_schema_fails_alone_without_retries(partition_env, webhook):
    env = partition_env("s3")
    day = date(2025, 5, 1)
    bad_schema = SCHEMA.set(SCHEMA.get_field_index("metric_value"), pa.field("metric_value", pa.float64()))
    bad_rows = [{**ev(n, day), "metric_value": 1.5} for n in range(3)]
    env.put_day(day, {"good.parquet": parquet([ev(n, day) for n in range(10)]),
                      "float-metric.parquet": parquet(bad_rows, bad_schema)})
    dr = env.run(day)
    assert dr.state == "failed"
    tis = {(ti.task_id, ti.map_index): ti for ti in dr.get_task_instances()}
    bad_ti = next(ti for (tid, _), ti in tis.items() if tid == "file.transform" and ti.state == "failed")
    assert bad_ti.try_number == 1  # AirflowFailException: a schema error is not retried
    assert tis[("record_accounting", -1)].state == "upstream_failed"
    assert set(env.documents()) == {insert_id(n) for n in range(10)}  # the good file is loaded all the same
    failed = [e for e in env.ledger() if e["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["path"].endswith("float-metric.parquet")
    assert "bad_schema" in failed[0]["message"] and "metric_value must be decimal(24,6)" in failed[0]["message"]
    notes = [json.loads(p.read_text()) for p in Path(webhook.info["inbox"]).glob("*.json")]
    assert any(n["path"] == "/cdp-ingest/task-failed" and n["body"]["dag_id"] == env.dag_id
               and n["body"]["task_id"] == "file.transform" for n in notes)
