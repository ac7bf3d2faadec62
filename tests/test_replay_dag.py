"""replay_<name> DAGs end to end (dag.test) against the contract receiver and the real OpenSearch."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import replay_kit as k
import yaml

from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]
PREFIX = "t-replaydag-"


@pytest.fixture(scope="module")
def receiver():
    r = k.start_receiver()
    yield r
    r.stop()


@pytest.fixture
def env(tmp_path, monkeypatch, opensearch, receiver):
    receiver.control()
    monkeypatch.setenv("CDP_LANDING_DIR", str(tmp_path / "landing"))
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = PREFIX
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_CONN_T_SEGMENT", json.dumps({"conn_type": "http", "host": receiver.url,
                                                             "login": k.WRITE_KEY}))
    monkeypatch.setenv("AIRFLOW_CONN_T_TRACARDI", json.dumps({"conn_type": "http", "host": receiver.url,
                                                              "extra": {"source_id": k.SOURCE_ID}}))
    monkeypatch.setenv("AIRFLOW_CONN_T_LEGACY", json.dumps({"conn_type": "http", "host": receiver.url,
                                                            "login": k.WRITE_KEY, "extra": {"historical": False}}))
    cfg = {"replays": {
        "hist": {"description": "test", "source": {"url": "segment"},
                 "destination": {"type": "segment", "conn_id": "t_segment"},
                 "integrations": {"All": False, "Amplitude": True}, "settings": {"max_batch_messages": 400},
                 "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 30}},
        "legacy": {"source": {"url": "segment"}, "destination": {"type": "segment", "conn_id": "t_legacy"},
                   "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 30}},
        "empty": {"source": {"url": "nothing-here", "marker": "_SUCCESS"},
                  "destination": {"type": "segment", "conn_id": "t_segment"},
                  "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 3}},
        "s3arch": {"source": {"url": "s3://t-replay-archive/segment-logs/src1", "conn_id": "cdp_s3"},
                   "destination": {"type": "segment", "conn_id": "t_segment"},
                   "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 30}},
        "mine": {"source": {"url": "store:", "window": {"start": "2025-06-01", "end": "2025-07-01"}},
                 "destination": {"type": "tracardi", "conn_id": "t_tracardi"},
                 "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 30}},
    }}
    path = tmp_path / "replays.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("CDP_REPLAYS", str(path))
    return tmp_path / "landing"


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors
    return bag.dags[dag_id]


def _store(opensearch) -> Store:
    return Store(make_client(opensearch.info["url"]), prefix=PREFIX)


def test_segment_replay_dag(env, airflow_db, opensearch, receiver):
    day1 = k.segment_messages(1500, prefix="d1")
    day1[7]["userId"] = day1[7]["anonymousId"] = None  # no identity: error file
    k.write_archive(env / "segment" / "2021-03-01" / "1614556800000.a1b2.gz", day1)
    k.write_archive(env / "segment" / "2021-03-02" / "part.jsonl", k.segment_messages(700, prefix="d2"), gz=False)

    dry = _dag("replay_hist").test(run_conf={"dry_run": True})
    assert dry.state == "success" and receiver.stats()["deliveries"] == 0

    dr = _dag("replay_hist").test()
    assert dr.state == "success"
    got = receiver.messages()
    assert len(got) == 1499 + 700 and receiver.stats()["duplicates"] == 0
    assert all(m["integrations"] == {"All": False, "Amplitude": True} for m in got.values())
    assert {m["timestamp"] for m in got.values()} >= {day1[0]["timestamp"], day1[-1]["timestamp"]}

    store = _store(opensearch)
    hits = store._request("POST", f"/{PREFIX}import-ledger/_search", body={"size": 10,
                          "query": {"term": {"kind": "replay"}}})["hits"]["hits"]
    entries = {Path(h["_source"]["path"]).name: h["_source"] for h in hits}
    assert {e["status"] for e in entries.values()} == {"committed"}
    first = entries["1614556800000.a1b2.gz"]
    assert (first["rows_in"], first["loaded"], first["rejected"], first["duplicates"]) == (1500, 1499, 1, 0)
    rows = list(csv.DictReader(open(first["error_file"])))
    assert [r["line"] for r in rows] == ["8"] and "userId or anonymousId" in rows[0]["Failure Description"]

    acts = store._request("POST", f"/{PREFIX}sftp-activity/_search", body={"size": 20, "query": {"term": {
        "source": "replay"}}})["hits"]["hits"]
    act = {a["_source"]["unit"]: a["_source"] for a in acts}
    assert act["1614556800000.a1b2.gz"]["status"] == "done"
    assert (act["1614556800000.a1b2.gz"]["loaded"], act["1614556800000.a1b2.gz"]["rejected"]) == (1499, 1)
    assert act["part.jsonl"]["status"] == "done" and act["part.jsonl"]["dag_id"] == "replay_hist"

    # a second run finds both files committed in the ledger: nothing is sent again
    before = receiver.stats()["requests"]
    assert _dag("replay_hist").test().state == "success"
    assert receiver.stats()["requests"] == before


def test_destination_not_accepting_historical_timestamps_is_refused(env, airflow_db, receiver):
    k.write_archive(env / "segment" / "a.jsonl.gz", k.segment_messages(20))
    dr = _dag("replay_legacy").test()
    assert dr.state == "failed"
    ti = next(t for t in dr.get_task_instances() if t.task_id == "unit.replay")
    assert ti.state == "failed"
    assert receiver.stats()["requests"] == 0


def test_store_events_replayed_to_tracardi(env, airflow_db, opensearch, receiver):
    store = _store(opensearch)
    store.ensure_templates()
    for i in range(30):
        doc = {"id": f"ev-{i}", "type": "purchase" if i % 2 else "page-view", "properties": {"n": i},
               "metadata": {"time": {"insert": f"2025-06-{1 + i % 28:02d}T10:00:00"}},
               "profile": {"id": f"p-{i % 4}"}, "session": {"id": f"s-{i % 6}"}, "source": {"id": "web"}}
        store._request("PUT", f"/{PREFIX}event-2025-06/_doc/{doc['id']}", body=doc)
    store._request("PUT", f"/{PREFIX}event-2025-07/_doc/late", body={
        "id": "late", "type": "x", "metadata": {"time": {"insert": "2025-07-02T00:00:00"}}, "profile": {"id": "p"}})
    store.refresh([f"{PREFIX}event-*"])
    dr = _dag("replay_mine").test()
    assert dr.state == "success"
    got = receiver.messages()
    assert len(got) == 30  # the July event is outside the window
    assert {m["timestamp"][:10] for m in got.values()} == {f"2025-06-{1 + i % 28:02d}" for i in range(30)}
    assert {m["userId"] for m in got.values()} == {"p-0", "p-1", "p-2", "p-3"}
    assert receiver.stats()["track_payloads"] <= 12  # grouped per profile and session


def test_archive_that_never_comes_is_on_the_activity_log(env, airflow_db, opensearch, receiver):
    (env / "nothing-here").mkdir(parents=True)
    (env / "nothing-here" / "a.jsonl").write_text("{}\n")  # files, but no _SUCCESS marker
    dr = _dag("replay_empty").test()
    assert dr.state == "failed" and receiver.stats()["requests"] == 0
    store = _store(opensearch)
    store.refresh([f"{PREFIX}sftp-activity"])
    acts = store._request("POST", f"/{PREFIX}sftp-activity/_search", body={"query": {"term": {
        "status": "timed_out"}}})["hits"]["hits"]
    entry = next(a["_source"] for a in acts if a["_source"]["account"] == "empty")
    assert entry["missing"].endswith("nothing-here/_SUCCESS") and "did not appear" in entry["message"]


def test_segment_s3_archive_layout(env, airflow_db, s3_server, receiver, tmp_path):
    """Segment's own S3 archive: <source>/<day in epoch ms>/<time>.<uuid>.gz, JSON lines without extension."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="cdp_s3")
    hook.create_bucket("t-replay-archive")
    for day, n in (("1614556800000", 300), ("1614643200000", 200)):
        local = k.write_archive(tmp_path / f"{day}.gz", k.segment_messages(n, prefix=day))
        hook.load_file(str(local), f"segment-logs/src1/{day}/1614557000.0f3c9a.gz", bucket_name="t-replay-archive")
    dr = _dag("replay_s3arch").test()
    assert dr.state == "success"
    assert len(receiver.messages()) == 500 and receiver.stats()["duplicates"] == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"source": "replay/segment"}, "source must be a mapping"),
    ({"destination": "segment"}, "destination must be a mapping"),
    ({"settings": [2500]}, "settings must be a mapping"),
    ({"settings": {"concurrency": "2"}}, "concurrency must be a whole number, not '2'"),
    ({"settings": {"rate_limit": [1]}}, "rate_limit must be a number"),
    ({"settings": {"concurrency": True}}, "concurrency must be a whole number, not True"),
    ({"destination": {"type": "segment", "conn_id": "c", "historical": "yes"}}, "historical must be true or false"),
    ({"max_reject_ratio": "10%"}, "max_reject_ratio must be a number"),
    ({"sensor": 60}, "sensor must be a mapping"),
    ({"source": {"url": "store:", "window": "June"}}, "source.window must be a mapping"),
])
def test_replay_config_mistakes_are_named(change, message):
    """A replay entry of the wrong shape fails the DAG file with a message naming the key; these raised a
    TypeError or AttributeError from inside the factory (a "Broken DAG" that named no key)."""
    from cdp_ingest.segment import ReplayConfigError
    from cdp_ingest_airflow.replay_dags import validate_replay

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "replays.yaml").read_text())
    with pytest.raises((ValueError, ReplayConfigError), match=message):
        validate_replay("segment_history", {**cfg["replays"]["segment_history"], **change})
