"""Historical replay (SPEC §5): message rules, batch plans, and replays through the CLI into the local
contract receiver (a real HTTP server enforcing Segment's and Tracardi's contracts)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import orjson
import pytest
import replay_kit as k

from cdp_ingest.errors import RowError
from cdp_ingest.replay import (
    MAX_BATCH_BYTES,
    Record,
    ReplayConfigError,
    ReplaySettings,
    jsonl_records,
    plan_replay,
    read_plan,
    stamp_sent_at,
)
from cdp_ingest.segment import SENT_AT_PLACEHOLDER, prepare_message, tracardi_payloads


@pytest.fixture(scope="module")
def receiver():
    r = k.start_receiver()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def _reset(request):
    if "receiver" in request.fixturenames:
        request.getfixturevalue("receiver").control()


# ---- message rules --------------------------------------------------------------------------------
def test_prepare_strips_archived_ids_in_any_casing_and_keeps_the_timestamp():
    rec = {"type": "track", "event": "Signed Up", "userId": "u1", "timestamp": "2019-05-01T10:00:00.123Z",
           "MessageID": "abc", "sent_at": "2019-05-01T10:00:01Z", "ProjectId": "p", "properties": {"a": 1}}
    mid, body, has_ts = prepare_message(rec, replay="r1", unit="u.gz", line=7, integrations={"All": False,
                                                                                           "Mixpanel": True})
    msg = orjson.loads(body)
    assert has_ts and msg["timestamp"] == "2019-05-01T10:00:00.123Z"
    assert {k.lower() for k in msg} & {"projectid", "sent_at"} == set()
    assert msg["messageId"] == mid != "abc" and msg["sentAt"] == SENT_AT_PLACEHOLDER
    assert msg["integrations"] == {"All": False, "Mixpanel": True}
    # deterministic: same replay, unit and original id → same new id; another replay → another id
    assert prepare_message(rec, replay="r1", unit="u.gz", line=99)[0] == mid
    assert prepare_message(rec, replay="r2", unit="u.gz", line=7)[0] != mid
    # without an original id the line number keys it
    rec.pop("MessageID")
    assert prepare_message(rec, replay="r1", unit="u.gz", line=7)[0] != prepare_message(
        rec, replay="r1", unit="u.gz", line=8)[0]


@pytest.mark.parametrize(("rec", "reason"), [
    ({"type": "track", "event": "x"}, "userId or anonymousId"),
    ({"type": "track", "userId": "u"}, "track: event is required"),
    ({"type": "group", "userId": "u"}, "groupId"),
    ({"type": "alias", "anonymousId": "a", "previousId": "p"}, "alias: userId and previousId"),
    ({"type": "click", "userId": "u"}, "is not one of"),
    ({"type": "identify", "userId": "u", "timestamp": "yesterday"}, "not an ISO-8601"),
    ({"type": "identify", "userId": "u", "timestamp": "0001-01-01T00:00:00+01:00"}, "out of range"),
    ({"type": "identify", "userId": "u", "traits": {"blob": "x" * 40_000}}, "above the 32768-byte limit"),
    # nested deeper than orjson writes (it reads 1024 levels): a TypeError failed the whole archive
    ({"type": "identify", "userId": "u", "traits": {"deep": orjson.loads("[" * 300 + "]" * 300)}},
     "cannot be written as JSON: Recursion limit reached"),
    # not objects: Tracardi's payload read them as objects (an AttributeError/TypeError failed the whole replay
    # to Tracardi at the batch's send); Segment's spec has them as objects too
    ({"type": "track", "event": "x", "userId": "u", "context": "web"},
     "track: context must be an object, not a string"),
    ({"type": "page", "userId": "u", "properties": [1]}, "page: properties must be an object, not an array"),
    ({"type": "identify", "userId": "u", "traits": 2.5}, "identify: traits must be an object, not a number"),
    ({"type": "identify", "userId": "u", "integrations": True}, "integrations must be an object, not a boolean"),
])
def test_prepare_refuses_with_a_reason(rec, reason):
    with pytest.raises(RowError, match=reason):
        prepare_message(rec, replay="r", unit="u", line=1)


def test_every_message_prepare_accepts_makes_tracardi_payloads():
    """Random messages with odd values in every field: each one ``prepare`` accepts turns into Tracardi
    payloads (a non-object ``context``/``properties`` failed the whole batch there); a configured
    ``integrations`` replaces an archived one of any shape."""
    import random

    odd = [None, "", "x", 1, 2.5, True, [], [1], {}, {"a": 1}, "2025-11-01T10:00:00Z", [{"b": 2}]]
    rnd = random.Random(3)
    accepted = 0
    for i in range(3000):
        msg = {"type": rnd.choice(["track", "identify", "page", "screen", "group", "alias"]), "userId": "u1",
               "event": "Buy", "groupId": "g", "previousId": "p", "timestamp": "2025-11-01T10:00:00Z"}
        for key in rnd.sample(["context", "properties", "traits", "name", "event", "timestamp", "userId",
                               "anonymousId", "integrations", "messageId"], rnd.randint(0, 4)):
            msg[key] = rnd.choice(odd)
        if rnd.random() < 0.3:
            msg["context"] = {"sessionId": rnd.choice(odd)}
        try:
            _, body, _ = prepare_message(msg, replay="r", unit="u", line=i)
        except RowError:
            continue
        accepted += 1
        (payload,) = tracardi_payloads([orjson.loads(body)], "src")
        assert payload["events"][0]["id"] and payload["profile"]["id"]
    assert accepted > 1000
    _, body, _ = prepare_message({"type": "identify", "userId": "u", "integrations": "x"}, replay="r", unit="u",
                                 line=1, integrations={"All": False})
    assert orjson.loads(body)["integrations"] == {"All": False}


def test_sent_at_is_stamped_into_every_message_at_send_time():
    _, body, _ = prepare_message({"type": "identify", "userId": "u"}, replay="r", unit="u", line=1)
    from datetime import UTC, datetime

    payload = b'{"batch":[' + body + b"," + body + b'],"sentAt":"' + SENT_AT_PLACEHOLDER.encode() + b'"}'
    out = orjson.loads(stamp_sent_at(payload, datetime(2026, 12, 3, 6, 30, 1, 250000, tzinfo=UTC)))
    assert out["sentAt"] == "2026-12-03T06:30:01.250Z"
    assert [m["sentAt"] for m in out["batch"]] == ["2026-12-03T06:30:01.250Z"] * 2


def test_tracardi_payloads_group_per_profile_and_session_with_original_times():
    msgs = [{"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
             "timestamp": "2020-01-02T03:04:05Z", "context": {"sessionId": "s1"}},
            {"type": "page", "name": "Home", "userId": "u1", "messageId": "m2",
             "timestamp": "2020-01-02T03:00:00Z", "context": {"sessionId": "s1"}},
            {"type": "identify", "anonymousId": "a9", "messageId": "m3", "timestamp": "2020-01-03T00:00:00Z"}]
    payloads = tracardi_payloads(msgs, "src")
    assert len(payloads) == 2
    first = payloads[0]
    assert first["source"] == {"id": "src"} and first["profile"]["id"] == "u1" and first["session"]["id"] == "s1"
    assert [e["type"] for e in first["events"]] == ["order-completed", "page-view"]
    assert first["events"][0]["time"] == {"create": "2020-01-02T03:04:05+00:00", "insert": "2020-01-02T03:04:05+00:00"}
    assert first["session"]["metadata"]["time"]["create"] == "2020-01-02T03:00:00+00:00"
    assert payloads[1]["profile"]["id"] == "a9"


# ---- plans ----------------------------------------------------------------------------------------
def test_plan_respects_batch_limits_and_is_deterministic(tmp_path):
    msgs = k.segment_messages(3000)
    msgs[10]["properties"] = {"blob": "y" * 40_000}  # > 32 KB: error file, never dropped
    msgs[20]["messageId"] = msgs[19]["messageId"]  # a repeat of the previous message's id
    msgs[30].pop("timestamp")
    archive = k.write_archive(tmp_path / "a.jsonl.gz", msgs)
    settings = ReplaySettings(name="t", max_batch_messages=700, max_batch_bytes=200_000)

    def plan(n):
        return plan_replay(jsonl_records(str(archive)), settings, unit="a", staged_path=tmp_path / f"p{n}.parquet",
                           error_path=tmp_path / f"e{n}.csv", source_label="a.jsonl.gz")

    p1, p2 = plan(1), plan(2)
    assert p1.digest == p2.digest and p1.batches == p2.batches
    assert (p1.rows_in, p1.accepted, p1.rejected, p1.duplicates, p1.missing_timestamp) == (3000, 2998, 1, 1, 1)
    batches = list(read_plan(p1.staged))
    assert sum(len(b.ids) for b in batches) == 2998
    assert all(len(b.ids) <= 700 and len(b.payload) <= 200_000 for b in batches)
    assert [b.number for b in batches] == list(range(p1.batches))
    assert len({i for b in batches for i in b.ids}) == 2998
    assert [b.number for b in read_plan(p1.staged, start_after=2)] == list(range(3, p1.batches))
    rows = list(csv.DictReader(open(p1.error_file)))
    assert [(r["line"], r["source"]) for r in rows] == [("11", "a.jsonl.gz")]
    assert "above the 32768-byte limit" in rows[0]["Failure Description"] and "y" * 1000 in rows[0]["message"]


def test_worker_processes_plan_the_same_batches(tmp_path, monkeypatch):
    """Planning in worker processes (spawned, blocks of lines) gives the serial plan: same batches, digest,
    counts and error file, and memory of repeats spans the blocks."""
    from cdp_ingest import replay

    msgs = k.segment_messages(6000)
    msgs[2500]["messageId"] = msgs[10]["messageId"]  # a repeat far from the original: another block
    msgs[4000]["type"] = "bogus"
    msgs[4500].pop("timestamp")
    archive = tmp_path / "a.jsonl"
    lines = [orjson.dumps(m) for m in msgs]
    lines[5000] = b"{broken"
    archive.write_bytes(b"\n".join(lines[:3000]) + b"\n\n" + b"\n".join(lines[3000:]) + b"\n")
    from concurrent.futures import ProcessPoolExecutor

    monkeypatch.setattr(replay, "PARALLEL_AFTER_BLOCKS", 2)  # workers from the third block on
    submitted = []
    submit = ProcessPoolExecutor.submit
    monkeypatch.setattr(ProcessPoolExecutor, "submit",
                        lambda self, fn, *a: submitted.append(a[0]) or submit(self, fn, *a))
    plans = {}
    for workers in (1, 2):
        settings = ReplaySettings(name="t", max_batch_messages=300, workers=workers)
        plans[workers] = plan_replay(jsonl_records(str(archive), block_size=64 << 10), settings, unit="a",
                                     staged_path=tmp_path / f"p{workers}.parquet",
                                     error_path=tmp_path / f"e{workers}.csv", source_label="a.jsonl")
        assert bool(submitted) == (workers == 2)
    serial, parallel = plans[1], plans[2]
    assert len(submitted) > 20 and submitted[0] > 1  # blocks (by first line) went to the workers
    assert (parallel.rows_in, parallel.accepted, parallel.rejected, parallel.duplicates,
            parallel.missing_timestamp) == (6000, 5997, 2, 1, 1)
    assert parallel.digest == serial.digest and parallel.batches == serial.batches
    assert [b.payload for b in read_plan(parallel.staged)] == [b.payload for b in read_plan(serial.staged)]
    assert [b.refs for b in read_plan(parallel.staged)][-1][-1] == 6001  # the blank line is counted
    rows = list(csv.DictReader(open(parallel.error_file)))
    assert [r["line"] for r in rows] == ["4002", "5002"]
    assert "not one of" in rows[0]["Failure Description"] and "invalid JSON" in rows[1]["Failure Description"]
    assert open(parallel.error_file).read() == open(serial.error_file).read()


def test_checkpoint_log_survives_a_torn_entry_and_another_plan(tmp_path):
    from cdp_ingest.replay import Checkpoint

    path = tmp_path / "checkpoint.jsonl"
    cp = Checkpoint("d1")
    with cp.open_log(path) as fh:
        for n in range(3):
            cp.batch, cp.sent = n, 100 * (n + 1)
            cp.append(fh)
    with open(path, "ab") as fh:
        fh.write(b'{"digest": "d1", "batch": 3, "se')  # killed in the middle of an entry
    resumed = Checkpoint.load(path, "d1")
    assert (resumed.batch, resumed.sent) == (2, 300)
    with resumed.open_log(path) as fh:  # continues on a line of its own
        resumed.batch, resumed.sent = 3, 400
        resumed.append(fh)
    assert (Checkpoint.load(path, "d1").batch, Checkpoint.load(path, "d1").sent) == (3, 400)
    assert path.read_bytes().count(b"\n") == 5
    other = Checkpoint.load(path, "d2")  # the log of another plan: start over, and the log with it
    assert other.batch == -1
    with other.open_log(path):
        pass
    assert path.read_bytes() == b""


def test_settings_refuse_what_must_not_run():
    with pytest.raises(ReplayConfigError, match="not accepting historical timestamps"):
        ReplaySettings(name="x", historical=False).check()
    with pytest.raises(ReplayConfigError, match="max_batch_bytes"):
        ReplaySettings(name="x", max_batch_bytes=MAX_BATCH_BYTES + 1).check()
    with pytest.raises(ReplayConfigError, match="unknown settings"):
        ReplaySettings.from_dict("x", {"batch_size": 5})


def test_records_from_a_line_that_is_not_an_object_are_rejected(tmp_path):
    plan = plan_replay([Record(1, None, "[1,2]", "line 1: not a JSON object")], ReplaySettings(name="t"), unit="u",
                       staged_path=tmp_path / "s.parquet", error_path=tmp_path / "e.csv")
    assert (plan.rows_in, plan.rejected, plan.batches) == (1, 1, 0)


# ---- end to end through the CLI and the contract receiver ------------------------------------------
def _cli(archive, receiver, work, *extra, to="segment"):
    auth = ["--write-key", k.WRITE_KEY] if to == "segment" else ["--source-id", k.SOURCE_ID]
    return k.run_cli(str(archive), "--to", to, "--endpoint", receiver.url, *auth, "--work-dir", str(work), *extra)


def test_replay_to_segment_with_429s_and_a_refused_message(tmp_path, receiver):
    msgs = k.segment_messages(4000)
    msgs[5]["event"] = "Forbidden Event"  # the receiver refuses it with 400: bisected into the error file
    msgs[50].pop("timestamp")
    k.write_archive(tmp_path / "archive" / "day1.jsonl.gz", msgs, raw_lines=['{"type": "track"}'])
    receiver.control(fail=[{"status": 429, "retry_after": 1, "count": 2}, {"status": 503, "count": 1}],
                     reject_events=["Forbidden Event"])
    integrations = '{"All": false, "Mixpanel": true}'
    proc = _cli(tmp_path / "archive", receiver, tmp_path / "work", "--integrations", integrations,
                "--max-batch-messages", "1000", "--name", "hist")
    assert proc.returncode == 0, proc.stderr
    counts, total = k.cli_lines(proc)
    assert (counts["rows_in"], counts["sent"], counts["rejected"], counts["duplicates"]) == (4001, 3999, 2, 0)
    assert counts["missing_timestamp"] == 1 and counts["retries"] == 3 and total["total"]["sent"] == 3999
    got = receiver.messages()
    assert len(got) == 3999 and receiver.stats()["duplicates"] == 0
    by_time = {m["timestamp"] for m in got.values()}
    assert {m["timestamp"] for i, m in enumerate(msgs) if i not in (5, 50)} == by_time - {None}
    assert all(m["integrations"] == {"All": False, "Mixpanel": True} for m in got.values())
    assert all(m["sentAt"].startswith("20") and not m["sentAt"].startswith("2021") for m in got.values())
    rows = list(csv.DictReader(open(counts["error_file"])))
    reasons = {r["line"]: r["Failure Description"] for r in rows}
    assert set(reasons) == {"6", "4001"}
    assert "refused by the receiver: HTTP 400" in reasons["6"] and "Forbidden Event" in reasons["6"]
    assert "userId or anonymousId" in reasons["4001"]

    # a rerun sends nothing new: the checkpoint says every batch was acknowledged
    before = receiver.stats()["deliveries"]
    again = _cli(tmp_path / "archive", receiver, tmp_path / "work", "--integrations", integrations,
                 "--max-batch-messages", "1000", "--name", "hist")
    assert again.returncode == 0 and receiver.stats()["deliveries"] == before
    # a fresh work dir resends everything: the same messageIds, so the receiver drops them all
    fresh = _cli(tmp_path / "archive", receiver, tmp_path / "work2", "--integrations", integrations,
                 "--max-batch-messages", "1000", "--name", "hist")
    assert fresh.returncode == 0 and len(receiver.messages()) == 3999
    assert receiver.stats()["duplicates"] == 3999  # every accepted one came again; the refused one is refused


def test_killed_replay_resumes_and_every_message_arrives_once(tmp_path, receiver):
    n, batch = 12_000, 500
    archive = k.write_archive(tmp_path / "big.jsonl.gz", k.segment_messages(n, prefix="kill"))
    args = [str(archive), "--to", "segment", "--endpoint", receiver.url, "--write-key", k.WRITE_KEY,
            "--work-dir", str(tmp_path / "work"), "--max-batch-messages", str(batch), "--rate-limit", "3000",
            "--name", "kill"]
    proc = subprocess.Popen([str(k.ROOT / ".venv" / "bin" / "cdp-ingest"), "replay", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while receiver.stats()["deliveries"] < 4000:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = receiver.stats()["deliveries"]
    assert partial < n
    log_lines = next((tmp_path / "work").glob("*/checkpoint.jsonl")).read_bytes().splitlines()
    checkpoint = json.loads(log_lines[-1])  # one entry per acknowledged batch, in order
    assert [json.loads(x)["batch"] for x in log_lines] == list(range(checkpoint["batch"] + 1))
    assert 0 <= checkpoint["batch"] < n // batch - 1

    rerun = k.run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    counts = k.cli_lines(rerun)[0]
    assert counts["resumed_after_batch"] == checkpoint["batch"] and counts["sent"] == n
    stats = receiver.stats()
    assert stats["unique"] == n  # every message arrived ...
    assert len({m for m in receiver.messages() if m}) == n
    # ... and only the batches in flight at the kill were sent twice (deduplicated by messageId)
    assert stats["duplicates"] <= 2 * batch


def test_replay_to_tracardi_track(tmp_path, receiver):
    msgs = k.segment_messages(300, users=7)
    archive = k.write_archive(tmp_path / "t.jsonl", msgs, gz=False)
    proc = _cli(archive, receiver, tmp_path / "work", to="tracardi")
    assert proc.returncode == 0, proc.stderr
    assert k.cli_lines(proc)[0]["sent"] == 300
    got = receiver.messages()
    assert len(got) == 300
    assert {m["timestamp"] for m in got.values()} == {m["timestamp"].replace("Z", "+00:00") for m in msgs}
    # events grouped per profile and session: far fewer payloads than events
    assert receiver.stats()["track_payloads"] < 300
    wrong = k.run_cli(str(archive), "--to", "tracardi", "--endpoint", receiver.url, "--source-id", "nope",
                      "--work-dir", str(tmp_path / "w2"))
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr


def test_refusals_before_anything_is_sent(tmp_path, receiver):
    archive = k.write_archive(tmp_path / "a.jsonl.gz", k.segment_messages(50))
    before = receiver.stats()["requests"]
    proc = _cli(archive, receiver, tmp_path / "w", "--not-historical")
    assert proc.returncode == 1 and "historical timestamps" in proc.stderr
    bad_key = k.run_cli(str(archive), "--to", "segment", "--endpoint", receiver.url, "--write-key", "wrong",
                        "--work-dir", str(tmp_path / "w3"))
    assert bad_key.returncode == 1 and "HTTP 401" in bad_key.stderr
    dry = _cli(archive, receiver, tmp_path / "w4", "--dry-run")
    assert dry.returncode == 0
    counts = k.cli_lines(dry)[0]
    assert counts["status"] == "planned" and counts["sent"] == 0 and counts["batches"] == 1
    assert receiver.stats()["requests"] - before == 1  # only the request with the wrong key
    assert receiver.messages() == {}


def test_csv_archive_through_a_message_mapping(tmp_path, receiver):
    src = tmp_path / "legacy.csv"
    src.write_text("uid,what,when,price\nu1,Order Completed,2018-02-03T04:05:06Z,12.5\n"
                   "u2,Product Viewed,2018-02-04T00:00:00Z,3\n,Order Completed,2018-02-05T00:00:00Z,1\n")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("type: track\nfields: {uid: userId, what: event, when: timestamp, price: properties.price}\n")
    proc = _cli(src, receiver, tmp_path / "w", "--mapping", str(mapping), "--name", "csv")
    assert proc.returncode == 0, proc.stderr
    counts = k.cli_lines(proc)[0]
    assert (counts["sent"], counts["rejected"]) == (2, 1)
    got = {m["timestamp"]: m for m in receiver.messages().values() if m["timestamp"].startswith("2018")}
    assert set(got) == {"2018-02-03T04:05:06Z", "2018-02-04T00:00:00Z"}
    assert got["2018-02-03T04:05:06Z"]["userId"] == "u1"


def test_jsonl_reader_numbers_lines_and_reports_bad_ones(tmp_path, monkeypatch):
    import gzip

    from cdp_ingest import readers
    from cdp_ingest.errors import FileLevelError

    monkeypatch.setattr(readers, "MAX_JSON_LINE_BYTES", 2000)
    long_line = '{"type": "track", "pad": "' + "z" * 5000 + '"}'
    text = ('\ufeff{"type": "identify", "userId": "a"}\n\n[1, 2]\n{broken\n' + long_line + "\n"
            '{"type": "track", "event": "e", "userId": "b"}')  # no newline at the end
    path = tmp_path / "a.jsonl"
    path.write_text(text, encoding="utf-8")
    recs = list(jsonl_records(str(path), block_size=64))  # tiny blocks: lines span many of them
    assert [(r.line, r.problem is None) for r in recs] == [(1, True), (3, False), (4, False), (5, False),
                                                          (6, True)]
    assert recs[0].value == {"type": "identify", "userId": "a"} and recs[4].value["userId"] == "b"
    assert "not a JSON object" in recs[1].problem and "invalid JSON" in recs[2].problem
    assert "longer than 2000 bytes" in recs[3].problem
    bad = tmp_path / "corrupt.jsonl.gz"
    data = bytearray(gzip.compress(b'{"type": "track"}\n' * 5000))
    data[40:80] = b"\xff" * 40  # corrupt deflate data
    bad.write_bytes(bytes(data))
    with pytest.raises(FileLevelError, match="unreadable"):
        list(jsonl_records(str(bad)))


def test_rate_limit_paces_the_sends(tmp_path, receiver):
    archive = k.write_archive(tmp_path / "a.jsonl.gz", k.segment_messages(3000))
    t0 = time.monotonic()
    proc = _cli(archive, receiver, tmp_path / "w", "--rate-limit", "1500", "--max-batch-messages", "250")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert len(receiver.messages()) == 3000
    # 12 batches of 250 at 1,500 messages/s: the last one may not start before ~1.8 s
    assert elapsed >= 1.8
