"""The columnar event mapping (cdp_ingest.fastmap) against the row-by-row Mapper.map_row.

Both paths run over the same CSV through ``pipeline.RowMapper.items``; every accepted row must come
out with the same index, id and body bytes, and the counts and the error CSV must be the same."""

from __future__ import annotations

import csv
import dataclasses
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from times_kit import EDGES, epoch_ms_cell, time_cell

from cdp_ingest import sample
from cdp_ingest.documents import deterministic_id
from cdp_ingest.fastmap import EventBatchMapper, profile_ids_for, strftime_regex
from cdp_ingest.mapping import Mapper, Mapping, profile_id_for
from cdp_ingest.pipeline import RowMapper
from cdp_ingest.readers import read_batches

NOW = datetime(2026, 11, 23, 5, 6, 7, 123456, tzinfo=UTC)
DEMO = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings" / "demo-events.yaml"
HEADER = ["insert_id", "ts", "event", "email", "session_id", "page", "product_id", "price", "quantity", "referrer"]


def run(mapping: Mapping, path: Path, tmp: Path, *, fast: bool, batch_rows: int) -> tuple:
    mapper = Mapper(mapping, unit_key="u1", now=NOW)
    # a lambda is not Mapper.map_row itself, so the pipeline takes the row-by-row path
    row_fn = mapper.map_row if fast else (lambda row, ref: mapper.map_row(row, ref))
    rm = RowMapper(row_fn, tmp / f"errors-{fast}.csv", max_cell_bytes=200)
    items = [(ref, kind, index, doc_id, body) for ref, kind, index, doc_id, body, _ in
             rm.items(read_batches(str(path), batch_rows=batch_rows), "p-", "imp-1")]
    error_file = rm.close()
    errors = Path(error_file).read_text(encoding="utf-8") if error_file else None
    return items, (rm.rows_in, rm.accepted, rm.rejected, sorted(rm.kinds)), errors


def same(mapping: Mapping, path: Path, tmp: Path, batch_rows: int = 7) -> tuple:
    fast = run(mapping, path, tmp, fast=True, batch_rows=batch_rows)
    slow = run(mapping, path, tmp, fast=False, batch_rows=batch_rows)
    assert fast[1] == slow[1]
    assert fast[2] == slow[2]
    assert len(fast[0]) == len(slow[0])
    for a, b in zip(fast[0], slow[0], strict=True):
        assert a == b
    return fast


def write(path: Path, header: list[str], rows: list[list[str]], raw_tail: str = "") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
        fh.write(raw_tail)
    return path


