"""The store, ledger and pipeline against the real OpenSearch: shapes, indices, idempotency,
error files, retries, crash-and-retry, profile merges."""

from __future__ import annotations

import http.server
import itertools
import logging
import threading
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from store_kit import columnar_loads, crash_on_send, merged_new

from cdp_ingest import sample
from cdp_ingest.documents import NOW_MARK
from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.errors import StoreError
from cdp_ingest.ledger import Ledger, SourceUnit
from cdp_ingest.mapping import Mapper, Mapping, profile_id_for
from cdp_ingest.pipeline import begin_unit, import_unit, load_unit, transform_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import FILTER_PATH, TERSE_FILTER_PATH, BulkItem, ProfileRow, Store, make_client

pytestmark = pytest.mark.services
MAPPINGS = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
_prefixes = itertools.count()


@pytest.fixture
def store(opensearch):
    s = Store(make_client(opensearch.info["url"]), prefix=f"t-store{next(_prefixes)}-", chunk_docs=500,
              backoff=0.01)
    s.ensure_templates()
    yield s
    s._request("DELETE", f"/{s.prefix}*")


def _import(store, path, mapping_name, work, **kw):
    m = Mapping.load(MAPPINGS / f"demo-{mapping_name}.yaml")
    return import_unit(str(path), lambda: read_batches(path),
                       lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                       store=store, ledger=Ledger(store), work_dir=work, kind=m.kind, source="test", **kw)


@pytest.mark.parametrize("stage", [True, False], ids=["staged", "streamed"])
def test_events_land_shaped_in_monthly_indices_and_rerun_adds_nothing(store, tmp_path, stage):
    src = tmp_path / "events.csv"
    exp = sample.write_events(src, 2000, profiles=50, sessions=20)
    rep = _import(store, src, "events", tmp_path / "work", stage=stage)
    assert rep.status == "committed"
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (2000, exp.good, exp.bad, exp.duplicates)
    p = store.prefix
    assert store.count(f"{p}event-2025-11") + store.count(f"{p}event-2025-12") == exp.good
    doc = store.get(f"{p}event-2025-11", "e-0000000000")["_source"]
    assert doc["type"] == "page-view" and doc["name"] == "Page view"
    assert doc["metadata"]["time"]["create"] == "2025-11-01T00:00:00.000000"
    first = src.read_text().splitlines()[1].split(",")
    assert doc["profile"]["id"] == profile_id_for(first[3])
    assert doc["session"]["id"] == first[4]
    assert doc["source"] == {"id": "demo-tracker"}
    assert doc["properties"]["product"]["quantity"] == 1
    assert doc["properties"]["referrer"] in ("google", "direct", "mail")
    assert doc["metadata"]["aux"]["cdp"] == {"import_id": rep.import_id, "row": 1}
    december = store._request("POST", f"/{p}event-2025-12/_search", body={"size": 1})["hits"]["hits"][0]
    assert december["_source"]["metadata"]["time"]["create"].startswith("2025-12")

    again = _import(store, src, "events", tmp_path / "work")
    assert again.status == "skipped" and again.import_id == rep.import_id
    forced = _import(store, src, "events", tmp_path / "work", force=True)
    assert forced.import_id != rep.import_id
    assert (forced.loaded, forced.duplicates) == (0, exp.good + exp.duplicates)
    store.refresh([f"{p}event-*"])
    assert store.count(f"{p}event-*") == exp.good

    errors = read_error_file(rep.error_file)
    assert len(errors) == exp.bad
    reasons = {r[FAILURE_COLUMN] for r in errors}
    assert reasons == {"column 'event' (event type) is empty", "column 'price': expected FLOAT"}
    assert set(errors[0]) == {"insert_id", "ts", "event", "email", "session_id", "page", "product_id", "price",
                              "quantity", "referrer", FAILURE_COLUMN}


def test_expected_misses_are_answers_not_logged_as_failed_requests(store, tmp_path, caplog):
    """A ledger entry, month or document not there yet is a normal answer: the client logs no
    "[status:404]" warning for it (every first import used to show a few in its task log), and a
    real failure is still an error."""
    caplog.set_level(logging.WARNING)
    assert store.get(store.index("ledger"), "no-such-unit") is None
    assert store.count(f"{store.prefix}event-1999-01") == 0
    src = tmp_path / "events.csv"
    exp = sample.write_events(src, 300, profiles=10, sessions=5)
    rep = _import(store, src, "events", tmp_path / "work")
    assert (rep.status, rep.loaded) == ("committed", exp.good)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opensearch")] == []
    with pytest.raises(StoreError, match="HTTP 404"):
        store._request("GET", f"/{store.prefix}event-1999-01/_doc/x")
    assert any("status:404" in r.getMessage() for r in caplog.records if r.name.startswith("opensearch"))


