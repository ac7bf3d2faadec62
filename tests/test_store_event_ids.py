"""One document per event id across all monthly indices, against the real OpenSearch: ids repeated
across month and year boundaries within one load, across loads, with chunks in flight, and a crashed
import's retry (its own earlier writes count as loaded, repeats in other months as duplicates)."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime

import orjson
import pytest
from store_kit import columnar_loads, crash_on_send

from cdp_ingest.errors import StoreError
from cdp_ingest.ledger import Ledger, SourceUnit
from cdp_ingest.mapping import Mapper, Mapping
from cdp_ingest.pipeline import begin_unit, load_unit, transform_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import CLAIM_LEASE, CLAIMED_META, PAUSE_META, BulkItem, LoadStats, Store, make_client

pytestmark = pytest.mark.services
_prefixes = itertools.count()
MAPPING = {"kind": "event", "source_id": "t", "id_column": "insert_id", "identity": ["email"],
           "time": {"column": "ts", "format": "iso"}, "event_type": {"column": "event"}}


def _bounded_sleep(limit: float = 60.0):
    """time.sleep, but a load that waits more than ``limit`` seconds in all fails the test (a row waiting
    for a claim would otherwise sit out the 15-minute lease)."""
    total = [0.0]

    def sleep(s: float) -> None:
        total[0] += s
        assert total[0] <= limit, f"the load waited over {limit:.0f} s"
        time.sleep(s)
    return sleep


@pytest.fixture(autouse=True, params=["rows", "columns"])
def _load_shape(request, monkeypatch):
    """Every test once with ``BulkItem``s, once with the create events as ``ItemBatch``es."""
    if request.param == "columns":
        columnar_loads(monkeypatch)


@pytest.fixture
def store(opensearch):
    s = Store(make_client(opensearch.info["url"]), prefix=f"t-evid{next(_prefixes)}-", chunk_docs=4,
              concurrency=2, backoff=0.01, sleep=_bounded_sleep())
    s.ensure_templates()
    yield s
    s._request("DELETE", f"/{s.prefix}*")


def _item(store, doc_id: str, month: str, ref: int, import_id: str = "imp-1") -> BulkItem:
    doc = {"id": doc_id, "metadata": {"time": {"insert": f"{month}-15T00:00:00"},
                                      "aux": {"cdp": {"import_id": import_id, "row": ref}}}}
    return BulkItem(f"{store.prefix}event-{month}", doc_id, orjson.dumps(doc), ref)


def _docs(store) -> dict[str, list[str]]:
    store.refresh([f"{store.prefix}event-*"])
    resp = store._request("POST", f"/{store.prefix}event-*/_search", body={"size": 1000, "_source": False})
    out: dict[str, list[str]] = {}
    for h in resp["hits"]["hits"]:
        out.setdefault(h["_id"], []).append(h["_index"].removeprefix(f"{store.prefix}event-"))
    return out


def test_repeated_ids_across_month_and_year_boundaries_in_one_load(store):
    rows = [("a", "2025-12"), ("b", "2025-11"), ("a", "2026-01"),  # a: December, then January (year boundary)
            ("c", "2025-11"), ("b", "2025-11"), ("d", "2025-12"),  # b again, same month (the 409 path)
            ("a", "2025-11"), ("e", "2026-01"), ("c", "2024-11"),  # later chunks: a and c in other months/years
            ("d", "2025-12"), ("f", "2025-11")]
    out = {o.ref: o.status for o in store.bulk_load(
        [_item(store, i, m, ref) for ref, (i, m) in enumerate(rows, 1)], import_id="imp-1")}
    assert out == {1: "loaded", 2: "loaded", 3: "duplicate", 4: "loaded", 5: "duplicate", 6: "loaded",
                   7: "duplicate", 8: "loaded", 9: "duplicate", 10: "duplicate", 11: "loaded"}
    assert _docs(store) == {"a": ["2025-12"], "b": ["2025-11"], "c": ["2025-11"], "d": ["2025-12"],
                            "e": ["2026-01"], "f": ["2025-11"]}


def test_a_second_load_sees_ids_stored_in_other_months(store):
    first = [_item(store, f"id{i}", "2025-12", i, "imp-1") for i in range(1, 21)]
    assert {o.status for o in store.bulk_load(first, import_id="imp-1")} == {"loaded"}
    store.refresh([f"{store.prefix}event-*"])  # what every load does when it ends
    # the same ids a month and a year later, and ten new ones, from another import
    second = ([_item(store, f"id{i}", "2026-01", i, "imp-2") for i in range(1, 11)]
              + [_item(store, f"id{i}", "2024-12", i, "imp-2") for i in range(11, 21)]
              + [_item(store, f"new{i}", "2026-01", 20 + i, "imp-2") for i in range(1, 11)])
    out = [o for o in store.bulk_load(second, import_id="imp-2")]
    assert sum(o.status == "duplicate" for o in out) == 20
    assert sorted(o.id for o in out if o.status == "loaded") == sorted(f"new{i}" for i in range(1, 11))
    docs = _docs(store)
    assert len(docs) == 30 and all(len(v) == 1 for v in docs.values())
    assert {docs[f"id{i}"][0] for i in range(1, 21)} == {"2025-12"}


def test_chunks_in_flight_and_a_small_window_still_give_one_document_per_id(store):
    """Two bulk threads with chunks of 4, ids repeating 1-3 chunks later in another month (so the first
    copy is often still in flight: the window refuses it; once its chunk is back, the id's claim does)."""
    store.id_window = 16
    months = ["2025-11", "2025-12", "2026-01", "2026-02"]
    items, ref = [], itertools.count(1)
    for i in range(150):
        items.append(_item(store, f"u{i}", months[i % 4], next(ref)))
        if i % 3 == 2:
            j = max(0, i - 1 - i % 7)  # an id from up to ~2 chunks back, in the next month
            items.append(_item(store, f"u{j}", months[(j + 1) % 4], next(ref)))
    out = list(store.bulk_load(items, import_id="imp-1"))
    assert sorted(o.ref for o in out) == list(range(1, len(items) + 1))
    loaded = [o.id for o in out if o.status == "loaded"]
    assert sorted(loaded) == sorted(f"u{i}" for i in range(150))
    assert sum(o.status == "duplicate" for o in out) == len(items) - 150
    docs = _docs(store)
    assert len(docs) == 150 and all(docs[f"u{i}"] == [months[i % 4]] for i in range(150))


def _racing(store, barrier: threading.Barrier) -> Store:
    """A Store on the same prefix whose event bulk requests wait for another load's (up to 2 s): each has
    checked its chunk's ids before either writes it, the moment two loads at the same time can race."""
    other = Store(store.client, prefix=store.prefix,
                  chunk_docs=store.chunk_docs, concurrency=2, backoff=0.01, sleep=_bounded_sleep())
    send = other._send_bulk

    def held(payload, *args, **kw):
        if b"import-event-ids" not in bytes((payload if isinstance(payload, bytes) else payload[0])[:200]):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                barrier.reset()
        return send(payload, *args, **kw)
    other._send_bulk = held  # type: ignore[method-assign]
    return other


# three imports, each with its own month (across a year boundary) and ids overlapping the others'
PLANS = {"imp-a": ("2025-12", range(0, 40)), "imp-b": ("2026-01", range(20, 60)),
         "imp-c": ("2024-06", range(10, 70, 2))}


def _three_loads_together(store, write_mode: str) -> tuple[dict[str, list], dict[str, list[str]]]:
    """Run ``PLANS``' loads at once (every event bulk request waits for another load's); check that each
    row has one outcome and that every unique id is stored once. Returns the outcomes and the documents."""
    barrier = threading.Barrier(2, timeout=2)
    results: dict[str, list] = {}

    def run(import_id: str) -> None:
        month, ids = PLANS[import_id]
        s = _racing(store, barrier)
        results[import_id] = list(s.bulk_load([_item(s, f"x{i}", month, ref, import_id)
                                               for ref, i in enumerate(ids, 1)], import_id=import_id,
                                              write_mode=write_mode))
    threads = [threading.Thread(target=run, args=(k,)) for k in PLANS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == set(PLANS)
    statuses = {"create": {"loaded", "duplicate"}, "overwrite": {"loaded", "updated"}}[write_mode]
    for k, out in results.items():
        assert sorted(o.ref for o in out) == list(range(1, len(PLANS[k][1]) + 1))
        assert {o.status for o in out} <= statuses
    docs = _docs(store)
    unique = set().union(*(set(ids) for _, ids in PLANS.values()))
    assert sorted(docs) == sorted(f"x{i}" for i in unique)
    assert all(len(v) == 1 for v in docs.values()), {k: v for k, v in docs.items() if len(v) > 1}
    return results, docs


@pytest.mark.parametrize("chunk_docs", [100, 4])
def test_loads_at_the_same_time_with_one_id_in_different_months_store_it_once(store, chunk_docs):
    """Three loads started together, each with its own month (across a year boundary) and ids
    overlapping the others'; every event bulk request waits for another load's. One document per id,
    and the three loads' accounting adds up: loaded = unique ids, the rest duplicates."""
    store.chunk_docs = chunk_docs
    results, docs = _three_loads_together(store, "create")
    loaded = [o for out in results.values() for o in out if o.status == "loaded"]
    assert sorted(o.id for o in loaded) == sorted(docs)
    for k, out in results.items():  # each loaded row's document is in its load's month
        assert all(docs[o.id] == [PLANS[k][0]] for o in out if o.status == "loaded")


def _claim(store, doc_id: str) -> dict:
    return store._request("GET", f"/{store.index('claims')}/_doc/{doc_id}")["_source"]


def test_a_claim_without_its_document_is_taken_over_only_once_its_lease_ran_out(store):
    """Claims left by loads that died between claim and write (no document): a stale one is taken over and
    written, this row's own claim (an earlier attempt) is written, a stale claim whose document exists
    stays a duplicate, and a young claim of another import whose document is stored is a duplicate."""
    now = store._clock()
    claims = store.index("claims")
    for doc_id, src in {"stale": {"m": "2025-10", "i": "imp-0", "r": 1, "t": int(now) - CLAIM_LEASE - 60},
                        "stored": {"m": "2025-10", "i": "imp-0", "r": 2, "t": int(now) - CLAIM_LEASE - 60},
                        "mine": {"m": "2025-12", "i": "imp-1", "r": 3, "t": int(now) - 60},
                        "dup": {"m": "2025-10", "i": "imp-0", "r": 4, "t": int(now) - 60}}.items():
        store._request("PUT", f"/{claims}/_doc/{doc_id}", body=src)
    for doc_id in ("stored", "dup"):
        store._request("PUT", f"/{store.prefix}event-2025-10/_doc/{doc_id}", body={"id": doc_id},
                       params={"refresh": "true"})
    rows = ["stale", "stored", "mine", "dup", "new"]
    out = {o.id: o.status for o in store.bulk_load([_item(store, i, "2025-12", ref) for ref, i in
                                                    enumerate(rows, 1)], import_id="imp-1")}
    assert out == {"stale": "loaded", "stored": "duplicate", "mine": "loaded", "dup": "duplicate", "new": "loaded"}
    assert _docs(store) == {"stale": ["2025-12"], "stored": ["2025-10"], "mine": ["2025-12"], "dup": ["2025-10"],
                            "new": ["2025-12"]}
    assert (_claim(store, "stale")["i"], _claim(store, "stale")["r"]) == ("imp-1", 1)
    assert _claim(store, "dup")["i"] == "imp-0" and _claim(store, "new")["m"] == "2025-12"


def test_a_row_whose_id_another_load_claimed_and_has_not_stored_waits_for_it(store):
    """Another import's young claim without its document: its load may still write it, or may have died.
    The row waits (the rest of its chunk is written meanwhile): a duplicate once that document is
    stored; written once the claim's lease ran out with no copy anywhere (nothing is lost)."""
    now = store._clock()
    claims = store.index("claims")
    store._request("PUT", f"/{store.prefix}event-2025-10")  # a load creates its month before it claims
    for doc_id in ("late", "dead"):
        store._request("PUT", f"/{claims}/_doc/{doc_id}", body={"m": "2025-10", "i": "imp-0", "r": 1,
                                                                "t": int(now) - 60})
    shift = [0.0]
    store._clock = lambda: now + shift[0]  # type: ignore[method-assign]
    slept: list[float] = []

    def sleep(s: float) -> None:
        if not slept:  # the other load writes one of its two events while this one waits
            store._request("PUT", f"/{store.prefix}event-2025-10/_doc/late", body={"id": "late"})
        slept.append(s)
        shift[0] += 300
    store._sleep = sleep  # type: ignore[method-assign]
    out = {o.id: o.status for o in store.bulk_load([_item(store, i, "2025-12", ref) for ref, i in
                                                    enumerate(["late", "dead", "new"], 1)], import_id="imp-1")}
    assert out == {"late": "duplicate", "dead": "loaded", "new": "loaded"}
    assert len(slept) == 3  # 60 s + 3 x 300 s > the 900 s lease
    assert _docs(store) == {"late": ["2025-10"], "dead": ["2025-12"], "new": ["2025-12"]}
    assert _claim(store, "late")["i"] == "imp-0" and _claim(store, "dead")["i"] == "imp-1"


def test_a_claim_naming_a_month_deleted_since_is_taken_over_at_once(store):
    """A young claim whose month index no longer exists (deleted after its event was stored: a load creates
    a month before it claims ids in it): nothing is in flight, so the row is written, not kept waiting."""
    for doc_id in ("gone", "moved"):
        store._request("PUT", f"/{store.index('claims')}/_doc/{doc_id}", body={
            "m": "2024-02", "i": "imp-0", "r": 1, "t": int(store._clock()) - 60})
    out = {o.id: o.status for o in store.bulk_load([_item(store, "gone", "2025-12", 1)], import_id="imp-1")}
    assert out == {"gone": "loaded"}
    out = {o.id: o.status for o in store.bulk_load([_item(store, "moved", "2026-01", 1, "imp-2")], import_id="imp-2",
                                                   write_mode="overwrite")}
    assert out == {"moved": "loaded"}
    assert _docs(store) == {"gone": ["2025-12"], "moved": ["2026-01"]}
    assert (_no_hold(store, "gone")["i"], _no_hold(store, "moved")["i"]) == ("imp-1", "imp-2")


def test_a_row_waits_for_another_loads_claim_at_most_claim_wait_then_fails_with_the_reason(store):
    """A young claim whose document does not come (its load died, not retried yet): after ``claim_wait``
    seconds the row fails with a reason (for the error file), neither lost as a duplicate nor stalling
    the load for the whole lease."""
    store._request("PUT", f"/{store.prefix}event-2025-10")
    store._request("PUT", f"/{store.index('claims')}/_doc/gone", body={"m": "2025-10", "i": "imp-0", "r": 1,
                                                                         "t": int(store._clock())})
    store.claim_wait = 3.0
    slept: list[float] = []
    store._sleep = slept.append  # type: ignore[method-assign]
    out = {o.id: o for o in store.bulk_load([_item(store, "gone", "2025-12", 1), _item(store, "ok", "2025-12", 2)],
                                            import_id="imp-1")}
    assert (out["gone"].status, out["ok"].status) == ("failed", "loaded")
    assert "another load claimed this event id" in out["gone"].reason and "import the row again" in out["gone"].reason
    assert sum(slept) >= 3.0 and len(slept) == 4  # 0.2 + 0.4 + 0.8 + 1.6
    assert _docs(store) == {"ok": ["2025-12"]} and _claim(store, "gone")["i"] == "imp-0"


def test_an_event_the_store_refuses_gives_its_claim_back(store):
    """A document refused by the store (a time that is not a date) frees its id: the corrected row,
    imported again by another import in another month, is loaded."""
    bad = BulkItem(f"{store.prefix}event-2025-11", "x", orjson.dumps(
        {"id": "x", "metadata": {"time": {"insert": "not a date"}}}), 1)
    out = list(store.bulk_load([bad, _item(store, "y", "2025-11", 2)], import_id="imp-1"))
    assert sorted((o.id, o.status) for o in out) == [("x", "failed"), ("y", "loaded")]
    assert "not a date" in next(o.reason for o in out if o.id == "x")
    found = store._request("GET", f"/{store.index('claims')}/_doc/x", ok_statuses=(404,))
    assert found["found"] is False and _claim(store, "y")["m"] == "2025-11"
    out = list(store.bulk_load([_item(store, "x", "2025-12", 1, "imp-2")], import_id="imp-2"))
    assert [o.status for o in out] == ["loaded"] and _docs(store) == {"x": ["2025-12"], "y": ["2025-11"]}


def test_a_claim_given_back_between_the_409_and_its_read_is_claimed_again(store, monkeypatch):
    """Another load's claim answers this load's create with 409, then is released (its event was refused)
    before this load reads it: the id is claimed again and written, not counted as a duplicate."""
    claims = store.index("claims")
    store._request("PUT", f"/{claims}/_doc/x", body={"m": "2025-10", "i": "imp-0", "r": 1,
                                                     "t": int(store._clock())}, params={"refresh": "true"})
    request = store._request

    def released_first(method, path, **kw):
        if path == "/_mget" and claims in str(kw.get("body")):
            request("DELETE", f"/{claims}/_doc/x")
        return request(method, path, **kw)
    monkeypatch.setattr(store, "_request", released_first)
    out = list(store.bulk_load([_item(store, "x", "2025-12", 1, "imp-2")], import_id="imp-2"))
    assert [o.status for o in out] == ["loaded"] and _docs(store) == {"x": ["2025-12"]}
    assert (_claim(store, "x")["i"], _claim(store, "x")["m"]) == ("imp-2", "2025-12")


def test_a_month_a_load_created_is_not_searched_by_the_next_create_load(store):
    """A past month created by a load holds only claimed events: the next create load does not search it
    (its claims answer); a month created otherwise (here: before any load) is still searched."""
    store._request("PUT", f"/{store.prefix}event-2024-01/_doc/old", body={"id": "old"}, params={"refresh": "true"})
    assert [o.status for o in store.bulk_load([_item(store, "a", "2025-11", 1)], import_id="imp-1")] == ["loaded"]
    searched: list[str] = []
    find = store._find_events
    store._find_events = lambda ids, months=None: searched.append(",".join(sorted(months or ["*"]))) or find(
        ids, months)
    out = list(store.bulk_load([_item(store, "a", "2025-12", 1, "imp-2"), _item(store, "old", "2025-12", 2, "imp-2"),
                                _item(store, "b", "2025-12", 3, "imp-2")], import_id="imp-2"))
    assert sorted((o.id, o.status) for o in out) == [("a", "duplicate"), ("b", "loaded"), ("old", "duplicate")]
    assert searched == [f"{store.prefix}event-2024-01"]
    assert _docs(store) == {"old": ["2024-01"], "a": ["2025-11"], "b": ["2025-12"]}


def test_an_overwrite_moves_the_claim_and_a_later_create_load_sees_it(store):
    assert {o.status for o in store.bulk_load([_item(store, "x", "2025-11", 1)], import_id="imp-1")} == {"loaded"}
    assert _claim(store, "x")["m"] == "2025-11"
    out = list(store.bulk_load([_item(store, "x", "2026-01", 1, "imp-2")], import_id="imp-2",
                               write_mode="overwrite"))
    assert [o.status for o in out] == ["updated"]
    assert _claim(store, "x")["m"] == "2026-01" and _docs(store) == {"x": ["2026-01"]}
    out = list(store.bulk_load([_item(store, "x", "2024-05", 1, "imp-3")], import_id="imp-3"))
    assert [o.status for o in out] == ["duplicate"] and _docs(store) == {"x": ["2026-01"]}


def _no_hold(store, doc_id: str) -> dict:
    src = _claim(store, doc_id)
    assert "w" not in src, (doc_id, src)
    return src


def test_overwrite_loads_at_the_same_time_with_one_id_in_different_months_leave_one_copy(store):
    """Three overwrite loads started together, each with its own month and ids overlapping the others';
    every event bulk request waits for another load's. Each id is written by one load at a time: one
    document per id, in the month its claim names, and the accounting adds up (one row per id loaded,
    every other row updated)."""
    results, docs = _three_loads_together(store, "overwrite")
    rows = [o for out in results.values() for o in out]
    assert sorted(o.id for o in rows if o.status == "loaded") == sorted(docs)
    assert sum(o.status == "updated" for o in rows) == len(rows) - len(docs)
    for doc_id, months in docs.items():
        assert _no_hold(store, doc_id)["m"] == months[0]


def test_an_overwrite_waits_for_a_create_load_between_its_claim_and_its_write(store):
    """A create load has claimed x (2025-11) and not written it yet; an overwrite of x (2026-01) waits for
    it instead of writing beside it, then replaces its copy: one document, in the overwrite's month."""
    claimed, go = threading.Event(), threading.Event()
    first = Store(store.client, prefix=store.prefix, chunk_docs=4, concurrency=2, backoff=0.01,
                  sleep=_bounded_sleep())
    send = first._send_bulk

    def held(payload, *args, **kw):
        if b"import-event-ids" not in bytes((payload if isinstance(payload, bytes) else payload[0])[:200]):
            claimed.set()
            assert go.wait(30)
        return send(payload, *args, **kw)
    first._send_bulk = held  # type: ignore[method-assign]
    out: dict[str, list] = {}
    t = threading.Thread(target=lambda: out.setdefault("create", list(first.bulk_load(
        [_item(first, "x", "2025-11", 1, "imp-1"), _item(first, "y", "2025-11", 2, "imp-1")], import_id="imp-1"))))
    t.start()
    assert claimed.wait(30)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        go.set()  # the create load writes while the overwrite waits
        threading.Event().wait(s)
    store._sleep = sleep  # type: ignore[method-assign]
    out["overwrite"] = list(store.bulk_load([_item(store, "x", "2026-01", 1, "imp-2"),
                                             _item(store, "z", "2026-01", 2, "imp-2")],
                                            import_id="imp-2", write_mode="overwrite"))
    t.join(30)
    assert slept, "the overwrite did not wait"
    assert sorted((o.id, o.status) for o in out["create"]) == [("x", "loaded"), ("y", "loaded")]
    assert sorted((o.id, o.status) for o in out["overwrite"]) == [("x", "updated"), ("z", "loaded")]
    assert _docs(store) == {"x": ["2026-01"], "y": ["2025-11"], "z": ["2026-01"]}
    assert (_no_hold(store, "x")["m"], _claim(store, "x")["i"]) == ("2026-01", "imp-2")


def test_an_overwrite_hold_is_waited_for_until_its_lease_runs_out_and_a_rows_own_hold_is_taken(store):
    """Holds left by overwrite loads that died: another import's is waited for while it is young and taken
    once its lease ran out (its old copies deleted); this row's own (an earlier attempt) is taken at once."""
    claims = store.index("claims")
    now = store._clock()
    for doc_id, src in {"held": {"m": "2025-10", "i": "imp-0", "r": 1, "t": int(now) - 60, "w": 1},
                        "mine": {"m": "2026-01", "i": "imp-2", "r": 2, "t": int(now) - 60, "w": 1}}.items():
        store._request("PUT", f"/{claims}/_doc/{doc_id}", body=src)
    for month in ("2025-09", "2025-10"):  # the copy before the dead overwrite, and the one it wrote
        store._request("PUT", f"/{store.prefix}event-{month}/_doc/held", body={"id": "held"},
                       params={"refresh": "true"})
    shift = [0.0]
    store._clock = lambda: now + shift[0]  # type: ignore[method-assign]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        shift[0] += 300
    store._sleep = sleep  # type: ignore[method-assign]
    out = {o.id: o.status for o in store.bulk_load([_item(store, "held", "2026-01", 1, "imp-2"),
                                                    _item(store, "mine", "2026-01", 2, "imp-2")],
                                                   import_id="imp-2", write_mode="overwrite")}
    assert out == {"held": "updated", "mine": "loaded"}
    assert len(slept) == 3  # 60 s + 3 x 300 s > the 900 s lease
    assert _docs(store) == {"held": ["2026-01"], "mine": ["2026-01"]}
    assert (_no_hold(store, "held")["i"], _no_hold(store, "mine")["r"]) == ("imp-2", 2)


def test_an_overwrite_the_store_refuses_gives_the_previous_claim_back(store):
    assert {o.status for o in store.bulk_load([_item(store, "x", "2025-11", 1)], import_id="imp-1")} == {"loaded"}
    before = _claim(store, "x")
    bad = [BulkItem(f"{store.prefix}event-2025-12", doc_id, orjson.dumps(
        {"id": doc_id, "metadata": {"time": {"insert": "not a date"}}}), ref) for ref, doc_id in enumerate("xz", 1)]
    out = list(store.bulk_load(bad, import_id="imp-2", write_mode="overwrite"))
    assert sorted((o.id, o.status) for o in out) == [("x", "failed"), ("z", "failed")]
    assert _claim(store, "x") == before and _docs(store) == {"x": ["2025-11"]}
    assert store._request("GET", f"/{store.index('claims')}/_doc/z", ok_statuses=(404,))["found"] is False


def test_retry_of_a_crashed_import_counts_its_own_writes_as_loaded(store, tmp_path):
    """A CSV whose ids repeat in other months and years; the load dies after some requests; the
    retry (same import_id) ends with one document per id, its own earlier writes loaded."""
    src = tmp_path / "events.csv"
    lines = ["insert_id,ts,event,email"]
    months = ["2025-11", "2025-12", "2026-01"]
    for i in range(60):
        lines.append(f"e{i},{months[i % 3]}-10T12:00:00Z,view,u{i % 7}@example.com")
        if i % 4 == 3:
            lines.append(f"e{i - 2},{months[(i + 1) % 3]}-20T12:00:00Z,view,u{i % 7}@example.com")
    src.write_text("\n".join(lines) + "\n")
    m = Mapping.from_dict(MAPPING, name="t")
    ledger = Ledger(store)
    entry = begin_unit(ledger, str(src), kind="event", source="test")
    t = transform_unit(read_batches(src), Mapper(m, unit_key=entry.import_id, now=datetime.now(UTC)).map_row,
                       prefix=store.prefix, import_id=entry.import_id, staged_path=tmp_path / "s.parquet",
                       error_path=tmp_path / "t-err.csv")
    assert (t.rows_in, t.rejected) == (75, 0)
    with crash_on_send(store, 7), pytest.raises(StoreError):
        load_unit(t.staged, store, import_id=entry.import_id, error_path=tmp_path / "l-err.csv", columns=t.columns)
    ledger.fail(entry, "crashed")
    assert 0 < len(_docs(store)) < 60

    retry = ledger.begin(SourceUnit.from_file(str(src)), kind="event", source="test")
    assert retry.import_id == entry.import_id
    ld = load_unit(t.staged, store, import_id=retry.import_id, error_path=tmp_path / "l-err.csv", columns=t.columns)
    assert (ld.loaded, ld.duplicates, ld.failed) == (60, 15, 0)
    docs = _docs(store)
    assert len(docs) == 60 and all(v == [months[int(k[1:]) % 3]] for k, v in docs.items())


# ---- automatic refresh paused on the months a load creates -----------------------------------------------
def _refresh_interval(store, index: str) -> str | None:
    resp = store._request("GET", f"/{index}/_settings", params={"flat_settings": "true"})
    return resp[index]["settings"].get("index.refresh_interval")


def _lease(store, index: str) -> float:
    resp = store._request("GET", f"/{index}/_mapping")
    return float(((resp[index]["mappings"].get("_meta") or {}).get(PAUSE_META) or {}).get("until", 0))


def _visible(store, index: str) -> int:
    """Documents a search sees now, without refreshing first."""
    return store._request("GET", f"/{index}/_count")["count"]


def test_a_load_pauses_the_refresh_of_past_months_it_creates_and_restores_it(store):
    """While the load runs, the months it created (not the live one, not one that existed) have their
    automatic refresh off and a lease; when it ends the setting is back, the lease cleared and every
    document searchable. (``pause_refresh`` true: a create load pauses too.)"""
    p = store.prefix
    store.pause_refresh = True
    store._clock = lambda: datetime(2025, 12, 20, tzinfo=UTC).timestamp()  # 2025-12 is the live month
    store._request("PUT", f"/{p}event-2025-09")  # existed before the load
    months = ["2025-10", "2025-11", "2025-12", "2025-09"]
    items = [_item(store, f"x{i}", months[i % 4], i + 1) for i in range(40)]
    load = store.bulk_load(items, import_id="imp-1")
    first = [next(load) for _ in range(4)]  # the first chunk came back: every month was seen
    during = {m: (_refresh_interval(store, f"{p}event-{m}"), _lease(store, f"{p}event-{m}")) for m in months}
    assert during["2025-10"][0] == during["2025-11"][0] == "-1"
    now = store._clock()
    assert now + 1700 < during["2025-10"][1] <= now + 1800 and during["2025-11"][1] == during["2025-10"][1]
    assert during["2025-12"] == (None, 0.0) and during["2025-09"] == (None, 0.0)
    rest = list(load)
    assert sorted(o.ref for o in first + rest) == list(range(1, 41))
    assert {o.status for o in first + rest} == {"loaded"}
    for m in months:
        assert _refresh_interval(store, f"{p}event-{m}") is None and _lease(store, f"{p}event-{m}") == 0
    assert _visible(store, f"{p}event-2025-10") == 10 and _visible(store, f"{p}event-2025-11") == 10


def test_a_load_that_dies_restores_the_refresh_and_a_killed_ones_months_are_recovered(store):
    p = store.prefix
    store.pause_refresh = True
    with crash_on_send(store, 2), pytest.raises(StoreError):
        list(store.bulk_load([_item(store, f"y{i}", "2025-03", i) for i in range(1, 30)], import_id="imp-1"))
    assert _refresh_interval(store, f"{p}event-2025-03") is None and _lease(store, f"{p}event-2025-03") == 0
    written = _visible(store, f"{p}event-2025-03")  # the chunks sent before the crash, searchable
    store.refresh([f"{p}event-2025-03"])
    assert written >= 4 and _visible(store, f"{p}event-2025-03") == written

    # a load killed outright leaves its months paused: written, not searchable, with a lease
    def killed(month: str, until: float, n: int) -> None:
        store._request("PUT", f"/{p}event-{month}", body={"settings": {"index.refresh_interval": "-1"},
                                                          "mappings": {"_meta": {PAUSE_META: {"until": until}}}})
        body = b"".join(b'{"create":{"_id":"%s-%d"}}\n{"id":1}\n' % (month.encode(), i) for i in range(n))
        store._request("POST", f"/{p}event-{month}/_bulk", body=body, headers={"content-type": "application/x-ndjson"})

    killed("2025-04", store._clock() - 60, 3)  # its lease ran out
    killed("2025-05", store._clock() + 600, 2)  # still held: maybe a load running now
    assert _visible(store, f"{p}event-2025-04") == 0 and _visible(store, f"{p}event-2025-05") == 0
    out = list(store.bulk_load([_item(store, "z1", "2025-06", 1)], import_id="imp-2"))
    assert [o.status for o in out] == ["loaded"]
    assert _refresh_interval(store, f"{p}event-2025-04") is None and _lease(store, f"{p}event-2025-04") == 0
    assert _visible(store, f"{p}event-2025-04") == 3
    assert _refresh_interval(store, f"{p}event-2025-05") == "-1" and _visible(store, f"{p}event-2025-05") == 0


def test_pause_refresh_off_leaves_the_template_setting(store):
    store.pause_refresh = False
    load = store.bulk_load([_item(store, f"w{i}", "2025-02", i) for i in range(1, 12)], import_id="imp-1")
    next(load)
    assert _refresh_interval(store, f"{store.prefix}event-2025-02") is None
    assert {o.status for o in load} == {"loaded"}


def test_by_default_only_an_overwrite_load_pauses_the_refresh_of_the_months_it_creates(store):
    """``pause_refresh`` None (the default): a create load searches none of the months it creates, so they
    keep the template's setting (with it off, the node wrote each shard's full indexing buffer at once and
    held the load ~1 s each time); an overwrite load, which searches them, pauses them until it ends."""
    assert store.pause_refresh is None
    p = store.prefix
    seen: dict[str, tuple[str | None, float]] = {}
    for mode, month in (("create", "2025-01"), ("overwrite", "2024-12")):
        load = store.bulk_load([_item(store, f"{mode}-{i}", month, i) for i in range(1, 12)], import_id="imp-1",
                               write_mode=mode)
        first = next(load)
        seen[mode] = (_refresh_interval(store, f"{p}event-{month}"), _lease(store, f"{p}event-{month}"))
        assert {o.status for o in [first, *load]} == {"loaded"}
        assert _refresh_interval(store, f"{p}event-{month}") is None and _lease(store, f"{p}event-{month}") == 0
        meta = store._request("GET", f"/{p}event-{month}/_mapping")[f"{p}event-{month}"]["mappings"]["_meta"]
        assert meta[CLAIMED_META] is True
    assert seen["create"] == (None, 0.0)
    assert seen["overwrite"][0] == "-1" and seen["overwrite"][1] > store._clock() + 1700


def test_a_create_load_refreshes_the_months_it_writes_while_it_runs(store, caplog):
    """``refresh_every``: a create load refreshes the months it writes every so often on its own thread, so
    its final refresh has little left to write; one that fails is logged and the load goes on. Not a
    month it paused (refreshed when it resumes), not in overwrite mode (its id window refreshes)."""
    p = store.prefix
    store.refresh_every = 0.05
    refreshes: list[str] = []
    request, send = store._request, store._send_bulk

    def recorded(method, path, **kw):
        if path.endswith("/_refresh"):
            refreshes.append(path)
            if len(refreshes) == 2 and failing:  # the first create load's second
                raise StoreError("refresh refused (test)")
        return request(method, path, **kw)

    def slow(payload, *args, **kw):  # ten chunks of four, ~0.6 s in all
        time.sleep(0.03)
        return send(payload, *args, **kw)

    store._request, store._send_bulk = recorded, slow
    failing = True
    runs = [("create", None, "2025-04", "2025-05"), ("overwrite", None, "2024-04", "2024-05"),
            ("create", True, "2023-04", "2023-05")]
    for mode, pause, *months in runs:
        store.pause_refresh = pause
        refreshes.clear()
        items = [_item(store, f"{mode}-{pause}-{i}", months[i % 2], i) for i in range(1, 41)]
        with caplog.at_level("WARNING", logger="cdp_ingest.store"):
            out = list(store.bulk_load(items, import_id="imp-1", write_mode=mode))
        assert sorted(o.ref for o in out) == list(range(1, 41))
        assert {o.status for o in out} == {"loaded"}
        pair = f"/{p}event-{months[0]},{p}event-{months[1]}/_refresh"
        if (mode, pause) == ("create", None):
            assert len(refreshes) >= 3 and set(refreshes) == {pair}
            assert "during the load failed (refresh refused (test)); the load goes on" in caplog.text
            failing = False
        else:  # months paused (pause_refresh true, or an overwrite load): once, when they resume
            assert refreshes == [pair]
        assert _docs(store).keys() >= {it.id for it in items}


def test_every_new_month_is_created_before_its_first_chunk_is_sent(store):
    """A month left to the bulk request to auto-create answered another chunk's id check, made meanwhile,
    with 503 until its shard had started (a retry and 0.5 s). Every month the load writes to first, the
    live one and with pausing off too, is created (PUT, which waits for its shard) before its first
    chunk goes out; one that existed is not created again; no request is retried."""
    p = store.prefix
    store._clock = lambda: datetime(2025, 12, 20, tzinfo=UTC).timestamp()  # 2025-12 is the live month
    store._request("PUT", f"/{p}event-2025-09")  # existed before the load
    sent: list[tuple[str, str, bytes]] = []
    request = store._request

    def recorded(method, path, **kw):
        body = kw.get("body")  # a bulk body is a list of blocks
        sent.append((method, path, b"".join(body) if isinstance(body, list) else body or b""))
        return request(method, path, **kw)

    store._request = recorded
    for pause in (True, False):
        store.pause_refresh = pause
        sent.clear()
        year = "2025" if pause else "2024"
        months = [f"{year}-12" if pause else "2025-12", f"{year}-10", "2025-09", f"{year}-11"]
        items = [_item(store, f"{year}-n{i}", months[(i // 4) % 4], i + 1) for i in range(48)]
        existed = {r["index"] for r in request("GET", f"/_cat/indices/{p}event-*", params={"format": "json"})}
        assert len(existed) == (1 if pause else 4)
        stats = LoadStats()
        assert {o.status for o in store.bulk_load(items, import_id="imp-1", stats=stats)} == {"loaded"}
        assert stats.retries == 0
        created = [path.strip("/") for method, path, _ in sent if method == "PUT" and path.count("/") == 1]
        new = {f"{p}event-{m}" for m in months} - existed
        assert sorted(created) == sorted(new)
        for ix in new:
            put = next(k for k, (m, path, _) in enumerate(sent) if m == "PUT" and path == f"/{ix}")
            first_bulk = next(k for k, (m, path, body) in enumerate(sent)
                              if path == "/_bulk" and b'"_index":"%s"' % ix.encode() in body)
            assert put < first_bulk, ix
        assert _refresh_interval(store, f"{p}event-2025-12") is None


# ---- load beats: a claim's load ended or was killed (no waiting for the lease), and a load whose beats lapsed
def _beat(store, token: str, age: float, import_id: str = "imp-0") -> None:
    store._request("PUT", f"/{store.index('loads')}/_doc/{token}",
                   body={"t": store._clock() - age, "i": import_id}, params={"refresh": "true"})


def _young(store, doc_id: str, month: str, token: str, **extra) -> None:
    """Another import's young claim of ``doc_id`` made by the load with beat ``token``."""
    store._request("PUT", f"/{store.index('claims')}/_doc/{doc_id}", body={
        "m": month, "i": "imp-0", "r": 1, "t": int(store._clock()) - 30, "l": token, **extra})


def test_a_load_writes_a_beat_while_it_runs_names_it_in_its_claims_and_removes_it_at_its_end(store, monkeypatch):
    import cdp_ingest.store as store_module

    monkeypatch.setattr(store_module, "LOAD_BEAT", 0.1)
    loads = store.index("loads")
    seen: list[dict] = []
    send = store._send_bulk

    def watched(payload, *args, **kw):
        if not seen and store._beat is not None:
            path = f"/{loads}/_doc/{store._beat.token}"
            first = store._request("GET", path)["_source"]
            time.sleep(0.5)  # the beat thread rewrites it meanwhile
            seen.extend([first, store._request("GET", path)["_source"], {"token": store._beat.token}])
        return send(payload, *args, **kw)
    monkeypatch.setattr(store, "_send_bulk", watched)
    out = list(store.bulk_load([_item(store, f"e{i}", "2025-12", i) for i in range(1, 4)], import_id="imp-1"))
    assert {o.status for o in out} == {"loaded"}
    first, later, token = seen[0], seen[1], seen[2]["token"]
    assert first["i"] == later["i"] == "imp-1" and later["t"] > first["t"]
    assert {_claim(store, f"e{i}")["l"] for i in range(1, 4)} == {token}
    gone = store._request("GET", f"/{loads}/_doc/{token}", ok_statuses=(404,))
    assert gone["found"] is False and store._beat is None


def test_a_load_clears_beats_killed_loads_left_over_a_day_ago(store):
    from cdp_ingest.store import BEAT_KEPT

    _beat(store, "old", BEAT_KEPT + 60)
    _beat(store, "stale", 600)  # a killed load's, not a day old yet: its claims may still be met
    assert [o.status for o in store.bulk_load([_item(store, "e", "2025-12", 1)], import_id="imp-1")] == ["loaded"]
    store.refresh([store.index("loads")])
    left = store._request("POST", f"/{store.index('loads')}/_search", body={"_source": False})["hits"]["hits"]
    assert [h["_id"] for h in left] == ["stale"]


def test_a_claim_whose_load_ended_or_was_killed_is_taken_over_without_waiting_for_its_lease(store):
    """Young claims of other loads without their events: the killed load's (beat older than LOAD_STALE)
    and the ended one's (beat removed) are taken over at once; the live load's (fresh beat) is waited
    for (here 1 s: then the row fails); the ended load's event that is stored is a duplicate."""
    from cdp_ingest.store import LOAD_STALE

    store._request("PUT", f"/{store.prefix}event-2025-10")  # a load creates its month before it claims
    _beat(store, "alive", 5)
    _beat(store, "killed", LOAD_STALE + 10)
    for doc_id, token in (("a", "alive"), ("k", "killed"), ("e", "ended"), ("s", "ended")):
        _young(store, doc_id, "2025-10", token)
    store._request("PUT", f"/{store.prefix}event-2025-10/_doc/s", body={"id": "s"})
    store.claim_wait = 1.0
    slept: list[float] = []
    store._sleep = slept.append  # type: ignore[method-assign]
    out = {o.id: o for o in store.bulk_load([_item(store, i, "2025-12", ref) for ref, i in
                                             enumerate(["a", "k", "e", "s", "n"], 1)], import_id="imp-1")}
    assert {i: o.status for i, o in out.items()} == {"a": "failed", "k": "loaded", "e": "loaded",
                                                      "s": "duplicate", "n": "loaded"}
    assert "that load is still running" in out["a"].reason
    assert 1.0 <= sum(slept) < 2.0  # only the live load's row waited
    assert _docs(store) == {"k": ["2025-12"], "e": ["2025-12"], "s": ["2025-10"], "n": ["2025-12"]}
    assert [_claim(store, i)["i"] for i in ("a", "k", "e", "s")] == ["imp-0", "imp-1", "imp-1", "imp-0"]


def test_a_load_that_writes_its_event_and_ends_while_its_claim_is_read_is_not_taken_over(store, monkeypatch):
    """The claim's event is read as absent, then its load writes it and ends (beat removed) before the
    beat is read: the event is read again after the beat, so it is a duplicate, not a second copy."""
    # created by that load, a past month: its refresh is off, so only a real-time read sees the event
    store._request("PUT", f"/{store.prefix}event-2025-10", body={"settings": {"index.refresh_interval": "-1"}})
    _young(store, "late", "2025-10", "gone-now")
    dead_loads = store._dead_loads

    def wrote_then_ended(claims):
        store._request("PUT", f"/{store.prefix}event-2025-10/_doc/late", body={"id": "late"})
        return dead_loads(claims)
    monkeypatch.setattr(store, "_dead_loads", wrote_then_ended)
    out = {o.id: o.status for o in store.bulk_load([_item(store, "late", "2025-12", 1)], import_id="imp-1")}
    assert out == {"late": "duplicate"} and _docs(store) == {"late": ["2025-10"]}


def test_an_overwrite_takes_the_hold_of_a_killed_load_at_once_and_waits_for_a_live_ones(store):
    from cdp_ingest.store import LOAD_STALE

    _beat(store, "alive", 5)
    _beat(store, "killed", LOAD_STALE + 10)
    for month in ("2025-09", "2025-10"):  # the copy before the killed overwrite, and the one it wrote
        store._request("PUT", f"/{store.prefix}event-{month}/_doc/k", body={"id": "k"}, params={"refresh": "true"})
    _young(store, "k", "2025-10", "killed", w=1)
    _young(store, "a", "2025-10", "alive", w=1)
    # u: the killed load's hold, its copy written where no search sees it yet (a month whose refresh a
    # load paused); v: a claim just past its lease, the same
    store._request("PUT", f"/{store.prefix}event-2025-08", body={"settings": {"index.refresh_interval": "-1"}})
    for doc_id in ("u", "v"):
        store._request("PUT", f"/{store.prefix}event-2025-08/_doc/{doc_id}", body={"id": doc_id})
    _young(store, "u", "2025-08", "killed", w=1)
    store._request("PUT", f"/{store.index('claims')}/_doc/v", body={
        "m": "2025-08", "i": "imp-0", "r": 1, "t": int(store._clock() - CLAIM_LEASE - 60)})
    store.claim_wait = 1.0
    slept: list[float] = []
    store._sleep = slept.append  # type: ignore[method-assign]
    out = {o.id: o.status for o in store.bulk_load([_item(store, i, "2026-01", ref, "imp-2") for ref, i in
                                                    enumerate(["k", "a", "u", "v"], 1)],
                                                   import_id="imp-2", write_mode="overwrite")}
    assert out == {"k": "updated", "a": "failed", "u": "updated", "v": "updated"}
    assert 1.0 <= sum(slept) < 2.0
    assert _docs(store) == {"k": ["2026-01"], "u": ["2026-01"], "v": ["2026-01"]}  # (_docs refreshes)
    assert (_no_hold(store, "k")["i"], _claim(store, "a")["l"]) == ("imp-2", "alive")


def _lapse_then(store, monkeypatch, meanwhile, answered: bool = False) -> list:
    """The load's beats lapse between its claims (or holds) and its first event write (it was frozen, or
    cut off from the store, for over LOAD_STALE / 2), and ``meanwhile`` another load acts; ``answered``:
    after that write passed its lapse check and was sent (its answer comes after the lapse). Returns a
    list that holds True once it has happened."""
    from cdp_ingest.store import LOAD_STALE

    send, done = store._send_bulk, []

    def lapsed(payload, *args, **kw):
        if done or b"import-event-ids" in bytes((payload if isinstance(payload, bytes) else payload[0])[:200]):
            return send(payload, *args, **kw)
        done.append(True)
        resp = send(payload, *args, **kw) if answered else None
        store._beat.last_ok -= LOAD_STALE
        meanwhile()
        return resp if answered else send(payload, *args, **kw)
    monkeypatch.setattr(store, "_send_bulk", lapsed)
    return done


def test_a_create_load_whose_beats_lapsed_claims_again_before_it_writes(store, monkeypatch):
    """While this load's beats had lapsed, another load took its claim of x over and stored x in another
    month: x is a duplicate (not a second copy); y, still claimed by this load, is written."""
    def took_over():
        store._request("PUT", f"/{store.index('claims')}/_doc/x", body={
            "m": "2025-09", "i": "imp-9", "r": 1, "t": int(store._clock()), "l": "other"})
        store._request("PUT", f"/{store.prefix}event-2025-09/_doc/x", body={"id": "x"})
    _lapse_then(store, monkeypatch, took_over)
    out = {o.id: o.status for o in store.bulk_load([_item(store, "x", "2025-12", 1), _item(store, "y", "2025-12", 2)],
                                                   import_id="imp-1")}
    assert out == {"x": "duplicate", "y": "loaded"}
    assert _docs(store) == {"x": ["2025-09"], "y": ["2025-12"]}
    assert (_claim(store, "x")["i"], _claim(store, "y")["i"]) == ("imp-9", "imp-1")


def test_an_overwrite_whose_beats_lapsed_takes_its_holds_again_before_it_writes(store, monkeypatch):
    """While this overwrite's beats had lapsed, another overwrite took its hold of x over, wrote x in
    2025-09 and finished; y's and z's holds are still this load's. This load takes x again (x's 2025-09
    copy is then deleted as replaced) and renews y's and z's: one copy each, in this load's month, x
    counted updated; z, which the store refuses, gets back the claim its hold replaced (imp-0's)."""
    store._request("PUT", f"/{store.index('claims')}/_doc/z", body={"m": "2025-11", "i": "imp-0", "r": 3, "t": 1})
    store._request("PUT", f"/{store.prefix}event-2025-11/_doc/z", body={"id": "z"}, params={"refresh": "true"})

    def took_over():
        store._request("PUT", f"/{store.index('claims')}/_doc/x", body={
            "m": "2025-09", "i": "imp-9", "r": 1, "t": int(store._clock()), "l": "other"})
        store._request("PUT", f"/{store.prefix}event-2025-09/_doc/x", body={"id": "x"})
    _lapse_then(store, monkeypatch, took_over)
    bad = BulkItem(f"{store.prefix}event-2025-12", "z", orjson.dumps({"id": "z", "metadata": {"time": {
        "insert": "not a date"}}}), 3)
    out = {o.id: o.status for o in store.bulk_load([_item(store, "x", "2025-12", 1), _item(store, "y", "2025-12", 2),
                                                    bad], import_id="imp-1", write_mode="overwrite")}
    assert out == {"x": "updated", "y": "loaded", "z": "failed"}
    assert _docs(store) == {"x": ["2025-12"], "y": ["2025-12"], "z": ["2025-11"]}
    assert [(_no_hold(store, i)["i"], _no_hold(store, i)["m"]) for i in ("x", "y")] == [("imp-1", "2025-12")] * 2
    assert (_no_hold(store, "z")["i"], _no_hold(store, "z")["m"]) == ("imp-0", "2025-11")


def test_a_request_answered_after_a_lapse_removes_copies_beside_a_taken_claim_and_reclaims_a_given_back_one(
        store, monkeypatch):
    """This load's first event request passed its lapse check, but its answer came after its beats had
    lapsed (frozen between check and send); meanwhile another load took x's claim over (its copy in
    2025-09) and took y's and gave it back (its row refused: the claim deleted). This load's copies of x
    and y in 2025-12 are deleted and the rows claimed again: x is a duplicate (the other copy stays), y is
    written again under this load's claim; z, untouched, stays loaded. One copy per id, none unclaimed."""
    claims = store.index("claims")

    def took_over():
        store._request("PUT", f"/{claims}/_doc/x", body={"m": "2025-09", "i": "imp-9", "r": 1,
                                                         "t": int(store._clock()), "l": "other"})
        store._request("PUT", f"/{store.prefix}event-2025-09/_doc/x", body={"id": "x"})
        store._request("DELETE", f"/{claims}/_doc/y")
    done = _lapse_then(store, monkeypatch, took_over, answered=True)
    out = {o.id: o.status for o in store.bulk_load([_item(store, i, "2025-12", k) for k, i in enumerate("xyz", 1)],
                                                   import_id="imp-1")}
    assert done and out == {"x": "duplicate", "y": "loaded", "z": "loaded"}
    assert _docs(store) == {"x": ["2025-09"], "y": ["2025-12"], "z": ["2025-12"]}
    assert [(_claim(store, i)["i"], _claim(store, i)["m"]) for i in "xyz"] == [
        ("imp-9", "2025-09"), ("imp-1", "2025-12"), ("imp-1", "2025-12")]


CHILD_LOAD = r"""
import sys
import orjson
import cdp_ingest.store as sm
sm.LOAD_BEAT, sm.LOAD_STALE = 0.5, 4.0
url, prefix, tag, where, mode = sys.argv[1:6]
store = sm.Store(sm.make_client(url), prefix=prefix, chunk_docs=50)
send, stops = store._send_bulk, []
def stop():
    if not stops:  # its claims are made: the parent kills or freezes it here
        stops.append(1)
        print("claimed", flush=True)
        sys.stdin.readline()
def stopped(payload, *args, **kw):
    if b"import-event-ids" not in bytes((payload if isinstance(payload, bytes) else payload[0])[:200]):
        if where == "checked" and kw.get("check"):  # after the lapse check passed, before the request
            check = kw["check"]
            kw["check"] = lambda: (check(), stop())
        else:
            stop()
    return send(payload, *args, **kw)
store._send_bulk = stopped
items = [sm.BulkItem(f"{prefix}event-2025-10", f"{tag}{i}", orjson.dumps({"id": f"{tag}{i}"}), i) for i in range(40)]
out = list(store.bulk_load(items, import_id=f"imp-{tag}", write_mode=mode))
print(orjson.dumps(sorted({o.status for o in out})).decode(), len(out), flush=True)
"""


def _child_load(store, opensearch, tag: str, where: str = "before", mode: str = "create"):
    """A load of 40 ids (``<tag>0``..) into 2025-10 in its own process (beat every 0.5 s, stale after 4 s),
    stopped once it has claimed them, before it writes them (``where``: before its lapse check, or
    ``checked``: between that check and the request); a line on its stdin lets it go on."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", CHILD_LOAD, opensearch.info["url"], store.prefix, tag, where,
                              mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "claimed", "the child never claimed"
    return child


def test_a_killed_loads_claims_are_taken_over_once_its_beat_is_stale(store, opensearch, monkeypatch):
    """A real load process claims 40 ids and is killed (SIGKILL) before it writes them. Another import of
    the same ids waits while the killed load's beat is young, then takes its claims over: every row
    loaded (none failed, none a duplicate of nothing), one document per id, in this import's month.
    (Beat every 0.5 s, stale after 4 s here, in both processes.)"""
    import cdp_ingest.store as store_module

    monkeypatch.setattr(store_module, "LOAD_STALE", 4.0)
    child = _child_load(store, opensearch, "k")
    child.kill()
    child.wait(30)
    assert child.returncode == -9
    killed_at = time.monotonic()
    claim = _claim(store, "k0")
    assert claim["i"] == "imp-k" and claim["l"]
    out = list(store.bulk_load([_item(store, f"k{i}", "2025-12", i + 1) for i in range(40)], import_id="imp-1"))
    waited = time.monotonic() - killed_at
    assert sorted((o.id, o.status) for o in out) == sorted((f"k{i}", "loaded") for i in range(40))
    assert 2.0 < waited < 30  # it did wait for the beat to go stale, not for the 15-minute lease
    docs = _docs(store)
    assert docs == {f"k{i}": ["2025-12"] for i in range(40)}
    assert {_claim(store, f"k{i}")["i"] for i in range(40)} == {"imp-1"}


def test_a_load_frozen_past_its_beat_does_not_write_beside_the_load_that_took_its_claims(store, opensearch,
                                                                                         monkeypatch):
    """A real load process claims 40 ids and is frozen (SIGSTOP) before it writes them, long enough for its
    beat to go stale: another import takes the claims over and loads the rows. Let go (SIGCONT), the frozen
    load sees its beats lapsed, claims its ids again and counts them duplicates: one document per id, in
    the other import's month. (Beat every 0.5 s, stale after 4 s here, in both processes.)"""
    import signal

    import cdp_ingest.store as store_module

    monkeypatch.setattr(store_module, "LOAD_STALE", 4.0)
    child = _child_load(store, opensearch, "f")
    try:
        child.send_signal(signal.SIGSTOP)
        out = list(store.bulk_load([_item(store, f"f{i}", "2025-12", i + 1) for i in range(40)], import_id="imp-1"))
        assert sorted((o.id, o.status) for o in out) == sorted((f"f{i}", "loaded") for i in range(40))
        child.send_signal(signal.SIGCONT)
        last, _ = child.communicate("go\n", timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0 and last.split() == ['["duplicate"]', "40"], last
    assert _docs(store) == {f"f{i}": ["2025-12"] for i in range(40)}
    assert {_claim(store, f"f{i}")["i"] for i in range(40)} == {"imp-1"}


@pytest.mark.parametrize("mode", ["create", "overwrite"])
def test_a_load_frozen_between_its_lapse_check_and_its_request_removes_what_it_wrote_beside(store, opensearch,
                                                                                             monkeypatch, mode):
    """A real load process claims (holds) 40 ids, passes its lapse check and is frozen (SIGSTOP) before its
    request goes out, long enough for another import to take the claims over and load the rows in
    2025-12. Let go, its request writes the 40 events in 2025-10; the answer comes after its beats
    lapsed, so it reads the claims again, deletes its 40 copies beside the other import's and tries the
    rows again: in create mode they are duplicates (the other import's copies stay), in overwrite mode
    they replace them (last write wins, counted updated). One document per id either way."""
    import signal

    import cdp_ingest.store as store_module

    monkeypatch.setattr(store_module, "LOAD_STALE", 4.0)
    tag = "c" if mode == "create" else "o"
    child = _child_load(store, opensearch, tag, "checked", mode)
    try:
        child.send_signal(signal.SIGSTOP)
        out = list(store.bulk_load([_item(store, f"{tag}{i}", "2025-12", i + 1) for i in range(40)],
                                   import_id="imp-1", write_mode=mode))
        assert sorted((o.id, o.status) for o in out) == sorted((f"{tag}{i}", "loaded") for i in range(40))
        child.send_signal(signal.SIGCONT)
        last, _ = child.communicate("go\n", timeout=60)
    finally:
        child.kill()
    if mode == "create":
        assert child.returncode == 0 and last.split() == ['["duplicate"]', "40"], last
        assert _docs(store) == {f"{tag}{i}": ["2025-12"] for i in range(40)}
        assert {_claim(store, f"{tag}{i}")["i"] for i in range(40)} == {"imp-1"}
    else:
        assert child.returncode == 0 and last.split() == ['["updated"]', "40"], last
        assert _docs(store) == {f"{tag}{i}": ["2025-10"] for i in range(40)}
        assert {(_no_hold(store, f"{tag}{i}")["i"], _no_hold(store, f"{tag}{i}")["m"])
                for i in range(40)} == {(f"imp-{tag}", "2025-10")}


def test_an_overwrite_taking_its_holds_again_knows_its_own_hold_by_its_load_whichever_row_it_names(store):
    """Two rows of x in one overwrite chunk share one hold, which names the last (row 2). If the beats
    lapse after row 2 was written and row 1 is still to send (a 429 on it alone), the hold is taken again
    for row 1: it is this load's own hold (its token), renewed, not another load's to wait for, and it
    keeps the claim it replaced (for the give-back)."""
    from cdp_ingest.store import _Beat

    store._request("PUT", f"/{store.index('claims')}/_doc/x", body={"m": "2025-11", "i": "imp-0", "r": 9, "t": 1})
    beat = store._beat = _Beat(store, "imp-1")
    beat.start()
    try:
        rows = [_item(store, "x", "2025-12", 1), _item(store, "x", "2025-12", 2)]
        holds = store._hold_ids(rows, "imp-1")
        assert list(holds.held) == ["x"] and _claim(store, "x")["r"] == 2
        keep, later, failed, _ = store._hold_again(rows[:1], holds, "imp-1")
    finally:
        beat.stop()
        store._beat = None
    assert ([it.ref for it in keep], later, failed) == ([1], [], [])
    group, prev, _ = holds.held["x"]
    assert [it.ref for it in group] == [1, 2] and prev["i"] == "imp-0"
    assert _claim(store, "x")["w"] == 1