def test_profile_ids_made_together_are_the_ids_made_one_by_one():
    """``profile_ids_for`` (one SHA-1 each, the UUID text made with NumPy for all) gives ``profile_id_for``'s
    ids, for ASCII, Unicode and long identities; a mapper's cache gives the same past its size."""
    rnd = random.Random(3)
    alphabet = "abcXYZ019@.+- \t\u00e9\u00fc\u4e2d\U0001f600\u2028\"\\"
    values = ["a", "Ada@Example.com", "+4930123456", "x" * 1000] + [
        "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 40))) for _ in range(3000)]
    assert profile_ids_for(values) == [profile_id_for.__wrapped__(v) for v in values]
    assert profile_ids_for([]) == []
    fast = EventBatchMapper.compile(Mapper(Mapping.from_dict(
        {"kind": "event", "id_column": "id", "identity": ["email"], "time": {"column": "ts", "format": "epoch"},
         "event_type": {"value": "visit"}}), unit_key="u", now=NOW))
    fast.cache_size = 1000
    for start in range(0, len(values), 700):  # batches that overflow the cache, with repeats and empties
        part = values[start:start + 700] + values[:50] + ["", ""]
        assert fast._profile_ids_of(part) == [profile_id_for.__wrapped__(v) if v else "" for v in part]
        assert len(fast._profile_ids) <= 1000


def test_edge_cases_match_the_row_path(tmp_path):
    rows = [
        ["e-1", "1761955200", "page-view", "a@x.com", "s-1", "/p/1", "sku-1", "12.50", "3", "google"],
        ["e-2", "1761955200", " page-view ", "", "", "", "", "", "", ""],
        ["e-3", "$D_1761955200", "add_to-cart", "b@x.com", "s-2", '/p/"q"\\', "sku", " 1.5", "+3", "dir\x01ect"],
        [" e-4", "1761955200.5", "search", "c@x.com", "s-3", "zażółć", "1e3", "1e3", "007", "x"],
        ["e-5", "99999999999", "search", "c@x.com", "s-3", "a", "b", "-0", "-0", "x"],
        ["e-6", "1761955200", "", "c@x.com", "s-3", "a", "b", "1", "2147483648", "x"],
        ["é-7", "1761955200", "purchase", "c" * 300, 's"3', "$D_5", "b", "0.1", "2147483647", "multi\nline"],
        ["", "1761955200", "purchase", "d@x.com", "s-3", "a", "b", "inf", "1", "x"],
        ["e-9", "", "purchase", "d@x.com", "s-3", "a", "b", "nan", "1.0", "x"],
        ["e-10", " 1761955200", "purchase", "d@x.com", "s-3", "a", "b", "123456789012345.123456789", "-2147483648",
         "\u2028"],
        ["e-11", "0", "purchase", "ä@x.com", "s-3", "a", "b", "1", "1", "x"],
        ["e-12", "32503680000", "purchase", "d@x.com", "s-3", "a", "b", "1", "1", "x"],
        ["e-13", "32503680001", "purchase", "d@x.com", "s-3", "a", "b", "1", "1", "x"],
        ["e-13", "1764547200", "purchase", "x" * 1030, "s-3", "a", "b", "1", "1", ""],
    ]
    path = write(tmp_path / "ev.csv", HEADER, rows, "e-14,1764547200,search,z@x.com,s-1,a,b,1,1,too,many\n")
    items, counts, errors = same(Mapping.load(DEMO), path, tmp_path)
    assert counts == (15, 7, 8, ["event"])
    assert "column 'ts': epoch seconds out of range" in errors and "expected 10 fields, found 11" in errors
    first = items[0][4]
    assert first.startswith(b'{"id":"e-1","name":"Page view","type":"page-view","metadata":{"aux":{"cdp":'
                            b'{"import_id":"imp-1","row":1}}')
    assert b'"properties":{"page":"/p/1","product":{"id":"sku-1","price":12.5,"quantity":3},"referrer":"google"}' \
        in first
    assert items[0][2] == "p-event-2025-11"


def test_item_batches_cut_runs_only_where_a_row_went_alone(tmp_path):
    """``RowMapper.item_batches`` (the streamed load's feed): the same rows, documents and counts as ``items``,
    in file order; a row the columnar mapping left and ``map_row`` accepted cuts the run there, a rejected
    one is only left out of it (one filtered run, not a cut per bad row)."""
    from cdp_ingest.pipeline import SourceRows
    from cdp_ingest.store import BulkItem, ItemBatch

    path = tmp_path / "ev.csv"
    exp = sample.write_events(path, 3000, profiles=300, sessions=600)
    assert exp.bad > 1
    with open(path, "a", encoding="utf-8") as fh:  # ids with a space around: map_row strips them (row path)
        fh.write(" e-alone-1,1761955200,search,a@x.com,s-1,/p,sku,1,1,x\n")
        fh.write("e-after-1,1761955200,search,a@x.com,s-1,/p,sku,1,1,x\n")
        fh.write("e-bad,,search,a@x.com,s-1,/p,sku,1,1,x\n")
        fh.write("e-after-2,1761955200,search,a@x.com,s-1,/p,sku,1,1,x\n")
    mapper = Mapper(Mapping.load(DEMO), unit_key="u1", now=NOW)

    def feed(kind: str) -> tuple[list, tuple]:
        rm = RowMapper(mapper.map_row, tmp_path / f"errors-{kind}.csv", max_cell_bytes=200)
        batches = read_batches(str(path), batch_rows=5000)
        got = (list(rm.item_batches(batches, "p-", "imp-1", SourceRows())) if kind == "batches"
               else list(rm.items(batches, "p-", "imp-1")))
        rm.close()
        return got, (rm.rows_in, rm.accepted, rm.rejected)

    fed, counts = feed("batches")
    rows, row_counts = feed("items")
    assert counts == row_counts == (exp.rows + 4, exp.rows - exp.bad + 3, exp.bad + 1)
    flat = [(it.ref, it.index, it.id, it.source) for part in fed
            for it in (part.items() if isinstance(part, ItemBatch) else [part])]
    assert flat == [(ref, index, doc_id, body) for ref, _kind, index, doc_id, body, _ in rows]
    assert [type(part) for part in fed] == [ItemBatch, BulkItem, ItemBatch] and fed[1].id == "e-alone-1"
    runs = [fed[0], fed[2]]
    refs = runs[0].refs.to_pylist()
    assert len(refs) == refs[-1] - refs[0] + 1 - exp.bad  # the rejected rows left out, the run not cut at them
    assert runs[1].ids.to_pylist() == ["e-after-1", "e-after-2"]


def test_a_bag_without_absent_keys_is_joined_into_the_document_in_one_piece_list():
    """A free-form bag whose keys are in every row becomes constant text and value arrays spliced into the
    document's own join (``_bag_pieces``); with a key absent in some row (null) it is joined on its own."""
    import pyarrow as pa

    from cdp_ingest.fastmap import _bag_json, _bag_pieces, _Template

    page, price = pa.array(['"/a"', '"/b"']), pa.array(["1.5", "2"])
    values = [("page", page), ("product", [("price", price), ("currency", '"EUR"')])]
    pieces = _bag_pieces(values)
    assert pieces is not None and [p for p in pieces if not isinstance(p, str)] == [page, price]
    tpl = _Template()
    doc = {"id": "x", "properties": tpl.slot(["{", *pieces, "}"])}
    assert tpl.pieces(doc) == ['{"id":"x","properties":{"page":', page, ',"product":{"price":', price,
                               ',"currency":"EUR"}}}']  # (adjacent texts merged: one join argument each)
    expect = [{"id": "x", "properties": {"page": p, "product": {"price": v, "currency": "EUR"}}}
              for p, v in (("/a", 1.5), ("/b", 2))]
    assert [orjson.loads(b) for b in tpl.bodies(doc).to_pylist()] == expect
    holed = [("page", pa.array(['"/a"', None])), ("product", [("price", price)])]
    assert _bag_pieces(holed) is None
    assert _bag_json(holed).to_pylist() == ['"page":"/a","product":{"price":1.5}', '"product":{"price":2}']


@pytest.mark.parametrize("regex,lo,hi,max_len", [("_ID_RE", 0x21, 0x7E, 512), ("_INT_RE", 0x30, 0x39, 18),
                                                  ("_EPOCH_RE", 0x30, 0x39, 11)])
def test_regex_checks_answered_by_numpy_are_the_regex_answers(regex, lo, hi, max_len):
    """``_matches``: the NumPy answer (all values in the byte range, none too long) is the regex's, and any
    other batch (a space, a sign, a letter, too long, Unicode, a null) gets the regex's own answer."""
    import pyarrow as pa
    import pyarrow.compute as pc

    import cdp_ingest.fastmap as fm

    rnd = random.Random(7)
    pattern = getattr(fm, regex)
    inside = "".join(map(chr, range(lo, hi + 1)))
    clean = [["".join(rnd.choice(inside) for _ in range(rnd.randint(0, max_len))) for _ in range(300)],
             ["", "1"], ["7" * max_len], ["7" * max_len, ""]]
    odd = [["1", "7" * (max_len + 1)], ["12", " 12"], ["-5", "5"], ["é1", "1"], ["1", None], ["a1", "1\n"], []]
    for values in clean + odd:
        arr = pa.array(values, pa.string())
        assert fm._matches(arr, pattern, lo, hi, max_len).to_pylist() == pc.match_substring_regex(
            arr, pattern).to_pylist(), values
        sliced = pa.array(["x y", *values, "x y"], pa.string()).slice(1, len(values))
        assert fm._matches(sliced, pattern, lo, hi, max_len).to_pylist() == pc.match_substring_regex(
            sliced, pattern).to_pylist()


def test_generated_file_matches_and_mostly_takes_the_columnar_path(tmp_path, monkeypatch):
    path = tmp_path / "events.csv"
    exp = sample.write_events(path, 6000, profiles=600, sessions=1200)
    _, counts, errors = same(Mapping.load(DEMO), path, tmp_path, batch_rows=1000)
    assert counts[:3] == (exp.rows, exp.rows - exp.bad, exp.bad)
    assert errors.count("\n") == exp.bad + 1
    calls = []
    real = Mapper.map_row
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: calls.append(ref) or real(self, row, ref))
    run(Mapping.load(DEMO), path, tmp_path, fast=True, batch_rows=1000)
    assert len(calls) == exp.bad  # only the rows it rejects go through map_row (for their messages)