def test_profiles_merge_operations_across_rows_and_files(store, tmp_path):
    now = NOW
    pid = profile_id_for("ada@example.com")
    rows1 = [ProfileRow(pid, 1, [("$set", "data.pii.firstname", "Ada"), ("$add", "traits.tags", "vip")]),
             ProfileRow(pid, 2, [("$add", "traits.tags", ["beta", "vip"]), ("$set", "traits.tmp", 1)])]
    out = list(store.merge_profiles(rows1, "imp-1", now))
    assert [o.status for o in out] == ["loaded", "loaded"]
    rows2 = [ProfileRow(pid, 1, [("$remove", "traits.tags", "vip"), ("$delete", "traits.tmp", None)]),
             ProfileRow(profile_id_for("bob@example.com"), 2, [("$set", "data.pii.firstname", "Bob")])]
    list(store.merge_profiles(rows2, "imp-2", now))
    doc = store.get(store.index("profile"), pid)["_source"]
    assert doc["data"]["pii"]["firstname"] == "Ada"
    assert doc["traits"] == {"tags": ["beta"]}
    assert doc["ids"] == [pid]
    assert doc["metadata"]["aux"]["cdp"] == {"import_id": "imp-2", "row": 1}


def test_profile_rows_that_leave_the_stored_profile_as_it_was_are_duplicates_and_not_written(store):
    """The same data imported again (a re-upload, a row an incremental sync reads again) changes nothing:
    the profile is not written (its version, update time and import stamp stay) and its rows count as
    duplicates — but as loaded for the import that wrote it (a retried import counts as its first attempt)."""
    index = store.index("profile")
    ada, bob = profile_id_for("ada@example.com"), profile_id_for("bob@example.com")
    later = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

    def rows(value: str) -> list[ProfileRow]:
        return [ProfileRow(ada, 1, [("$set", "data.pii.firstname", "Ada"), ("$add", "traits.tags", ["vip", "b"])]),
                ProfileRow(ada, 2, [("$add", "traits.tags", "vip"), ("$remove", "traits.tags", "x")]),
                ProfileRow(bob, 3, [("$set", "traits.tier", value)], ids=[profile_id_for("bob@work.example")])]

    def status(import_id: str, rs: list[ProfileRow]) -> dict[int, str]:
        return {o.ref: o.status for o in store.merge_profiles(rs, import_id, later)}

    assert status("imp-1", rows("gold")) == {1: "loaded", 2: "loaded", 3: "loaded"}
    first = {pid: store.get(index, pid) for pid in (ada, bob)}
    assert status("imp-1", rows("gold")) == {1: "loaded", 2: "loaded", 3: "loaded"}  # a retry of imp-1
    assert status("imp-2", rows("gold")) == {1: "duplicate", 2: "duplicate", 3: "duplicate"}
    # bob changes, ada does not: only bob is written, with imp-3's stamp and update time
    assert status("imp-3", rows("silver")) == {1: "duplicate", 2: "duplicate", 3: "loaded"}
    now = {pid: store.get(index, pid) for pid in (ada, bob)}
    assert now[ada]["_seq_no"] == first[ada]["_seq_no"] and now[ada]["_source"] == first[ada]["_source"]
    assert now[ada]["_source"]["metadata"]["aux"]["cdp"] == {"import_id": "imp-1", "row": 2}
    assert now[bob]["_seq_no"] > first[bob]["_seq_no"]
    assert now[bob]["_source"]["traits"] == {"tier": "silver"}
    assert now[bob]["_source"]["metadata"]["aux"]["cdp"] == {"import_id": "imp-3", "row": 3}
    assert now[bob]["_source"]["metadata"]["time"]["update"].startswith("2026-11-24T08:00:00")
    # an operation that changes a stored value back, or a new id for the profile, is a change
    assert status("imp-4", [ProfileRow(ada, 1, [("$remove", "traits.tags", "b")])]) == {1: "loaded"}
    assert status("imp-5", [ProfileRow(ada, 1, [], ids=["other-id"])]) == {1: "loaded"}
    assert store.get(index, ada)["_source"]["ids"] == [ada, "other-id"]
    assert status("imp-6", [ProfileRow(ada, 1, [], ids=["other-id"])]) == {1: "duplicate"}


