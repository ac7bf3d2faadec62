"""Write modes against the real OpenSearch: ``create`` (first write wins, repeats are duplicates) and
``overwrite`` (a corrected re-import replaces the stored event wherever its month is and counts as
updated); the accounting's ``updated`` bucket through the pipeline and the ledger."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
import pytest
from store_kit import columnar_loads, crash_on_send

from cdp_ingest.errors import AccountingError, MappingError, StoreError
from cdp_ingest.ledger import Accounting, Ledger, SourceUnit
from cdp_ingest.mapping import Mapper, Mapping
from cdp_ingest.pipeline import begin_unit, import_unit, load_unit, transform_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import BulkItem, Store, make_client

pytestmark = pytest.mark.services
_prefixes = itertools.count()
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
MAPPING = {"kind": "event", "source_id": "t", "id_column": "insert_id", "identity": ["email"],
           "time": {"column": "ts", "format": "iso"}, "event_type": {"column": "event"},
           "fields": {"price": {"target": "properties.price", "type": "FLOAT"}}}


@pytest.fixture(params=["rows", "columns"])
def shape(request, monkeypatch):
    """A test of ``Store.bulk_load`` once with ``BulkItem``s, once with the create events as ``ItemBatch``es."""
    if request.param == "columns":
        columnar_loads(monkeypatch)
    return request.param


@pytest.fixture
def store(opensearch):
    s = Store(make_client(opensearch.info["url"]), prefix=f"t-wmode{next(_prefixes)}-", chunk_docs=3,
              concurrency=2, backoff=0.01)
    s.ensure_templates()
    yield s
    s._request("DELETE", f"/{s.prefix}*")


def _item(store, doc_id: str, month: str, ref: int, version: int, import_id: str) -> BulkItem:
    doc = {"id": doc_id, "properties": {"v": version},
           "metadata": {"time": {"insert": f"{month}-15T00:00:00"}, "aux": {"cdp": {"import_id": import_id,
                                                                                 "row": ref}}}}
    return BulkItem(f"{store.prefix}event-{month}", doc_id, orjson.dumps(doc), ref)


def _docs(store) -> dict[str, list[tuple[str, int]]]:
    store.refresh([f"{store.prefix}event-*"])
    resp = store._request("POST", f"/{store.prefix}event-*/_search", body={"size": 1000})
    out: dict[str, list[tuple[str, int]]] = {}
    for h in resp["hits"]["hits"]:
        out.setdefault(h["_id"], []).append((h["_index"].removeprefix(f"{store.prefix}event-"),
                                             int(h["_source"]["properties"]["v"])))
    return out


def test_overwrite_replaces_wherever_the_month_is_and_counts_updated(store, shape):
    first = [_item(store, f"e{i}", "2025-11", i, 1, "imp-1") for i in range(1, 5)]
    assert {o.status for o in store.bulk_load(first, import_id="imp-1")} == {"loaded"}
    store.refresh([f"{store.prefix}event-*"])
    second = [_item(store, "e1", "2025-11", 1, 2, "imp-2"),  # same month: replaced in place
              _item(store, "e2", "2025-12", 2, 2, "imp-2"),  # corrected time: moves to December
              _item(store, "e3", "2026-01", 3, 2, "imp-2"),  # ... and across the year
              _item(store, "e5", "2025-11", 4, 2, "imp-2"),  # new
              _item(store, "e6", "2025-11", 5, 2, "imp-2"),  # new, then repeated in this load:
              _item(store, "e5", "2025-11", 6, 3, "imp-2"),  # same month, next chunk
              _item(store, "e6", "2026-02", 7, 3, "imp-2")]  # another month, next chunk (last write wins)
    out = {o.ref: o.status for o in store.bulk_load(second, import_id="imp-2", write_mode="overwrite")}
    assert out == {1: "updated", 2: "updated", 3: "updated", 4: "loaded", 5: "loaded", 6: "updated", 7: "updated"}
    assert _docs(store) == {"e1": [("2025-11", 2)], "e2": [("2025-12", 2)], "e3": [("2026-01", 2)],
                            "e4": [("2025-11", 1)], "e5": [("2025-11", 3)], "e6": [("2026-02", 3)]}
    # the default mode keeps the first write: the same rows again are duplicates, nothing changes
    third = [_item(store, "e1", "2026-03", 1, 9, "imp-3"), _item(store, "e6", "2026-02", 2, 9, "imp-3")]
    assert [o.status for o in store.bulk_load(third, import_id="imp-3")] == ["duplicate", "duplicate"]
    assert _docs(store)["e1"] == [("2025-11", 2)] and _docs(store)["e6"] == [("2026-02", 3)]
    with pytest.raises(ValueError, match="write_mode"):
        list(store.bulk_load(third, write_mode="upsert"))


def _csv(path, rows):
    path.write_text("insert_id,ts,event,email,price\n" + "".join(f"{r}\n" for r in rows))
    return path


def _import(store, path, tmp_path, mode: str):
    m = Mapping.from_dict({**MAPPING, "write_mode": mode}, name=f"t-{mode}")
    assert m.write_mode == mode
    return import_unit(str(path), lambda: read_batches(path), lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                       store=store, ledger=Ledger(store), work_dir=tmp_path / "work", kind="event", source="test",
                       write_mode=m.write_mode)


@pytest.mark.parametrize("stage", [True, False], ids=["staged", "streamed"])
def test_corrected_reimport_through_the_pipeline(store, tmp_path, stage):
    original = _csv(tmp_path / "day.csv", [f"e{i},2025-11-{10 + i}T10:00:00Z,buy,u{i}@example.com,{i}.0"
                                           for i in range(10)])
    rep = _import(store, original, tmp_path, "create")
    assert (rep.rows_in, rep.loaded, rep.updated, rep.duplicates) == (10, 10, 0, 0)
    # the corrected file: e0-e5 fixed prices, e6/e7 moved to December, e8 bad, e10 new
    fixed = ([f"e{i},2025-11-{10 + i}T10:00:00Z,buy,u{i}@example.com,{i}.5" for i in range(6)]
             + [f"e{i},2025-12-01T10:00:00Z,buy,u{i}@example.com,{i}.5" for i in (6, 7)]
             + ["e8,2025-11-18T10:00:00Z,buy,u8@example.com,lots", "e10,2025-11-20T10:00:00Z,buy,u10@example.com,1"])
    create = _import(store, _csv(tmp_path / "day-create.csv", fixed), tmp_path, "create")
    assert (create.loaded, create.updated, create.rejected, create.duplicates) == (1, 0, 1, 8)
    over = _import(store, _csv(tmp_path / "day-fixed.csv", fixed + ["e11,2025-11-21T10:00:00Z,buy,x@example.com,2"]),
                   tmp_path, "overwrite")
    assert over.status == "committed"
    assert (over.rows_in, over.loaded, over.updated, over.rejected, over.duplicates) == (11, 1, 9, 1, 0)
    entry = Ledger(store).get(SourceUnit.from_file(str(tmp_path / "day-fixed.csv")).unit_id)
    assert (entry.loaded, entry.updated, entry.rejected, entry.duplicates) == (1, 9, 1, 0)
    assert entry.accounting == Accounting(11, 1, 1, 0, 9)
    store.refresh([f"{store.prefix}event-*"])
    assert store.count(f"{store.prefix}event-*") == 12
    assert store.count(f"{store.prefix}event-2025-12") == 2
    e6 = store.get(f"{store.prefix}event-2025-12", "e6")["_source"]
    assert e6["properties"]["price"] == 6.5 and e6["metadata"]["aux"]["cdp"]["import_id"] == over.import_id
    assert store.get(f"{store.prefix}event-2025-11", "e6") is None
    assert store.get(f"{store.prefix}event-2025-11", "e3")["_source"]["properties"]["price"] == 3.5


def test_overwrite_import_crashed_and_retried_balances_and_keeps_one_copy(store, tmp_path):
    list(store.bulk_load([_item(store, f"e{i}", "2025-11", i, 1, "old") for i in range(30)], import_id="old"))
    store.refresh([f"{store.prefix}event-*"])
    src = _csv(tmp_path / "fix.csv", [f"e{i},2025-12-0{1 + i % 9}T00:00:00Z,buy,u@example.com,{i}" for i in range(40)])
    m = Mapping.from_dict({**MAPPING, "write_mode": "overwrite"})
    ledger = Ledger(store)
    entry = begin_unit(ledger, str(src), kind="event", source="test")
    t = transform_unit(read_batches(src), Mapper(m, unit_key=entry.import_id, now=NOW).map_row,
                       prefix=store.prefix, import_id=entry.import_id, staged_path=tmp_path / "s.parquet",
                       error_path=tmp_path / "t-err.csv", write_mode=m.write_mode)
    with crash_on_send(store, 6), pytest.raises(StoreError):
        load_unit(t.staged, store, import_id=entry.import_id, error_path=tmp_path / "l.csv", columns=t.columns)
    ld = load_unit(t.staged, store, import_id=entry.import_id, error_path=tmp_path / "l.csv", columns=t.columns)
    assert ld.loaded + ld.updated == 40 and (ld.duplicates, ld.failed) == (0, 0)
    assert ld.updated >= 1 and ld.loaded >= 10  # e30-e39 are new; e0-e29 replaced (some by the crashed try)
    store.refresh([f"{store.prefix}event-*"])
    assert store.count(f"{store.prefix}event-*") == 40 == store.count(f"{store.prefix}event-2025-12")


def test_accounting_has_an_updated_bucket_and_mappings_check_write_mode():
    Accounting(rows_in=10, loaded=5, rejected=2, duplicates=1, updated=2).check()
    Accounting(rows_in=8, loaded=5, rejected=2, duplicates=1).check()  # callers without updated still work
    with pytest.raises(AccountingError, match=r"updated=2"):
        Accounting(rows_in=11, loaded=5, rejected=2, duplicates=1, updated=2).check()
    assert Accounting(3, 1, 1, 0, 1) + Accounting(2, 1, 0, 1) == Accounting(5, 2, 1, 1, 1)
    assert Mapping.from_dict(MAPPING).write_mode == "create"
    with pytest.raises(MappingError, match="write_mode must be create or overwrite"):
        Mapping.from_dict({**MAPPING, "write_mode": "replace"})