def test_reader_batches_larger_than_a_slice_keep_row_numbers_and_read_errors(tmp_path, monkeypatch):
    """The columnar path maps reader batches in slices of pipeline.FAST_ROWS rows: row numbers, the
    reader's bad rows (here: wrong field counts) and rejects in later slices stay where they belong."""
    import cdp_ingest.pipeline as pipeline

    monkeypatch.setattr(pipeline, "FAST_ROWS", 64)
    path = tmp_path / "events.csv"
    exp = sample.write_events(path, 1000, profiles=100, sessions=200)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[701:701] = ["e-x1,1764547200,search,z@x.com,s-1,a,b,1,1,too,many\n",  # rows 701 and 703 (second
                      "e-x2,1764547200,search,z@x.com,s-1,a,b,1,1,ok\n",  # reader batch, fourth slice) have
                      "e-x3,1764547200,search,z@x.com,s-1,a,b,1,1,too,many\n"]  # a field too many
    path.write_text("".join(lines), encoding="utf-8")
    items, counts, errors = same(Mapping.load(DEMO), path, tmp_path, batch_rows=500)
    assert counts[:3] == (exp.rows + 3, exp.rows - exp.bad + 1, exp.bad + 2)
    assert [ref for ref, _kind, _index, doc_id, _body in items if doc_id == "e-x2"] == [702]
    assert errors.count("expected 10 fields, found 11") == 2


def test_another_mapping_defaults_nested_targets_and_types(tmp_path):
    mapping = Mapping.from_dict({
        "kind": "event", "source_id": "s2", "identity": ["email", "phone"], "time": {"column": "ts"},
        "event_type": {"value": "Login-ok"}, "session_column": "session_id", "unmapped": "traits",
        "fields": {"page": {"target": "context.page.url", "required": True},
                   "product_id": {"target": "context.page.ref", "default": "none"},
                   "price": {"target": "data.money.price", "type": "FLOAT", "default": 0},
                   "quantity": {"target": "data.money.qty", "type": "LONG"},
                   "referrer": {"target": "traits.ok", "type": "BOOLEAN"}},
        "defaults": {"hit.x": 5, "hit.y": "const"}}, name="m2")
    rnd = random.Random(3)
    rows = [[f"x{i}", str(1761955200 + i * 99991), "e", rnd.choice(["", "a@b.c", "ä@b.c"]),
             rnd.choice(["", "+49301234567"]), rnd.choice(["", "s1"]), rnd.choice(["", "pg", 'p"g']),
             rnd.choice(["", "sku"]), rnd.choice(["", "1.25", "x", "3"]), rnd.choice(["", "12", "9" * 20, "-5"]),
             rnd.choice(["", "Y", "yes", "no", "maybe", " TRUE "]), rnd.choice(["", "v", "$D_1"])]
            for i in range(400)]
    header = ["insert_id", "ts", "event", "email", "phone", "session_id", "page", "product_id", "price", "quantity",
              "referrer", "Odd Col!"]
    items, counts, _ = same(mapping, write(tmp_path / "m2.csv", header, rows), tmp_path, batch_rows=64)
    assert counts[1] > 50 and counts[2] > 50  # both accepted and rejected rows were compared
    assert any(b'"hit":{"x":5,"y":"const"}' in body and b'"odd_col":' in body for *_, body in items)


def test_object_and_list_defaults_are_mapped_columnar(tmp_path):
    """Object and list defaults (``defaults: {context.tags: [a, {b: null}], data.o: {k: [1, 2.5]}}``) kept a
    mapping row by row; they are constants, written as ``map_row`` writes them."""
    raw = {"kind": "event", "id_column": "insert_id", "time": {"column": "ts"}, "event_type": {"column": "event"},
           "fields": {"page": "properties.page"},
           "defaults": {"context.tags": ["a", {"b": None}], "data.o": {"k": [1, 2.5], "e": {}}, "hit.l": []}}
    mapping = Mapping.from_dict(raw)
    assert EventBatchMapper.compile(Mapper(mapping, unit_key="u", now=NOW)) is not None
    path = write(tmp_path / "o.csv", HEADER, [["e-1", "1761955200", "search", "", "", "/p", "", "", "", ""],
                                              ["e-2", "x", "search", "", "", "/q", "", "", "", ""]])
    items, counts, _ = same(mapping, path, tmp_path)
    assert counts[1:3] == (1, 1)
    assert b'"context":{"tags":["a",{"b":null}]}' in items[0][4] and b'"data":{"o":{"k":[1,2.5],"e":{}}}' in items[0][4]
    assert b'"hit":{"l":[]}' in items[0][4]


def test_a_null_default_is_written_as_null(tmp_path):
    """``defaults: {config.b.a: null}``: map_row sets the key to null; the columnar mapping left it out (found by
    tests/test_fastmap_fuzz.py)."""
    raw = {"kind": "event", "id_column": "insert_id", "time": {"column": "ts"}, "event_type": {"column": "event"},
           "fields": {"page": "properties.page"}, "defaults": {"config.b.a": None, "hit.n": 2}}
    path = write(tmp_path / "n.csv", HEADER, [["e-1", "1761955200", "search", "", "", "/p", "", "", "", ""]])
    items, counts, _ = same(Mapping.from_dict(raw), path, tmp_path)
    assert counts[1] == 1 and b'"config":{"b":{"a":null}}' in items[0][4] and b'"hit":{"n":2}' in items[0][4]