def test_random_profile_operations_are_duplicates_exactly_when_they_change_nothing(store):
    """Random operations on a few profiles, one chunk per import: each row's status and each profile's
    stored state against a model that applies the same operations to the stored documents (read first)."""
    import copy
    import random

    from cdp_ingest.documents import apply_operation, new_document

    index = store.index("profile")
    pids = [profile_id_for(f"rnd{i}@example.com") for i in range(3)]
    values = {"traits.a": [1, 2], "traits.tags": ["x", "y", ["x", "y"]], "data.pii.firstname": ["A", "B"]}
    counts: Counter[str] = Counter()

    def random_row(rnd: random.Random, ref: int) -> ProfileRow:
        ops = []
        for _ in range(rnd.randint(1, 3)):
            path = rnd.choice(list(values))
            op = rnd.choice(["$set", "$add", "$remove", "$delete"])
            ops.append((op, path, None if op == "$delete" else rnd.choice(values[path])))
        return ProfileRow(rnd.choice(pids), ref, ops)

    rows: list[ProfileRow] = []
    for seed in range(60):
        rnd = random.Random(seed)
        store.concurrency = rnd.choice([1, 2, 3])
        import_id = rnd.choice(["imp-a", "imp-b", "imp-c"])
        if not rows or rnd.random() >= 0.3:  # else the previous rows again
            rows = [random_row(rnd, ref) for ref in range(1, rnd.randint(1, 8) + 1)]
        before = {pid: store.get(index, pid) for pid in pids}
        expected, model = {}, {}
        for pid in pids:
            mine = [r for r in rows if r.profile_id == pid]
            if not mine:
                continue
            found = before[pid]
            doc = copy.deepcopy(found["_source"]) if found else new_document("profile", pid, "now")
            for r in mine:
                for op, path, value in r.ops():
                    apply_operation(doc, op, path, value)
            same = found is not None and orjson.dumps(doc) == orjson.dumps(found["_source"])  # (key order too)
            stamped = found and found["_source"]["metadata"]["aux"]["cdp"]["import_id"] == import_id
            status = "loaded" if not same or stamped else "duplicate"
            expected.update({r.ref: status for r in mine})
            model[pid] = (doc, same, mine[-1].ref)
        out = {o.ref: o.status for o in store.merge_profiles(rows, import_id, NOW, chunk_rows=10)}
        assert out == expected, seed
        counts.update(out.values())
        for pid, (doc, same, last) in model.items():
            got = store.get(index, pid)
            if same:
                assert (got["_seq_no"], got["_source"]) == (before[pid]["_seq_no"], before[pid]["_source"]), seed
                continue
            assert got["_source"]["metadata"]["aux"]["cdp"] == {"import_id": import_id, "row": last}, seed
            for d in (doc, got["_source"]):
                d["metadata"]["time"] = {**d["metadata"]["time"], "insert": None, "create": None, "update": None}
                d["metadata"]["aux"].pop("cdp", None)
            assert got["_source"] == doc, seed
    assert counts["duplicate"] > 20 and counts["loaded"] > 20, counts  # both kinds were drawn


def test_profile_rows_keep_their_order_across_chunks_in_flight(store):
    """Chunks of 2 rows per lane, 3 lanes, while the next chunk is already queued: every profile's
    rows still apply in file order (a $add/$remove/$set sequence whose result depends on it)."""
    store.concurrency = 3
    pids = [profile_id_for(f"order{i}@example.com") for i in range(5)]
    rows, ref = [], itertools.count(1)
    for step in range(12):
        for i, pid in enumerate(pids):
            ops = [("$set", "traits.last", step), ("$add", "traits.seen", f"s{step}")]
            if step % 3 == 2:
                ops.append(("$remove", "traits.seen", f"s{step - 1}"))
            if (step + i) % 4 == 0:
                ops.append(("$delete", "traits.flag", None))
            else:
                ops.append(("$set", "traits.flag", step))
            rows.append(ProfileRow(pid, next(ref), ops))
    out = list(store.merge_profiles(rows, "imp-order", NOW, chunk_rows=2))
    assert sorted(o.ref for o in out) == list(range(1, len(rows) + 1))
    assert {o.status for o in out} == {"loaded"}
    expected_seen = [f"s{s}" for s in range(12) if s % 3 != 1]
    for i, pid in enumerate(pids):
        traits = store.get(store.index("profile"), pid)["_source"]["traits"]
        assert traits["last"] == 11 and traits["seen"] == expected_seen
        assert ("flag" not in traits) if (11 + i) % 4 == 0 else traits["flag"] == 11


