"""Pure engine pieces: coercion, mapping, documents, error file, accounting (no services)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdp_ingest.coerce import coerce
from cdp_ingest.documents import apply_operation, deterministic_id, event_index, json_schema, new_document
from cdp_ingest.errorfile import FAILURE_COLUMN, ErrorFileWriter, neutralise, read_error_file
from cdp_ingest.errors import AccountingError, MappingError, RowError
from cdp_ingest.ledger import Accounting
from cdp_ingest.mapping import Mapper, Mapping, profile_id_for

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "dtype", "expected"), [
    ("42", "INTEGER", 42), ("4.0", "INTEGER", 4), ("9223372036854775807", "LONG", 2**63 - 1),
    ("1.5", "FLOAT", 1.5), ("Y", "BOOLEAN", True), ("n", "BOOLEAN", False), ("TRUE", "BOOLEAN", True),
    ("0", "BOOLEAN", False), ("abc", "STRING", "abc"),
    ("$D_1700000000", "STRING", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
])
def test_coerce_accepts(text, dtype, expected):
    assert coerce(text, dtype, "col") == expected


@pytest.mark.parametrize(("text", "dtype", "message"), [
    ("4.5", "INTEGER", "expected INTEGER, got a fraction"), ("x", "INTEGER", "expected INTEGER"),
    ("3000000000", "INTEGER", "INTEGER out of range"), ("maybe", "BOOLEAN", "expected BOOLEAN"),
    ("nan", "FLOAT", "FLOAT must be finite"), ("$D_abc", "STRING", "not an epoch-seconds datetime"),
    ("$D_99999999999999", "STRING", "out of range"),
])
def test_coerce_rejects_with_column_name_not_value(text, dtype, message):
    with pytest.raises(RowError, match=message) as e:
        coerce(text, dtype, "secret_col")
    assert "secret_col" in str(e.value)
    assert text not in str(e.value) or text in ("x",)  # never echo the value (PII)


def test_profile_operations_are_idempotent_set_semantics():
    doc = {}
    ops = [("$set", "traits.plan", "gold"), ("$add", "traits.tags", "a"), ("$add", "traits.tags", ["b", "a"]),
           ("$remove", "traits.tags", "a"), ("$set", "traits.tmp", 1), ("$delete", "traits.tmp", None)]
    for op in ops:
        apply_operation(doc, *op)
    once = {"traits": {"plan": "gold", "tags": ["b"]}}
    assert doc == once
    for op in ops:  # replaying the same file after a crash changes nothing
        apply_operation(doc, *op)
    assert doc == once
    with pytest.raises(ValueError, match="unknown profile operation"):
        apply_operation(doc, "$inc", "x", 1)


def test_event_index_uses_event_time_month():
    assert event_index("cdp-", datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == "cdp-event-2025-12"
    assert deterministic_id("a", 1) == deterministic_id("a", 1) != deterministic_id("a", 2)


def test_new_documents_follow_tracardi_shape():
    for kind in ("profile", "session", "event"):
        doc = new_document(kind, "id-1", NOW)
        assert doc["id"] == "id-1"
        assert doc["metadata"]["time"]["insert"] == "2026-11-23T12:00:00.000000"
        schema = json_schema(kind)
        assert set(schema["required"]) == {"id", "metadata"}
        assert "metadata" in schema["properties"]
    assert new_document("profile", "p", NOW)["ids"] == ["p"]
    a, b = new_document("event", "1", NOW), new_document("event", "2", NOW)
    a["properties"]["x"] = 1
    assert b["properties"] == {}  # skeletons are not shared between documents


EVENTS = {
    "kind": "event", "id_column": "insert_id", "identity": ["email"], "session_column": "sid",
    "time": {"column": "ts", "format": "epoch"}, "event_type": {"column": "event"},
    "fields": {"price": {"target": "properties.price", "type": "FLOAT"}, "page": "properties.page"},
    "defaults": {"context.channel": "import"}, "derived": {"properties.label": "{event}@{page}"},
    "unmapped": "properties",
}


def test_mapping_builds_an_event_document():
    m = Mapping.from_dict(EVENTS, name="ev")
    out = Mapper(m, unit_key="u", now=NOW).map_row(
        {"insert_id": "e-1", "ts": "1764547200", "event": "add-to-cart", "email": "a@x.io", "sid": "s-1",
         "price": "9.5", "page": "/p/1", "Referrer Site": "google"}, 7)
    d = out.document
    assert (out.kind, out.doc_id, d["id"], d["type"], d["name"]) == ("event", "e-1", "e-1", "add-to-cart",
                                                                     "Add to cart")
    assert out.when == datetime(2025, 12, 1, tzinfo=UTC)
    assert d["metadata"]["time"]["create"] == "2025-12-01T00:00:00.000000"
    assert d["metadata"]["time"]["insert"] == "2026-11-23T12:00:00.000000"
    assert d["profile"] == {"id": profile_id_for("a@x.io")}
    assert d["session"]["id"] == "s-1"
    assert d["properties"] == {"price": 9.5, "page": "/p/1", "referrer_site": "google", "label": "add-to-cart@/p/1"}
    assert d["context"] == {"channel": "import"}


@pytest.mark.parametrize(("row", "message"), [
    ({"insert_id": "", "ts": "1", "event": "x"}, "column 'insert_id' (id) is empty"),
    ({"insert_id": "1", "ts": "", "event": "x"}, "column 'ts' (time) is empty"),
    ({"insert_id": "1", "ts": "1", "event": ""}, "column 'event' (event type) is empty"),
    ({"insert_id": "1", "ts": "1", "event": "x", "price": "cheap"}, "column 'price': expected FLOAT"),
    ({"insert_id": "1", "ts": "soon", "event": "x"}, "column 'ts': not an epoch-seconds datetime"),
    ({"insert_id": "1", "ts": "1", "event": "x", "email": "e" * 1024}, "shorter than 1024"),
])
def test_mapping_rejects_rows_with_one_reason(row, message):
    m = Mapping.from_dict(EVENTS, name="ev")
    with pytest.raises(RowError) as e:
        Mapper(m, unit_key="u", now=NOW).map_row(row, 1)
    assert message in str(e.value)


def test_profile_mapping_gives_operations_and_identity_id():
    m = Mapping.from_dict({"kind": "profile", "identity": ["email", "phone"],
                           "fields": {"email": {"target": "data.contact.email", "validate": "email"},
                                      "age": {"target": "data.pii.attributes.age", "type": "INTEGER"},
                                      "phone": {"target": "data.contact.phone", "validate": "phone"}}})
    mapper = Mapper(m, unit_key="u", now=NOW)
    out = mapper.map_row({"email": "", "phone": "+48 600-100-200", "age": "41"}, 1)
    assert out.doc_id == profile_id_for("+48 600-100-200")
    assert ("$set", "data.contact.phone", "+48600100200") in out.operations
    assert ("$set", "data.pii.attributes.age", 41) in out.operations
    with pytest.raises(RowError, match="no identity"):
        mapper.map_row({"email": "", "phone": "", "age": "1"}, 2)
    with pytest.raises(RowError, match="not a valid phone"):
        mapper.map_row({"email": "a@b.co", "phone": "12", "age": "1"}, 3)


@pytest.mark.parametrize(("raw", "message"), [
    ({"kind": "thing"}, "kind must be one of"),
    ({"kind": "profile", "fields": {}}, "needs identity"),
    ({"kind": "event", "fields": {}}, "needs event_type"),
    ({"kind": "event", "event_type": "x", "fields": {"a": "profile.id"}}, "can only be mapped under"),
    ({"kind": "event", "event_type": "x", "fields": {"a": {"target": "properties.a", "type": "MONEY"}}},
     "type must be one of"),
    ({"kind": "event", "event_type": "x", "colour": 1}, "unknown keys"),
    ({"kind": "event", "event_type": "x", "fields": {"a": "properties..a"}}, "not a dotted path"),
    # (the columnar profile mapping crashed on it with a KeyError, failing the whole import)
    ({"kind": "profile", "identity": "email", "unmapped": "properties"}, "a profile has no properties"),
    # malformed files: a message naming the key (they raised AttributeError/TypeError from deep inside)
    ({"kind": "event", "event_type": "x", "fields": ["email", "name"]}, "fields must map column names to targets"),
    ({"kind": "profile", "identity": {"email": 1}}, "identity must be a column name or a list of them"),
    ({"kind": "profile", "identity": ["email", 2]}, "identity must be a column name or a list"),
    ({"kind": "event", "event_type": ["buy"]}, "event_type must be text or {column: ..., value: ...}"),
    ({"kind": "event", "event_type": {"value": ["buy"]}}, "event_type must be text or"),
    ({"kind": "event", "event_type": "x", "time": ["ts", "iso"]}, "time must be text or {column: ..., format: ...}"),
    ({"kind": "event", "event_type": "x", "time": {"column": "ts", "fromat": "iso"}}, "time must be text or"),
    ({"kind": "event", "event_type": "x", "defaults": ["traits.a"]}, "defaults must map targets to values"),
    ({"kind": "event", "event_type": "x", "derived": {"traits.a": ["{x}"]}}, "the template must be text"),
    ({"kind": "event", "event_type": "x", "derived": {1: "{x}"}}, "derived: 1 must be text"),
    ({"kind": "event", "event_type": "x", "id_column": 1}, "id_column must be text, not 1"),
    ({"kind": "event", "event_type": "x", "source_id": ["crm"]}, "source_id must be text"),
    ({"kind": "event", "event_type": "x", 1: "x", "colour": 2}, r"unknown keys \['1', 'colour'\]"),
    ({"kind": "event", "event_type": "x", "fields": {"a": {"target": "traits.a", 1: 2, "x": 3}}},
     r"unknown options \['1', 'x'\]"),
    # a default the documents' JSON cannot hold (it failed every row's serialisation: the whole import)
    ({"kind": "event", "event_type": "x", "defaults": {"traits.n": 2**70}},
     "defaults 'traits.n' is not a JSON value: Integer exceeds 64-bit range"),
    ({"kind": "event", "event_type": "x", "fields": {"a": {"target": "traits.a", "default": [2**64]}}},
     "field 'a': default is not a JSON value"),
])
def test_mapping_file_errors_are_precise(raw, message):
    with pytest.raises(MappingError, match=message):
        Mapping.from_dict(raw, name="bad")


def test_defaults_are_json_values(tmp_path):
    """YAML reads ``{1: small}`` with a number as the key and ``2025-11-01`` as a date: the key is text and the
    date ISO text, as JSON holds them (a number key made orjson refuse every row's document: the import
    failed with a TypeError)."""
    path = tmp_path / "m.yaml"
    path.write_text("kind: event\nevent_type: x\ntime: ts\ndefaults:\n  traits.sizes: {1: small, 2.5: [x]}\n"
                    "  traits.since: 2025-11-01\nfields:\n  c: {target: traits.c, default: {7: seven}}\n")
    m = Mapping.load(path)
    assert m.defaults == {"traits.sizes": {"1": "small", "2.5": ["x"]}, "traits.since": "2025-11-01"}
    assert m.fields[0].default == {"7": "seven"}
    doc = Mapper(m, unit_key="u", now=NOW).map_row({"ts": "1761955200", "c": ""}, 1).document
    assert doc["traits"] == {"c": {"7": "seven"}, "sizes": {"1": "small", "2.5": ["x"]}, "since": "2025-11-01"}


def test_bundled_demo_mappings_load(tmp_path):

    import cdp_ingest

    for p in (Path(cdp_ingest.__file__).parent / "mappings").glob("*.yaml"):
        assert Mapping.load(p).kind in ("profile", "session", "event")
    broken = tmp_path / "x.yaml"
    broken.write_text("kind: [unclosed")
    with pytest.raises(MappingError, match="cannot read YAML"):
        Mapping.load(broken)


def test_error_file_neutralises_formulas_and_keeps_every_value(tmp_path):
    assert neutralise("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert neutralise("-1") == "'-1" and neutralise("@x") == "'@x" and neutralise("+1") == "'+1"
    assert neutralise("plain") == "plain"
    w = ErrorFileWriter(tmp_path / "e.csv", ["a", "b"])
    assert w.close() is None and not (tmp_path / "e.csv").exists()  # nothing rejected: no file
    with ErrorFileWriter(tmp_path / "e.csv", ["a", "b"]) as w:
        w.write({"a": "=cmd|' /C calc'!A0", "b": "ok\nline2"}, "bad value")
        w.write(["1", "2", "3"], "too many fields")
    rows = read_error_file(tmp_path / "e.csv")
    assert rows[0] == {"a": "'=cmd|' /C calc'!A0", "b": "ok\nline2", FAILURE_COLUMN: "bad value"}
    assert rows[1][FAILURE_COLUMN] == "too many fields (extra fields: 3)"
    with ErrorFileWriter(tmp_path / "e.csv", ["a", "b"], append=True) as w:
        w.write({"a": "x", "b": "y"}, "later")
    assert [r[FAILURE_COLUMN] for r in read_error_file(tmp_path / "e.csv")][-1] == "later"


def test_error_file_grows_its_header_for_a_row_with_new_columns(tmp_path):
    """Rows of JSON lines need not share their keys. A rejected row with a column the header did not name
    lost that value (only its name went into the reason); the header grows now and every row keeps its
    values under it, also when appending to a file another writer wrote under another header."""
    path = tmp_path / "e.csv"
    with ErrorFileWriter(path, ["id", "a"]) as w:
        w.write({"id": "1", "a": "x\r\nx"}, "first")  # a cell of two lines
        w.write({"id": "2", "=b": "y"}, "second")  # a new column (its name a formula: neutralised)
        w.write({"c": "z", "a": "w"}, "third")
    assert read_error_file(path) == [
        {"id": "1", "a": "x\r\nx", "'=b": "", "c": "", FAILURE_COLUMN: "first"},
        {"id": "2", "a": "", "'=b": "y", "c": "", FAILURE_COLUMN: "second"},
        {"id": "", "a": "w", "'=b": "", "c": "z", FAILURE_COLUMN: "third"}]
    with ErrorFileWriter(path, ["a", "d"], append=True) as w:  # another header: read by name
        w.write({"a": "v", "d": "u"}, "fourth")
        w.write({"e": "t"}, "fifth")
    rows = read_error_file(path)
    assert list(rows[0]) == ["id", "a", "'=b", "c", "d", "e", FAILURE_COLUMN]
    assert [{k: v for k, v in r.items() if v} for r in rows] == [
        {"id": "1", "a": "x\r\nx", FAILURE_COLUMN: "first"}, {"id": "2", "'=b": "y", FAILURE_COLUMN: "second"},
        {"a": "w", "c": "z", FAILURE_COLUMN: "third"}, {"a": "v", "d": "u", FAILURE_COLUMN: "fourth"},
        {"e": "t", FAILURE_COLUMN: "fifth"}]
    with ErrorFileWriter(path, ["id", "a", "'=b", "c", "d", "e"], append=True) as w:  # the same header: appended
        w.write({"id": "6"}, "sixth")
    assert read_error_file(path)[-1] == {"id": "6", "a": "", "'=b": "", "c": "", "d": "", "e": "",
                                          FAILURE_COLUMN: "sixth"}


def test_merged_error_files_with_other_headers_are_joined_by_column_name(tmp_path):
    from cdp_ingest.pipeline import merge_error_files

    with ErrorFileWriter(tmp_path / "t.csv", ["id", "a"]) as w:
        w.write({"id": "1", "a": "x"}, "transform")
    with ErrorFileWriter(tmp_path / "l.csv", ["id", "b", "a"]) as w:
        w.write({"id": "2", "b": "y", "a": "z"}, "load")
    out = merge_error_files(tmp_path / "all.csv", str(tmp_path / "t.csv"), None, str(tmp_path / "l.csv"))
    assert read_error_file(out) == [{"id": "1", "a": "x", "b": "", FAILURE_COLUMN: "transform"},
                                    {"id": "2", "a": "z", "b": "y", FAILURE_COLUMN: "load"}]
    with ErrorFileWriter(tmp_path / "l2.csv", ["id", "a"]) as w:  # the same header: the files are concatenated
        w.write({"id": "3", "a": "=1"}, "load")
    out = merge_error_files(tmp_path / "all2.csv", str(tmp_path / "t.csv"), str(tmp_path / "l2.csv"))
    assert Path(out).read_bytes() == f"id,a,{FAILURE_COLUMN}\r\n1,x,transform\r\n3,'=1,load\r\n".encode()


def test_accounting_check():
    Accounting(10, 7, 2, 1).check()
    with pytest.raises(AccountingError, match="rows_in=10 but loaded=7"):
        Accounting(10, 7, 2, 0).check()
    assert Accounting(1, 1, 0, 0) + Accounting(2, 0, 1, 1) == Accounting(3, 1, 1, 1)


def test_cli_prints_schemas_and_checks_mappings(tmp_path, capsys):
    import json as _json

    import cdp_ingest
    from cdp_ingest.cli import main

    assert main(["schema", "event"]) == 0
    schema = _json.loads(capsys.readouterr().out)
    assert schema["title"] == "Tracardi event" and "properties" in schema["properties"]
    mapping = Path(cdp_ingest.__file__).parent / "mappings" / "demo-events.yaml"
    csv_ok = tmp_path / "ok.csv"
    csv_ok.write_text("insert_id,ts,event,email\n")
    assert main(["check-mapping", str(mapping), str(csv_ok)]) == 0
    csv_bad = tmp_path / "bad.csv"
    csv_bad.write_text("id,when\n")
    assert main(["check-mapping", str(mapping), str(csv_bad)]) == 1
    assert "not in the header: email, event, insert_id, ts" in capsys.readouterr().err


def test_bulk_body_blocks_are_the_ndjson_of_the_chunk():
    """The bulk body goes out as blocks of PAYLOAD_BLOCK documents (no multi-MB buffer per request):
    together they are the NDJSON of every item in order, with its op, index and escaped id."""
    import orjson

    from cdp_ingest.store import PAYLOAD_BLOCK, Blocks, BulkItem, Store

    items = [BulkItem(f"p-event-2025-{1 + i % 3:02d}", f'id-{i}"\\', orjson.dumps({"n": i}), i,
                      "index" if i % 5 == 0 else "create") for i in range(2 * PAYLOAD_BLOCK + 7)]
    blocks = Store._payload(items)
    assert isinstance(blocks, Blocks) and [len(b.splitlines()) for b in blocks] == [
        2 * PAYLOAD_BLOCK, 2 * PAYLOAD_BLOCK, 14]
    lines = b"".join(blocks).splitlines()
    assert blocks.size == len(b"".join(blocks)) and len(lines) == 2 * len(items)
    for it, head, body in zip(items, lines[::2], lines[1::2], strict=True):
        assert orjson.loads(head) == {it.op: {"_index": it.index, "_id": it.id}}
        assert body == it.source
    assert Store._payload([]) == []


def test_id_window_claims_and_forgets_per_chunk():
    """The load's id window (Store._check_window + _IdWindow): in create mode a repeated id is a duplicate, in
    this chunk or one before; in overwrite mode it is sent again and the earlier chunk's expiry keeps it
    until the later chunk's; the window's size counts what expiry frees."""
    import orjson

    from cdp_ingest.store import BulkItem, Store, _IdWindow

    store = Store(None, prefix="p-")
    store._event_indices = {"p-event-2025-01", "p-event-2025-02"}  # exist: no month is created
    ev = "p-event-2025-0%d"

    def items(*specs):
        return [BulkItem(ev % m, i, orjson.dumps({"id": i}), ref) for ref, (i, m) in enumerate(specs, 1)]

    w = _IdWindow()
    send, early, _, _ = store._check_window(items(("a", 1), ("b", 1), ("a", 2)) + [
        BulkItem("p-profile", "a", b"{}", 9)], w, 1, "create")
    assert [(it.id, it.index) for it in send] == [("a", ev % 1), ("b", ev % 1), ("a", "p-profile")]
    assert [(o.ref, o.status) for o in early] == [(3, "duplicate")] and len(w) == 2
    send, early, _, _ = store._check_window(items(("b", 2), ("c", 2)), w, 2, "create")
    assert [it.id for it in send] == ["c"] and [o.ref for o in early] == [1] and len(w) == 3
    w.expire(1)
    assert (w.get("a"), w.get("b"), w.get("c"), len(w)) == (None, None, (ev % 2, 2), 1)
    assert w.indices == {ev % 1, ev % 2}

    w = _IdWindow()
    store._check_window(items(("a", 1), ("b", 1)), w, 1, "overwrite")
    send, early, replaces, after = store._check_window(items(("a", 2), ("a", 2)), w, 2, "overwrite")
    assert [it.op for it in send] == ["index", "index"] and not early
    assert replaces == {1: {ev % 1}} and after == 1 and len(w) == 4
    w.expire(1)
    assert (w.get("a"), w.get("b"), len(w)) == ((ev % 2, 2), None, 2)
    w.expire(2)
    assert (w.get("a"), len(w)) == (None, 0)


def test_id_window_of_item_batch_chunks_keeps_their_ids_as_arrays():
    """A create load's ``ItemBatch`` chunks (Store._check_window_columns): an id repeated in the chunk or
    sent in a chunk still in flight is a duplicate (the first row wins); the window keeps each chunk's ids as
    one array until its chunk is expired; a chunk of ``BulkItem``s after them sees those ids too."""
    import orjson

    from cdp_ingest.arrow import pa
    from cdp_ingest.store import BulkItem, ItemBatch, Store, _IdWindow

    store = Store(None, prefix="p-")
    store._event_indices = {"p-event-2025-01", "p-event-2025-02"}
    ev = "p-event-2025-0%d"

    def batch(*specs, first=1):
        return ItemBatch(pa.array(range(first, first + len(specs)), pa.int64()),
                         pa.array([ev % m for _, m in specs], pa.string()),
                         pa.array([i for i, _ in specs], pa.string()),
                         pa.array([orjson.dumps({"id": i}) for i, _ in specs], pa.binary()))

    w = _IdWindow()
    sent, early, _, _ = store._check_window_columns(batch(("a", 1), ("b", 1), ("a", 2), ("b", 2), ("c", 1)), w, 1)
    assert sent.ids.to_pylist() == ["a", "b", "c"] and sent.refs.to_pylist() == [1, 2, 5]
    assert [(o.ref, o.status, o.id) for o in early] == [(3, "duplicate", "a"), (4, "duplicate", "b")]
    assert len(w) == 3 and w.indices == {ev % 1}
    sent, early, _, _ = store._check_window_columns(batch(("c", 2), ("d", 2), ("d", 2), first=10), w, 2)
    assert sent.ids.to_pylist() == ["d"] and [(o.ref, o.id) for o in early] == [(10, "c"), (12, "d")]
    assert len(w) == 4 and w.indices == {ev % 1, ev % 2}
    w.expire(1)  # chunk 1 came back: its ids are claimed, the claims refuse a later copy
    sent, early, _, _ = store._check_window_columns(batch(("a", 2), ("d", 1), first=20), w, 3)
    assert sent.ids.to_pylist() == ["a"] and [(o.ref, o.id) for o in early] == [(21, "d")]
    rows = [BulkItem(ev % 1, i, b"{}", ref) for ref, i in ((30, "d"), (31, "e"), (32, "a"))]
    send, early, _, _ = store._check_window(rows, w, 4, "create")
    assert [it.id for it in send] == ["e"] and [o.ref for o in early] == [30, 32]
    assert (w.get("d"), w.get("a"), len(w)) == (("", 2), ("", 3), 3)
    w.expire(3)
    assert (w.get("a"), w.get("e"), len(w)) == (None, (ev % 1, 4), 1)
    sent, early, _, _ = store._check_window_columns(batch(("a", 1), ("e", 1), first=40), w, 5)
    assert sent.ids.to_pylist() == ["a"] and [o.ref for o in early] == [41]


def test_staged_origs_finds_refused_rows_in_any_row_group(tmp_path, monkeypatch):
    """The load reads a staged file without its source rows; a refused row's is read from its row group
    (refs out of order, groups read again after leaving the two-group cache, a ref not staged: None)."""
    import orjson
    import pyarrow.parquet as pq

    from cdp_ingest.pipeline import StagedOrigs, transform_unit
    from cdp_ingest.readers import read_batches

    rows = [{"id": f"e{i}", "email": f"u{i}@x.io", "ts": str(1761955200 + i)} for i in range(1, 41)]
    rows[4]["ts"] = "never"  # row 5 rejected: not staged
    path = tmp_path / "ev.csv"
    path.write_text("id,email,ts\n" + "".join(f"{r['id']},{r['email']},{r['ts']}\n" for r in rows))
    mapping = Mapping.from_dict({"kind": "event", "id_column": "id", "identity": ["email"],
                                 "time": {"column": "ts", "format": "epoch"}, "event_type": {"value": "visit"}})

    t = transform_unit(read_batches(str(path)), Mapper(mapping, unit_key="u", now=NOW).map_row, prefix="p-",
                       import_id="imp", staged_path=tmp_path / "s.parquet", error_path=tmp_path / "e.csv",
                       flush_rows=6)
    assert pq.ParquetFile(t.staged).num_row_groups == 7 and t.accepted == 39
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: reads.append(g) or real(self, g, **kw))
    origs = StagedOrigs(t.staged)
    for ref in (40, 1, 2, 13, 40, 7, 5, 1):
        got = origs.get(ref)
        assert (got is None) if ref == 5 else orjson.loads(got) == rows[ref - 1], ref
    # staged refs by group: 1-4,6,7 | 8-13 | ... | 38-40; two groups cached, the oldest evicted
    assert reads == [6, 0, 1, 6, 0]


def test_staged_file_written_beside_the_mapping_keeps_file_order_and_a_failed_write_fails_the_transform(
        tmp_path, monkeypatch):
    """``transform_unit`` compresses and writes each staged table in a thread while the next rows map: the
    row groups still come in file order, and a write that fails fails the transform with its own error
    (no staged file, rather than a file missing the rows of the failed write)."""
    import threading

    import pyarrow.parquet as pq

    from cdp_ingest.pipeline import read_stage, transform_unit
    from cdp_ingest.readers import read_batches

    path = tmp_path / "ev.csv"
    path.write_text("id,email,ts\n" + "".join(f"e{i},u{i}@x.io,{1761955200 + i}\n" for i in range(1, 101)))
    mapping = Mapping.from_dict({"kind": "event", "id_column": "id", "identity": ["email"],
                                 "time": {"column": "ts", "format": "epoch"}, "event_type": {"value": "visit"}})
    real = pq.ParquetWriter.write_table
    writers: list[str] = []

    def write(self, table, *a, fail_at=None, **kw):
        writers.append(threading.current_thread().name)
        if fail_at is not None and len(writers) == fail_at:
            raise OSError("No space left on device")
        return real(self, table, *a, **kw)

    def run(staged, **kw):
        monkeypatch.setattr(pq.ParquetWriter, "write_table", lambda self, t, *a, **k: write(self, t, *a, **kw, **k))
        writers.clear()
        return transform_unit(read_batches(str(path), batch_rows=16), Mapper(mapping, unit_key="u", now=NOW).map_row,
                              prefix="p-", import_id="imp", staged_path=staged, error_path=tmp_path / "e.csv")

    t = run(tmp_path / "ok.parquet")
    refs = [r for b in read_stage(t.staged, columns=["ref"]) for r in b["ref"]]
    assert refs == list(range(1, 101)) and t.accepted == 100
    assert len(writers) > 3 and all(n.startswith("stage-write") for n in writers), writers
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path / "bad.parquet", fail_at=3)
    assert not (tmp_path / "bad.parquet").exists() and len(writers) == 3


def test_source_rows_of_a_streamed_load_are_found_for_refused_rows_and_forgotten_when_final():
    """``SourceRows``: a batch's rows are one entry, a row mapped alone is its own; a failed outcome finds its
    source row either way, a final outcome forgets everything up to its row."""
    from cdp_ingest.arrow import pa
    from cdp_ingest.pipeline import SourceRows, _BatchRows
    from cdp_ingest.store import Outcome

    src = SourceRows()
    src.add_batch(10, _BatchRows(pa.record_batch({"a": ["x10", "x11", "x12"]})))
    src.add_row(13, {"a": "alone"})
    src.add_batch(14, _BatchRows(pa.record_batch({"a": ["x14", "x15"]})))
    assert src.done(Outcome(11, "failed", "no")).as_dict() == {"a": "x11"}
    assert src.done(Outcome(13, "failed", "no")) == {"a": "alone"}
    assert src.done(Outcome(12, "loaded")) is None  # (not looked up)
    assert src.done(Outcome(12, "loaded", count=2, final=True)) is None
    assert src.done(Outcome(10, "failed", "no")) is None  # forgotten
    assert src.done(Outcome(15, "failed", "no")).as_dict() == {"a": "x15"}
    src.add_row(16, {"a": "late"})
    src.done(Outcome(16, "loaded", count=0, final=True))
    assert (len(src._batches), len(src._rows)) == (0, 0)


@pytest.mark.parametrize("drop", [[], [0], [3, 4, 9], [63], list(range(0, 64, 2))])
def test_item_batch_filter_and_concat_keep_bodies_as_slices_and_the_bulk_body_is_the_rows(drop):
    """``ItemBatch.filter`` with a few rows left out keeps the bodies as the slices between them (one chunked
    array; more left out: ``pc.filter``), ``concat`` chains the parts' bodies; either way the rows, and the
    create chunk's bulk body (``_payload_columns`` / ``_claim_columns``, sent as the chunks' blocks), are
    byte for byte those of the rows given one by one."""
    import numpy as np
    import orjson

    from cdp_ingest.fastmap import json_strings
    from cdp_ingest.store import BulkItem, ItemBatch, Store, _arrow_blocks

    rows = [BulkItem(f"u-event-2025-1{i % 2}", f"e{i}", orjson.dumps({"n": i, "pad": "x" * i}), i + 1)
            for i in range(64)]
    keep = np.ones(64, dtype=bool)
    keep[drop] = False
    got = ItemBatch.of(rows).filter(keep)
    want = [it for it, k in zip(rows, keep, strict=True) if k]
    assert [(it.index, it.id, it.source, it.ref) for it in got.items()] == [
        (it.index, it.id, it.source, it.ref) for it in want]
    runs = int(np.count_nonzero(np.diff(np.concatenate(([0], keep.astype(int)))) == 1))  # runs of kept rows
    if len(drop) <= 4:
        assert got.bodies.num_chunks == runs
    else:  # many left out: pc.filter, one plain array
        assert not hasattr(got.bodies, "num_chunks")
    both = ItemBatch.concat([got, ItemBatch.of(rows[:3]).slice(1, 2)])
    want += rows[1:3]
    assert [it.source for it in both.items()] == [it.source for it in want]
    store = Store(None, prefix="u-")
    id_json = json_strings(both.ids)[0].cast("binary")
    blocks = store._payload_columns(both, id_json)
    assert b"".join(blocks) == b"".join(Store._payload(want)) and blocks.size == len(b"".join(blocks))
    assert len(blocks) == (both.bodies.num_chunks if want else 0)
    claims = b"".join(store._claim_columns(both, id_json, "imp")).splitlines()
    assert [orjson.loads(h)["create"]["_id"] for h in claims[::2]] == [it.id for it in want]
    assert [orjson.loads(b)["r"] for b in claims[1::2]] == [it.ref for it in want]
    assert b"".join(_arrow_blocks(ItemBatch.of(rows).bodies)) == b"".join(it.source for it in rows)


@pytest.mark.parametrize("docs,size", [(5, 1024), (1000, 1024), (7, 1 << 20)])
def test_item_batches_are_cut_into_the_chunks_rows_would_be(docs, size):
    """``Store._chunks`` cuts ``ItemBatch``es where it cuts the same rows given one by one (by count and
    by bytes), keeps the rows' order with a row mapped alone among them, and takes a batch holding a
    document over the limit, or an id that needs a control escape, row by row (that row refused)."""
    from cdp_ingest.store import BulkItem, ItemBatch, Store

    store = Store(None, prefix="u-", chunk_docs=docs, chunk_bytes=size, max_document_bytes=1024)
    rows = [BulkItem("u-event-2025-11", f"e{i}", b'{"x":"%s"}' % (b"y" * (i * 37 % 300)), i) for i in range(1, 61)]
    rows[40] = BulkItem("u-event-2025-11", "big", b"z" * 2000, 41)
    rows[50] = BulkItem("u-event-2025-11", "ctl\x01", b"{}", 51)

    def refs(chunks, too_big):
        return [[it.ref for it in c] if isinstance(c, list) else c.refs.to_pylist() for c in chunks], \
            [o.ref for o in too_big]

    one_by_one: list = []
    expected = refs(list(Store._chunks(store, rows, one_by_one)), one_by_one)
    fed = [False]
    mixed = [ItemBatch.of(rows[:17]), rows[17], ItemBatch.of(rows[18:45]), ItemBatch.of(rows[45:])]
    too_big: list = []
    chunks = list(store._chunks(mixed, too_big, fed=fed))
    assert refs(chunks, too_big) == expected and fed == [True]
    assert expected[1] == [41]
    assert isinstance(chunks[0], ItemBatch)  # the first batch went the columnar way
    assert any(isinstance(c, list) for c in chunks)  # the batch with "big" and "ctl\x01" row by row


def test_terse_answers_pause_longer_after_each_chunk_with_errors_and_come_back_after_a_clean_one():
    from cdp_ingest.store import _Terse

    t = _Terse()
    assert [t.ask() for _ in range(3)] == [True] * 3
    t.missed()  # 1 chunk with statuses, then terse
    assert [t.ask() for _ in range(2)] == [False, True]
    t.missed()  # 2
    assert [t.ask() for _ in range(3)] == [False, False, True]
    t.missed()  # 4
    assert [t.ask() for _ in range(5)] == [False] * 4 + [True]
    t.clean()  # a terse chunk written whole: the next miss pauses 1 chunk again
    t.missed()
    assert [t.ask() for _ in range(2)] == [False, True]
    for _ in range(10):
        t.missed()
    assert [t.ask() for _ in range(_Terse.MAX + 1)] == [False] * _Terse.MAX + [True]  # at most MAX chunks