@pytest.mark.parametrize("change", [{"derived": {"traits.x": "{email!r}"}}, {"derived": {"traits.x": "{email:>9}"}},
                                    {"time": {"column": "ts", "format": "%d %b %Y %H:%M %Z"}},
                                    {"time": {"column": "ts", "format": "%Y-%m-%d %H:%M:%S%z%H"}},
                                    {"fields": {"page": "tags.values"}},
                                    {"fields": {"page": "metadata.time.x"}},
                                    {"fields": {"page": "metadata.profile_less"}}])
def test_mappings_it_cannot_reproduce_stay_on_the_row_path(change):
    raw = {"kind": "event", "id_column": "insert_id", "identity": ["email"], "time": {"column": "ts"},
           "event_type": {"column": "event"}, "fields": {"page": "properties.page"}, **change}
    fast = EventBatchMapper.compile(Mapper(Mapping.from_dict(raw), unit_key="u", now=NOW))
    if "fields" in change and "page" in change["fields"]:  # compiles, but the plan refuses the target
        assert fast is not None and fast._plan(tuple(HEADER)) is None
    else:
        assert fast is None


def test_profile_ids_are_uuid5_of_the_identity():
    """profile_id_for (and fastmap's cache of it) make the UUID from the digest: the same as uuid5."""
    fast = EventBatchMapper(Mapper(Mapping.load(DEMO), unit_key="u", now=NOW))
    rnd = random.Random(5)
    values = ["".join(rnd.choice('abcé@.x\x1f"+ 1') for _ in range(rnd.randint(1, 24))) for _ in range(2000)]
    assert fast._profile_ids_of(values) == [profile_id_for(v) for v in values] == [
        deterministic_id("identity", v) for v in values]


def test_staged_file_is_the_same_both_ways(tmp_path, monkeypatch):
    """transform_unit (the DAG's staged file): the same rows, bodies and original-row JSON either way, in
    file order — the columnar path writes its rows from Arrow columns, the rows it leaves (and rejected
    ones) go through map_row in between, and a source row whose JSON Arrow does not make (a control
    character in a column the mapping does not use) is made by orjson."""
    import pyarrow.parquet as pq

    from cdp_ingest.pipeline import transform_unit

    header = [*HEADER, "note"]
    rows = [[f"e-{i}", str(1761955200 + i * 86400), "page-view", f"c{i % 3}@x.com", "s",
             f"/p/{i}\x07" if i % 5 == 1 else f"/p/{i}", "sku", "1.5", "2", 'say "hi"\\',
             "tab\there" if i % 4 == 0 else f"n{i}"] for i in range(50)]
    rows[7][1] = "not a time"  # rejected
    rows[9][0] = rows[3][0]  # a repeated id is staged twice (the load decides)
    path = write(tmp_path / "ev.csv", header, rows)
    columnar: list[int] = []
    real = EventBatchMapper.map_batch
    monkeypatch.setattr(EventBatchMapper, "map_batch",
                        lambda self, *a, **kw: (fb := real(self, *a, **kw)) and columnar.append(sum(fb.ok)) or fb)
    tables, errors = [], []
    mapping = dataclasses.replace(Mapping.load(DEMO), unmapped="ignore")  # "note" is in the source row only
    for fast in (True, False):
        mapper = Mapper(mapping, unit_key="u1", now=NOW)
        row_fn = mapper.map_row if fast else (lambda row, ref, mapper=mapper: mapper.map_row(row, ref))
        t = transform_unit(read_batches(str(path), batch_rows=16), row_fn, prefix="p-", import_id="imp",
                           staged_path=tmp_path / f"staged-{fast}.parquet", error_path=tmp_path / f"err-{fast}.csv",
                           flush_rows=20)
        assert (t.rows_in, t.accepted, t.rejected, t.kinds) == (50, 49, 1, ["event"])
        tables.append(pq.read_table(t.staged).to_pydict())
        errors.append(Path(t.error_file).read_text(encoding="utf-8"))
        assert max(pq.ParquetFile(t.staged).metadata.row_group(g).num_rows
                   for g in range(pq.ParquetFile(t.staged).num_row_groups)) <= 20
    assert sum(columnar) == 39  # the columnar path took all but the 10 control-character rows and row 8
    assert tables[0] == tables[1]
    assert errors[0] == errors[1] and "not a time" in errors[0]
    assert tables[0]["ref"] == [r for r in range(1, 51) if r != 8]
    assert tables[0]["orig"][1] == orjson.dumps(dict(zip(header, rows[1], strict=True)))  # through map_row
    assert tables[0]["orig"][0] == orjson.dumps(dict(zip(header, rows[0], strict=True)))  # orjson for Arrow


@pytest.mark.parametrize("values", [
    ["plain", None, "", "ümlaut", "x" * 300],
    ["quote\"d", "back\\slash", None, "ok"],
    ["ok", "tab\there", "nl\nx", None, 'both"\\\x01'],
])
def test_json_strings_match_orjson_on_slices(values):
    """The byte scan decides which kernels run: on every slice (the bytes outside a slice must not
    count) the literals are orjson's and exactly the values with a control character are not clean."""
    import pyarrow as pa

    from cdp_ingest.fastmap import json_strings

    arr = pa.array(["\x02pad\"\\"] + values + ["\x03pad"], pa.string())  # the padding has all three kinds
    for start in range(len(values) + 1):
        for stop in range(start, len(values) + 1):
            part = arr.slice(1 + start, stop - start)
            lit, clean = json_strings(part)
            want = values[start:stop]
            ok = [v is not None and not any(ord(ch) < 0x20 for ch in v) for v in want]
            assert [bool(c) for c in clean.to_pylist()] == ok
            assert [x if good else None for x, good in zip(lit.to_pylist(), ok, strict=True)] == [
                orjson.dumps(v).decode() if good else None for v, good in zip(want, ok, strict=True)]