def test_profile_merge_retries_on_concurrent_update(store):
    pid = profile_id_for("race@example.com")
    list(store.merge_profiles([ProfileRow(pid, 1, [("$set", "traits.a", 1)])], "imp-0", NOW))
    original = store._send_bulk
    raced = []

    def racing_send(payload: bytes, *args, **kw):
        if not raced:  # someone else writes the profile between our read and our write
            raced.append(True)
            store._request("POST", f"/{store.index('profile')}/_update/{pid}", body={"doc": {"traits": {"b": 2}}},
                           params={"refresh": "true"})
        return original(payload, *args, **kw)

    store._send_bulk = racing_send
    out = list(store.merge_profiles([ProfileRow(pid, 7, [("$set", "traits.c", 3)])], "imp-1", NOW))
    assert [o.status for o in out] == ["loaded"]
    assert store.get(store.index("profile"), pid)["_source"]["traits"] == {"a": 1, "b": 2, "c": 3}


def _new_profile_rows(first: int, n: int, value: int, import_id: str, ref0: int = 1) -> list[ProfileRow]:
    """Rows as the columnar mapping makes them: operations as JSON and the whole new document."""
    rows = []
    mark = orjson.loads(NOW_MARK)
    for k in range(first, first + n):
        pid = profile_id_for(f"blind{k}@example.com")
        ops = [("$set", "traits.v", value), ("$set", "traits.k", k)]
        new = merged_new(pid, ref0 + k - first, ops, import_id, now=mark)
        rows.append(ProfileRow(pid, ref0 + k - first, None, new=new, ops_json=orjson.dumps(ops)))
    return rows


def test_new_profiles_are_created_unread_and_stored_ones_read_and_merged(store):
    """A row alone on its profile, with the columnar mapping's new document, is created without a read
    while most such profiles are new; when they are mostly stored already (409), the load goes back to
    reading them first: every profile ends up merged either way, with the latest row's values."""
    store.concurrency = 1
    reads, conflicts = [], []
    request, send = store._request, store._send_bulk

    def counting_request(method, path, **kw):
        if path == "/_mget":
            reads.append(len(kw["body"]["docs"]))
        return request(method, path, **kw)

    def counting_send(payload, *args, **kw):
        result = send(payload, *args, **kw)
        conflicts.extend(1 for item in result.get("items", []) if next(iter(item.values())).get("status") == 409)
        return result

    store._request, store._send_bulk = counting_request, counting_send
    index = store.index("profile")

    def run(rows: list[ProfileRow], import_id: str) -> None:
        reads.clear()
        conflicts.clear()
        out = list(store.merge_profiles(rows, import_id, NOW, chunk_rows=200))
        assert sorted(o.ref for o in out) == [r.ref for r in rows] and {o.status for o in out} == {"loaded"}

    run(_new_profile_rows(0, 1000, 1, "imp-1"), "imp-1")  # all new: nothing read, nothing refused
    assert (reads, conflicts) == ([], [])
    # all stored: the first part's creates are refused (409), read and merged; then every part is read first
    run(_new_profile_rows(0, 1000, 2, "imp-2"), "imp-2")
    assert conflicts == [1] * 200
    assert reads == [200, 200, 200, 200, 200]
    run(_new_profile_rows(1000, 1000, 3, "imp-3"), "imp-3")  # all new again: read while the first part shows it
    assert (reads, conflicts) == ([200], [])
    store.refresh([index])
    assert store.count(index) == 2000
    for k, value, import_id in ((0, 2, "imp-2"), (999, 2, "imp-2"), (1000, 3, "imp-3"), (1999, 3, "imp-3")):
        doc = store.get(index, profile_id_for(f"blind{k}@example.com"))["_source"]
        assert doc["traits"] == {"v": value, "k": k}
        assert doc["metadata"]["aux"]["cdp"]["import_id"] == import_id
        assert doc["metadata"]["time"]["insert"] == NOW.replace(tzinfo=None).isoformat(timespec="microseconds")