CHECKED = {  # ISO event times, a DATETIME field, e-mail/phone checks, normalised identities, derived fields
    "kind": "event", "id_column": "insert_id", "identity": ["email", "phone"],
    "identity_normalize": {"email": ["trim", "lower"], "phone": ["e164"]},
    "time": {"column": "ts", "format": "iso"}, "event_type": {"column": "event"}, "session_column": "session_id",
    "fields": {"email": {"target": "traits.email", "validate": "email"},
               "seen": {"target": "properties.seen", "type": "DATETIME"},
               "phone": {"target": "traits.phone", "validate": "phone", "default": "n/a"},  # (bags interleaved)
               "due": {"target": "properties.due", "type": "DATETIME", "default": "never"},
               "code": {"target": "properties.code", "validate": "phone"},
               "n": {"target": "properties.n", "type": "INTEGER"}},
    "derived": {"properties.label": "{event}: {page}", "context.const": " fixed "},
    "unmapped": "properties", "defaults": {"hit.x": 1},
}
CHECKED_HEADER = ["insert_id", "ts", "event", "email", "phone", "session_id", "seen", "due", "code", "n", "page"]


def _checked_rows(rnd: random.Random, count: int) -> list[list[str]]:
    def pick(clean: list[str], messy: list[str]) -> str:
        return rnd.choice(clean if rnd.random() < 0.9 else messy)
    return [[f"e-{i}", time_cell(rnd, 0.75), rnd.choice(["search", "page-view", " buy "]),
             pick(["", "Ada@Example.com", " ada@example.com", "b@x.org"], ["not an email", "\u00e9@x.org", " "]),
             pick(["", "+49 30 1234567", "+48221234567"], ["12", "0049301234567", "+4930123456\n"]),
             rnd.choice(["", "s-1"]), time_cell(rnd, 0.75), rnd.choice(["", time_cell(rnd, 0.75)]),
             pick(["", "+4930123456"], ["5", "\u0663"]), pick(["", "7"], ["x", "1e3"]), rnd.choice(["", "/p", 'q"']),
             ] for i in range(count)] + [[f"edge-{i}", a, "search", "", "", "", b, "", "", "", ""]
                                         for i, (a, b) in enumerate(zip(EDGES, EDGES[::-1], strict=True))]


def test_iso_times_datetimes_checks_normalised_identities_and_derived_fields_match_the_row_path(tmp_path,
                                                                                              monkeypatch):
    """An event mapping with ISO times, DATETIME fields, e-mail/phone checks, identity normalisation and
    derived fields takes the columnar path: 3,000 rows of random time cells (forms Arrow and
    ``datetime.fromisoformat`` read alike and forms they do not, in and out of range) give the same documents,
    counts and error file both ways."""
    rnd = random.Random(5)
    path = write(tmp_path / "checked.csv", CHECKED_HEADER, _checked_rows(rnd, 3000))
    mapping = Mapping.from_dict(CHECKED, name="checked")
    assert EventBatchMapper.compile(Mapper(mapping, unit_key="u", now=NOW)) is not None
    items, counts, errors = same(mapping, path, tmp_path, batch_rows=256)
    assert counts[1] > 600 and counts[2] > 900  # both accepted and rejected rows were compared
    calls: list[int] = []
    real = Mapper.map_row
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: calls.append(ref) or real(self, row, ref))
    run(mapping, path, tmp_path, fast=True, batch_rows=256)
    columnar = counts[0] - len(calls)  # every rejected row goes through map_row (for its message)
    assert columnar > 300 and counts[1] - columnar > 100  # accepted both ways: odd forms only Python reads
    assert "(time) out of range" in errors and "not a valid email address" in errors and "not a valid phone" in errors
    assert any(b'"seen":"2025-11-01T09:00:00+00:00"' in body or b'"seen":"2025-11-01T10:00:00+00:00"' in body
               for *_, body in items)
    assert any(index == "p-event-2025-10" for _r, _k, index, _i, _b in items)  # a zone that moves the month


def _time_column_both_ways(tmp_path: Path, monkeypatch, cells: list[str], fmt: str) -> tuple:
    """Events of the CHECKED mapping with ``time.format`` ``fmt`` and these time cells, mapped both ways
    (the same documents, counts and error file); also the time cells the columnar path left to map_row.
    Returns (rows, items, counts, errors, cells left to map_row)."""
    rows = [[f"e-{i}", cell, "search", "", "", "", "", "", "", "", ""] for i, cell in enumerate(cells)]
    path = write(tmp_path / "t.csv", CHECKED_HEADER, rows)
    mapping = Mapping.from_dict({**CHECKED, "time": {"column": "ts", "format": fmt}}, name="t")
    items, counts, errors = same(mapping, path, tmp_path, batch_rows=512)
    calls: list[str] = []
    real = Mapper.map_row
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: calls.append(row["ts"]) or real(self, row, ref))
    run(mapping, path, tmp_path, fast=True, batch_rows=512)
    return rows, items, counts, errors, calls


def test_epoch_milliseconds_match_the_row_path(tmp_path, monkeypatch):
    """``time.format: epoch_ms``: whole milliseconds before 2**33 s are mapped columnar (``map_row``'s float
    division is exact to the microsecond there); later ones (where it is not: 32503679999999 gives .999001),
    fractions and other text go to map_row. 3,000 random cells, the same documents both ways."""
    rnd = random.Random(17)
    rows, items, counts, errors, calls = _time_column_both_ways(
        tmp_path, monkeypatch, [epoch_ms_cell(rnd) for _ in range(3000)], "epoch_ms")
    assert counts[1] > 2000 and "not a datetime in format epoch_ms" in errors
    assert 1500 < counts[0] - len(calls) and "32503679999999" in calls
    assert all(not c.isdigit() or len(c) > 13 or int(c) >= 2**33 * 1000 for c in calls)
    bodies = {doc_id: orjson.loads(body) for _r, _k, _i, doc_id, body in items}
    late = next(r[0] for r in rows if r[1] == "32503679999999")
    assert bodies[late]["metadata"]["time"]["create"] == "2999-12-31T23:59:59.999001"  # map_row's, kept