def test_streamed_profiles_import_matches_expected_counts(store, tmp_path):
    src = tmp_path / "profiles.csv"
    exp = sample.write_profiles(src, 400)
    rep = _import(store, src, "profiles", tmp_path / "work", stage=False)
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (400, exp.good, exp.bad, 0)
    store.refresh([store.index("profile")])
    assert store.count(store.index("profile")) == exp.good
    doc = store.get(store.index("profile"), profile_id_for(sample.email(0)))["_source"]
    assert doc["data"]["contact"]["email"] == sample.email(0)
    assert doc["data"]["pii"]["name"] == "Ada Lovelace"
    assert doc["traits"]["segment"] in ("gold", "silver", "new")
    assert len(read_error_file(rep.error_file)) == exp.bad


def test_crash_mid_load_then_retry_gives_exactly_the_right_documents(store, tmp_path):
    src = tmp_path / "events.csv"
    exp = sample.write_events(src, 3000, profiles=50, sessions=20)
    m = Mapping.load(MAPPINGS / "demo-events.yaml")
    ledger = Ledger(store)
    entry = begin_unit(ledger, str(src), kind="event", source="test")
    t = transform_unit(read_batches(src), Mapper(m, unit_key=entry.import_id, now=NOW).map_row,
                       prefix=store.prefix, import_id=entry.import_id, staged_path=tmp_path / "s.parquet",
                       error_path=tmp_path / "t-err.csv")
    with crash_on_send(store, 4), pytest.raises(StoreError):  # like a worker killed mid-load
        load_unit(t.staged, store, import_id=entry.import_id, error_path=tmp_path / "l-err.csv", columns=t.columns)
    ledger.fail(entry, "crashed")
    store.refresh([f"{store.prefix}event-*"])
    partial = store.count(f"{store.prefix}event-*")
    assert 0 < partial < exp.good

    retry = ledger.begin(SourceUnit.from_file(str(src)), kind="event", source="test")
    assert retry.import_id == entry.import_id and retry.attempts == 2
    ld = load_unit(t.staged, store, import_id=retry.import_id, error_path=tmp_path / "l-err.csv", columns=t.columns)
    # writes of the crashed attempt are recognised as this import's own: loaded, not duplicates
    assert (ld.loaded, ld.duplicates, ld.failed) == (exp.good, exp.duplicates, 0)
    assert store.count(f"{store.prefix}event-*") == exp.good


def test_per_item_failures_are_reported_with_reason(store, tmp_path):
    good = orjson.dumps({"id": "ok", "metadata": {"time": {"insert": "2025-11-01T00:00:00"}}})
    bad = orjson.dumps({"id": "bad", "metadata": {"time": {"insert": "not a date"}}})
    items = [BulkItem(f"{store.prefix}event-2025-11", "ok", good, 1),
             BulkItem(f"{store.prefix}event-2025-11", "bad", bad, 2)]
    out = {o.ref: o for o in store.bulk_load(items)}
    assert out[1].status == "loaded"
    assert out[2].status == "failed" and "mapper_parsing_exception" in out[2].reason