def _strftime_cell(rnd: random.Random, fmt: str) -> str:
    """A cell for a strftime pattern: mostly a time in range written by the pattern, or one unpadded, spaced,
    in another case, past its month's end, out of 1970..3000, an hour 24 or a second 60, or other text."""
    when = datetime(1970, 1, 1, tzinfo=UTC) + (datetime(3000, 1, 2, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) \
        * rnd.random()
    if rnd.random() < 0.02:
        when = datetime(rnd.choice([1969, 3000]), rnd.choice([1, 12]), rnd.choice([1, 31]), 23, 59, 59,
                        rnd.choice([0, 999999]), tzinfo=UTC)
    if "%z" in fmt and rnd.random() < 0.8:  # any offset (and below: Z, with a colon, with seconds)
        when = when.astimezone(timezone(timedelta(minutes=rnd.randrange(-1439, 1440))))
    text = when.strftime(fmt)
    if "%z" in fmt:
        zone = when.strftime("%z")
        text = text.replace(zone, rnd.choices([zone, zone[:3] + ":" + zone[3:], "Z" if zone == "+0000" else zone,
                                               zone + "15", zone[:3] + ":" + zone[3:] + ":15", "+2400"],
                                              [14, 3, 1, 1, 1, 1])[0], 1)
    if re.search("%[aAbB]", fmt) and rnd.random() < 0.3:  # names in any case
        text = rnd.choice([text.upper(), text.title(), text.swapcase()])
    shape = rnd.random()
    if shape < 0.5:
        return text
    if shape < 0.65:  # fields of one digit where the pattern allows it: 1/2/2025 3:04
        return re.sub(r"(?<![0-9])0(?=[0-9](?:[^0-9]|$))", "", text)
    if shape < 0.85:  # what strptime reads but the pattern's padded form is not
        return rnd.choice([text.replace("0", "", 1), text.replace(" ", "  ", 1), text.lower(), f" {text}",
                           f"{text} ", text.replace("T", " ", 1), text.replace(".", ".0", 1),
                           text.replace("Z", "z"), text + "0"])
    return rnd.choice(["", "x", "$D_1761955200", "1761955200", "2025-02-29 10:00:00", "2025-04-31T10:00:00.5Z",
                       "31/04/2025 10:00", "29/02/2024 23:59", "20250229235959", "20251231240000",
                       "20251231235960", "01/01/1970 00:00", "01/01/3000 00:00", "01/01/3000 00:01",
                       "\u0661\u0669\u0667\u0660-01-01", "2025-11-01T10:00:00.1234567Z", "2025-11-01T10:00:00.Z"])


STRFTIME = ["%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M", "%Y%m%d%H%M%S", "%Y-%m-%dT%H:%M:%S.%fZ", "%d.%m.%Y",
            "%m/%d/%Y %H:%M", "%m/%d/%Y %I:%M %p", "%Y-%m-%d %I:%M:%S%p", "%d/%m/%Y %I:%M",
            "%d.%m.%y %H:%M", "%Y-%m-%dT%H:%M:%S%z", "%d/%b/%Y:%H:%M:%S %z", "%a, %d %b %Y %H:%M:%S %z",
            "%B %d, %Y", "%d-%b-%y %I:%M %p", "%A %d %B %Y"]


@pytest.mark.parametrize("fmt", STRFTIME)
def test_strftime_patterns_match_the_row_path(tmp_path, monkeypatch, fmt):
    """``time.format`` a strftime pattern of ``%Y %y %m %b %B %d %H %I %p %M %S %f %z %a %A`` and literal text: a
    cell in the pattern's zero-padded form, or with fields of one digit where text that is not a digit
    follows them, is mapped columnar (``%I``/``%p``: 12 AM is 0, PM adds 12, no ``%p`` is AM; ``%y``: 69..99
    are 19xx; names in any case; ``%z``: ``Z`` or ``±HH[:]MM``, as strptime reads them); what else
    ``strptime`` reads (runs of spaces, another case of literal text, one digit before a digit, an offset with
    seconds) and what it rejects go to map_row. 2,000 random cells per pattern, the same documents, counts
    and error file both ways."""
    rnd = random.Random(fmt)
    rows, items, counts, errors, calls = _time_column_both_ways(
        tmp_path, monkeypatch, [_strftime_cell(rnd, fmt) for _ in range(2000)], fmt)
    assert counts[1] > 1200 and f"not a datetime in format {fmt}" in errors
    assert counts[0] - len(calls) > 1100  # rows mapped columnar
    spaced = [r[1] for r in rows if r[1] != r[1].strip() or "  " in r[1]]
    assert spaced and set(spaced) <= set(calls)
    if "/" in fmt and "%b" not in fmt:  # one-digit fields mapped columnar: 1/2/2025 3:04
        short = {r[1] for r in rows if re.fullmatch(r"[1-9]/[1-9]/[0-9]{4} [0-9]:[0-9]{2}( [AaPp][Mm])?", r[1])}
        assert short and not short & set(calls)
    if fmt == "%Y-%m-%dT%H:%M:%S.%fZ":
        docs = [orjson.loads(body) for *_, body in items]
        assert any(d["metadata"]["time"]["create"].endswith(".500000") for d in docs) or \
            any(len(d["metadata"]["time"]["create"]) == 26 for d in docs)
    if "%z" in fmt:  # offsets with and without a colon, and Z, mapped columnar; with seconds, by map_row
        columnar = {r[1] for r in rows} - set(calls)
        assert any(re.search(r"[+-][0-9]{2}:[0-9]{2}$", c) for c in columnar)
        assert any(re.search(r"[+-][0-9]{4}$", c) and not c.endswith(("+0000", "-0000")) for c in columnar)
        assert any(re.search(r"[+-][0-9]{2}:?[0-9]{2}:?15$", c) for c in calls)
    if re.search("%[aAbB]", fmt):  # names in any case mapped columnar
        columnar = {r[1] for r in rows} - set(calls)
        for case in ("[A-Z]{3}", "[a-z]{3}", "[A-Z][a-z]{2}"):
            assert any(re.search(f"(^|[^A-Za-z]){case}", c) for c in columnar), case


@pytest.mark.parametrize("fmt", [" %Y-%m-%d", "%Y-%m-%d ", "$D_%Y%m%d", "%Y-%m", "%Y-%m-%d %H:%M:%S%Z",
                                 "%Y-%m-%d %H %I:%M %p", "%y-%Y-%m-%d", "%Y-%m-%d %b", "%Y-%j", "%d %b %Y %z%H",
                                 "%Y-%m-%d %a %a", "%G-%m-%d",
                                 "%Y-%m-%d %H:%M:%S.%f%H", "%Y-%m-%d %H:%M:%S.%f1", "%Y-%m-%d %H:%M.%f", "%Y-%m-%d %d",
                                 "%Y-%m-%d %%", "%Y-%m-%d %"])
def test_strftime_patterns_it_cannot_prove_stay_on_the_row_path(fmt):
    """Surrounding spaces (parse_time strips the cell, strptime would want a space), a leading ``$D_`` (an
    epoch for parse_time), other directives, a field missing or repeated, ``%f`` without ``%S`` or before a
    digit: the whole mapping goes row by row."""
    assert strftime_regex(fmt) is None
    raw = {**CHECKED, "time": {"column": "ts", "format": fmt}}
    assert EventBatchMapper.compile(Mapper(Mapping.from_dict(raw), unit_key="u", now=NOW)) is None


def test_fractional_epoch_seconds_match_the_row_path(tmp_path, monkeypatch):
    """``time.format: epoch`` with a fraction: up to 6 digits before 2**33 s (year 2242, where ``map_row``'s
    ``float()`` is within half a microsecond) are mapped columnar, longer fractions and later times go to
    map_row; 3,000 random cells, the same documents both ways."""
    rnd = random.Random(23)

    def cell() -> str:
        shape = rnd.random()
        if shape < 0.6:
            digits = rnd.randint(1, 6)
            return f"{rnd.randrange(0, 2**33)}.{rnd.randrange(0, 10**digits):0{digits}d}"
        if shape < 0.7:
            return f"{2**33 + rnd.randrange(-2, 2)}.{rnd.randrange(0, 10**6):06d}"
        if shape < 0.8:
            return f"{rnd.randrange(2**33, 32503680001)}.{rnd.randrange(0, 10**6):06d}"
        return rnd.choice(["1761955200.1234567", "1761955200.", ".5", "1761955200.5 ", "-0.5", "32503680000.0",
                           "32503680000.000001", "8589934591.999999", "0.000001", "1e9", "1761955200"])
    rows, items, counts, errors, calls = _time_column_both_ways(
        tmp_path, monkeypatch, [cell() for _ in range(3000)], "epoch")
    assert counts[1] > 2500 and "epoch seconds out of range" in errors
    assert counts[0] - len(calls) > 1800 and "1761955200.1234567" in calls
    assert not [c for c in calls if re.fullmatch(r"[0-9]{1,10}\.[0-9]{1,6}", c) and float(c) < 2**33]
    bodies = {doc_id: orjson.loads(body) for _r, _k, _i, doc_id, body in items}
    edge = next(r[0] for r in rows if r[1] == "8589934591.999999")
    assert bodies[edge]["metadata"]["time"]["create"] == "2242-03-16T12:56:31.999999"


def test_clean_iso_rows_take_the_columnar_path_without_python_per_value(tmp_path, monkeypatch):
    """Clean ISO times, DATETIME cells and checked values are mapped by Arrow kernels: no row goes through
    map_row (a row without an identity neither: its event has no profile) and no DATETIME cell through
    ``Mapper._value``."""
    rows = [[f"e-{i}", f"2025-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00" + ["", "Z", ".25+01:00"][i % 3],
             "search", f"u{i % 50}@x.org" if i % 7 else "", "", "s-1", str(1761955200 + i),
             f"2026-01-0{1 + i % 9} 10:00:00.5", "", str(i), "/p"] for i in range(500)]
    path = write(tmp_path / "clean.csv", CHECKED_HEADER, rows)
    mapping = Mapping.from_dict(CHECKED, name="checked")
    row_calls: list[int] = []
    value_calls: list[str] = []
    real_row, real_value = Mapper.map_row, Mapper._value
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: row_calls.append(ref) or real_row(self, row, ref))
    monkeypatch.setattr(Mapper, "_value", lambda self, rule, text: value_calls.append(rule.column) or real_value(
        self, rule, text))
    items, counts, _ = run(mapping, path, tmp_path, fast=True, batch_rows=128)
    assert counts[:3] == (500, 500, 0) and row_calls == []
    assert value_calls == []
    bodies = {doc_id: orjson.loads(body) for _r, _k, _i, doc_id, body in items}
    assert bodies["e-1"]["metadata"]["time"]["create"] == "2025-11-02T01:01:00.000000"
    assert bodies["e-2"]["metadata"]["time"]["create"] == "2025-11-03T01:02:00.250000"  # 02:02:00.25+01:00
    assert bodies["e-2"]["properties"]["seen"] == "2025-11-01T00:00:02+00:00"
    assert bodies["e-2"]["properties"]["due"] == "2026-01-03T10:00:00.500000+00:00"
    assert bodies["e-7"]["profile"] is None and bodies["e-7"]["metadata"]["profile_less"] is True