class _Flaky(http.server.BaseHTTPRequestHandler):
    """A proxy in front of OpenSearch that answers 429/503 to the first bulk requests."""

    upstream = ""
    failures: list[int] = []
    seen: list[int] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/_bulk") and self.failures:
            code = self.failures.pop(0)
            self.seen.append(code)
            self.send_response(code)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error":"busy"}')
            return
        self._forward("POST", body)

    def do_GET(self):  # the load's list of stored months
        self._forward("GET", None)

    def do_PUT(self):  # a month the load creates (refresh paused), its settings and lease
        self._forward("PUT", self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _forward(self, method: str, body: bytes | None) -> None:
        req = urllib.request.Request(self.upstream + self.path, data=body, method=method,
                                     headers={"Content-Type": self.headers.get("Content-Type") or "application/json"})
        with urllib.request.urlopen(req) as r:
            data = r.read()
            self.send_response(r.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_bulk_retries_429_and_5xx_with_backoff(store, opensearch):
    _Flaky.upstream = opensearch.info["url"]
    _Flaky.failures, _Flaky.seen = [429, 503, 429], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sleeps: list[float] = []
        s = Store(make_client(f"http://127.0.0.1:{srv.server_port}"), prefix=store.prefix, backoff=0.5,
                  sleep=sleeps.append, concurrency=1)
        items = [BulkItem(f"{store.prefix}event-2025-11", f"r{i}", orjson.dumps({"id": f"r{i}"}), i)
                 for i in range(10)]
        out = list(s.bulk_load(items))
        assert [o.status for o in out] == ["loaded"] * 10
        assert _Flaky.seen == [429, 503, 429]
        assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff
        _Flaky.failures = [429] * 10
        s.max_retries = 2
        with pytest.raises(StoreError, match="still failing after 2 retries"):
            list(s.bulk_load(items))
    finally:
        srv.shutdown()


def test_templates_route_free_form_bags_to_flat_object(store):
    resp = store._request("GET", f"/_index_template/{store.prefix}event")
    mapping = resp["index_templates"][0]["index_template"]["template"]["mappings"]
    assert mapping["properties"]["properties"] == {"type": "flat_object"}
    # conflicting value types for the same property in two events do not fail either
    items = [BulkItem(f"{store.prefix}event-2025-11", "a", orjson.dumps({"properties": {"v": 1}}), 1),
             BulkItem(f"{store.prefix}event-2025-11", "b", orjson.dumps({"properties": {"v": {"x": "y"}}}), 2)]
    assert [o.status for o in store.bulk_load(items)] == ["loaded", "loaded"]


def _bulk_paths(store, monkeypatch) -> list[tuple[str, str]]:
    """Each bulk request from here on as (``claims`` or ``events``, its ``filter_path``), in order."""
    sent: list[tuple[str, str]] = []
    send = Store._send_bulk

    def spied(self, payload, filter_path=FILTER_PATH, check=None):
        head = payload if isinstance(payload, bytes) else payload[0]
        sent.append(("claims" if self.index("claims").encode() in bytes(head[:200]) else "events", filter_path))
        return send(self, payload, filter_path, check)
    monkeypatch.setattr(Store, "_send_bulk", spied)
    return sent


def _event(store, doc_id: str, ref: int, import_id: str, **fields) -> BulkItem:
    doc = {"id": doc_id, **fields, "metadata": {"time": {"insert": "2025-11-15T00:00:00"},
                                                "aux": {"cdp": {"import_id": import_id, "row": ref}}}}
    return BulkItem(f"{store.prefix}event-2025-11", doc_id, orjson.dumps(doc), ref)


def test_columnar_chunks_ask_for_item_results_only_after_a_chunk_with_errors(store, monkeypatch):
    """A create load's columnar chunks ask the bulk API for ``errors`` alone while the store takes them
    whole; a chunk whose claims conflict is claimed again with statuses (its rows are duplicates, counted
    exactly), and the next chunks ask for statuses: 1, then 2, then 4 chunks after each such chunk."""
    columnar_loads(monkeypatch)
    store.chunk_docs, store.concurrency = 4, 1  # one chunk at a time: the order of the requests is fixed
    sent = _bulk_paths(store, monkeypatch)
    items = [_event(store, f"e-{i:02d}", i, "imp-1") for i in range(40)]
    assert Counter(o.status for o in store.bulk_load(items, import_id="imp-1")) == {"loaded": 40}
    assert sent == [("claims", TERSE_FILTER_PATH), ("events", TERSE_FILTER_PATH)] * 10
    sent.clear()
    again = [_event(store, f"e-{i:02d}", i, "imp-2") for i in range(40)]  # the same ids in another import
    assert Counter(o.status for o in store.bulk_load(again, import_id="imp-2")) == {"duplicate": 40}
    t, f = ("claims", TERSE_FILTER_PATH), ("claims", FILTER_PATH)
    # chunk 1 terse, claimed again; chunk 2 with statuses; 3 terse + again; 4-5; 6 terse + again; 7-10
    assert sent == [t, f, f, t, f, f, f, t, f, f, f, f, f]
    store.refresh([f"{store.prefix}event-*"])
    assert store.count(f"{store.prefix}event-2025-11") == 40
    assert {store.get(f"{store.prefix}event-2025-11", f"e-{i:02d}")["_source"]["metadata"]["aux"]["cdp"]["import_id"]
            for i in range(40)} == {"imp-1"}


def test_a_columnar_chunk_answered_only_with_errors_gets_each_rows_status(store, monkeypatch):
    """A chunk whose events were answered ``"errors": true`` without item results: its rows' statuses are
    read back — this row's copy is loaded, a copy written without a claim in the same month (a live
    collector's) is a duplicate left as it was, and a row with no copy is sent again, so the store's own
    reason fails it and its claim is given back."""
    columnar_loads(monkeypatch)
    store.chunk_docs, store.concurrency = 4, 1
    ix = f"{store.prefix}event-2025-11"
    store._request("PUT", f"/{ix}", body={"mappings": {"properties": {"name": {"type": "long"}}}})
    store._request("PUT", f"/{ix}/_doc/x", body={"id": "x", "name": 7, "metadata": {"aux": {"cdp": {
        "import_id": "collector", "row": 0}}}}, params={"refresh": "true"})
    sent = _bulk_paths(store, monkeypatch)
    items = [_event(store, "a", 1, "imp-1", name=1), _event(store, "x", 2, "imp-1", name=2),
             _event(store, "b", 3, "imp-1", name="page-view"), _event(store, "c", 4, "imp-1", name=4)]
    out = {o.ref: o for o in store.bulk_load(items, import_id="imp-1")}
    assert {r: o.status for r, o in out.items()} == {1: "loaded", 2: "duplicate", 3: "failed", 4: "loaded"}
    assert "mapper_parsing_exception" in (out[3].reason or ""), out[3].reason
    # the terse claims and events, b sent again with statuses, b's claim given back
    assert sent == [("claims", TERSE_FILTER_PATH), ("events", TERSE_FILTER_PATH), ("events", FILTER_PATH),
                    ("claims", FILTER_PATH)]
    store.refresh([ix])
    assert store.count(ix) == 3
    assert store.get(ix, "x")["_source"]["name"] == 7
    assert store.get(ix, "a")["_source"]["metadata"]["aux"]["cdp"] == {"import_id": "imp-1", "row": 1}
    claims = store._read_claims(["a", "b", "c", "x"])
    assert [d.get("found") for d in claims] == [True, False, True, True]
    sent.clear()  # the store's next chunk asks for statuses: its last one had errors
    assert [o.status for o in store.bulk_load([_event(store, "d", 1, "imp-2", name=5)], import_id="imp-2")] \
        == ["loaded"]
    assert sent == [("claims", FILTER_PATH), ("events", FILTER_PATH)]


@pytest.mark.parametrize("stage", [True, False], ids=["staged", "streamed"])
def test_events_written_as_arrow_batches_that_the_store_refuses_keep_their_source_rows(store, tmp_path, stage,
                                                                                      monkeypatch):
    """Rows the columnar event path hands to the store as ``ItemBatch``es (no object per row) and the store
    refuses — here a month whose index maps ``name`` as a number, so only numeric event names fit — go
    to the error file as their source rows with the store's reason; the others are loaded, counted
    exactly, over several chunks in flight."""
    store.chunk_docs = 4
    store._request("PUT", f"/{store.prefix}event-2025-11",
                   body={"mappings": {"properties": {"name": {"type": "long"}}}})
    header = "insert_id,ts,event,email,session_id,page,product_id,price,quantity,referrer"
    rows = [f"e-{i:03d},{1762000000 + i},{'42' if i % 3 else 'page-view'},c{i}@example.com,s-{i},/p/{i},"
            f"sku-{i},1.5,{i},mail" for i in range(30)]
    src = tmp_path / "events.csv"
    src.write_text("\n".join([header, *rows]) + "\n")
    columnar = []
    write_columns = Store._write_columns

    def spied(self, chunk, import_id):
        columnar.append(len(chunk))
        return write_columns(self, chunk, import_id)
    monkeypatch.setattr(Store, "_write_columns", spied)
    rep = _import(store, src, "events", tmp_path / "work", stage=stage)
    refused = [i for i in range(30) if i % 3 == 0]
    assert sum(columnar) == 30 and len(columnar) >= 7  # every row went the columnar way, 4 per chunk
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (30, 20, 10, 0)
    errors = read_error_file(rep.error_file)
    assert [e["insert_id"] for e in errors] == [f"e-{i:03d}" for i in refused]
    assert all(e["event"] == "page-view" and e["ts"] == str(1762000000 + int(e["quantity"])) for e in errors)
    assert all("mapper_parsing_exception" in e[FAILURE_COLUMN] for e in errors), errors[0][FAILURE_COLUMN]
    assert store.count(f"{store.prefix}event-2025-11", refresh=True) == 20