@pytest.mark.services
@pytest.mark.parametrize("stage", [False, True], ids=["streamed", "staged"])
def test_iso_mapping_imports_leave_the_same_events_both_ways(opensearch, tmp_path, monkeypatch, stage):
    """The ISO/DATETIME/checked/normalised mapping through the whole engine into OpenSearch, with and without
    the columnar path: the same counts (duplicates included: ids repeated with times in other months) and the
    same documents in the same monthly indices."""
    import re as regex

    from cdp_ingest.ledger import Ledger
    from cdp_ingest.pipeline import import_unit
    from cdp_ingest.store import Store, make_client

    rnd = random.Random(9)
    rows = _checked_rows(rnd, 800)
    rows += [[r[0], "2025-12-15T10:00:00+01:00", *r[2:]] for r in rows[:40]]  # repeated ids, another month
    path = write(tmp_path / "iso.csv", CHECKED_HEADER, rows)
    mapping = Mapping.from_dict(CHECKED, name="checked")
    columnar: list[int] = []
    real = EventBatchMapper.map_batch
    monkeypatch.setattr(EventBatchMapper, "map_batch",
                        lambda self, *a, **kw: (fb := real(self, *a, **kw)) and columnar.append(sum(fb.ok)) or fb)
    results = {}
    for fast in (True, False):
        if fast:
            monkeypatch.delenv("CDP_ROW_MAPPING", raising=False)
        else:
            monkeypatch.setenv("CDP_ROW_MAPPING", "1")
        store = Store(make_client(opensearch.info["url"]), prefix=f"t-fiso{int(fast)}{int(stage)}-", chunk_docs=200)
        store.ensure_templates()
        try:
            rep = import_unit(str(path), lambda: read_batches(str(path), batch_rows=150),
                              lambda iid: Mapper(mapping, unit_key=iid, now=NOW).map_row, store=store,
                              ledger=Ledger(store), work_dir=tmp_path / f"work-{fast}", kind="event", source="t",
                              stage=stage)
            store._request("POST", f"/{store.prefix}event-*/_refresh")
            hits = store._request("POST", f"/{store.prefix}event-*/_search",
                                  body={"size": 10_000, "sort": [{"id": "asc"}]})["hits"]["hits"]
            docs = {}
            for h in hits:
                doc = h["_source"]
                doc["metadata"]["aux"]["cdp"]["import_id"] = None  # each import has its own
                docs[h["_id"]] = (h["_index"].removeprefix(store.prefix), doc)
            results[fast] = ((rep.rows_in, rep.loaded, rep.rejected, rep.duplicates), docs)
        finally:
            store._request("DELETE", f"/{store.prefix}*")
    assert sum(columnar) > 150  # the fast run mapped rows columnar; the other run none
    (fast_counts, fast_docs), (row_counts, row_docs) = results[True], results[False]
    assert fast_counts == row_counts and fast_counts[0] == len(rows) and fast_counts[3] > 0
    assert fast_counts[1] == len(fast_docs) > 150
    assert fast_docs == row_docs
    assert all(regex.fullmatch(r"event-\d{4}-\d\d", index) for index, _ in fast_docs.values())


SESSIONS = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings" / "demo-sessions.yaml"
SESSION_HEADER = ["session_id", "email", "started_at", "channel", "device", "os", "browser", "utm_source",
                  "utm_campaign"]


def test_demo_session_file_matches_and_takes_the_columnar_path(tmp_path, monkeypatch):
    """The demo session mapping (ISO times, ``metadata.channel``) maps sessions columnar: the same documents
    and error file as row by row, and only the rejected rows go through map_row."""
    path = tmp_path / "sessions.csv"
    exp = sample.write_sessions(path, 3000, profiles=300)
    items, counts, errors = same(Mapping.load(SESSIONS), path, tmp_path, batch_rows=500)
    assert counts == (exp.rows, exp.rows - exp.bad, exp.bad, ["session"])
    assert errors.count("\n") == exp.bad + 1
    calls = []
    real = Mapper.map_row
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: calls.append(ref) or real(self, row, ref))
    run(Mapping.load(SESSIONS), path, tmp_path, fast=True, batch_rows=500)
    assert len(calls) == exp.bad
    doc = orjson.loads(items[1][4])
    assert items[1][2] == "p-session" and doc["metadata"]["channel"] == "web" and doc["profile"]["id"]
    assert doc["metadata"]["time"] == {"insert": "2025-11-02T01:01:00.000000", "update": None,
                                       "timestamp": 1762045260.0, "duration": 0, "weekday": 6}  # a Sunday


@pytest.mark.parametrize("time", [{"column": "started_at", "format": "iso"}, {"column": "started_at"},
                                  {"column": "started_at", "format": "epoch_ms"}, None])
def test_session_mappings_match_the_row_path_on_random_values(tmp_path, monkeypatch, time):
    """Sessions with random time cells (ISO, epoch seconds or milliseconds, fractions of a second included:
    their ``timestamp`` is orjson's shortest float text), or without a time column (map_row's own time), with
    normalised identities, a defaulted ``metadata.channel`` and a ``metadata.status``: the same documents,
    counts and error file both ways."""
    rnd = random.Random(21)
    mapping = Mapping.from_dict({
        "kind": "session", "id_column": "session_id", "identity": ["email"],
        "identity_normalize": {"email": ["trim", "lower"]}, **({"time": time} if time else {}),
        "fields": {"channel": {"target": "metadata.channel", "default": "unknown"},
                   "device": "device.type", "os": {"target": "metadata.status"}, "browser": "app.name",
                   "utm_source": {"target": "utm.source", "type": "DATETIME"}},
        "unmapped": "properties"}, name="sessions")

    def when() -> str:
        fmt = (time or {}).get("format", "epoch")
        if fmt == "iso":
            return time_cell(rnd, 0.7)
        if fmt == "epoch_ms":
            return rnd.choice([str(rnd.randrange(0, 2**33) * 1000), epoch_ms_cell(rnd)])
        return rnd.choice(  # (below 1 s orjson writes 1e-06, and past 2**53 µs the float is not exact)
            [str(rnd.randrange(0, 4102444800)), *EDGES[-8:], "1761955200.5", "", "0.5", "0.000001", "1.000001",
             f"{rnd.randrange(0, 2**33)}.{rnd.randrange(0, 10**6):06d}", f"{rnd.randrange(0, 10)}.{rnd.randrange(10)}"])
    rows = [[f"s-{i}", rnd.choice(["", "A@x.org", " b@x.org "]), when(), rnd.choice(["", "web"]),
             rnd.choice(["mobile", ""]), rnd.choice(["", "open"]), "x", time_cell(rnd, 0.8), rnd.choice(["", "c"])]
            for i in range(2000)]
    path = write(tmp_path / "s.csv", SESSION_HEADER, rows)
    items, counts, _ = same(mapping, path, tmp_path, batch_rows=256)
    assert counts[1] > 400
    calls: list[int] = []
    real = Mapper.map_row
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: calls.append(ref) or real(self, row, ref))
    run(mapping, path, tmp_path, fast=True, batch_rows=256)
    assert counts[0] - len(calls) > 300  # rows mapped columnar (every rejected row goes through map_row)
    docs = [orjson.loads(body) for *_, body in items]
    fractions = [d for d in docs if not float(d["metadata"]["time"]["timestamp"]).is_integer()]
    if time:  # fractional times mapped columnar too (rows are numbered from 1)
        assert len(fractions) > 50 and {d["metadata"]["aux"]["cdp"]["row"] for d in fractions} - set(calls)
    assert {d["metadata"]["channel"] for d in docs} == {"unknown", "web"}
    assert {d["metadata"]["status"] for d in docs} == {"completed", "open"}
