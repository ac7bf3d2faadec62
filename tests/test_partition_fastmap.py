"""The columnar partition mapping (``partition_fastmap``) against ``PartitionMapper.map_row``: for every
row it maps, the same staged body and source-row JSON byte for byte; every row it leaves is mapped or
rejected by ``map_row`` as before. No services."""

from __future__ import annotations

import decimal
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow.parquet as pq
from test_partition_engine import NOW, event, write

from cdp_ingest.errors import RowError
from cdp_ingest.partition_fastmap import PartitionBatchMapper
from cdp_ingest.partitions import PartitionMapper, read_partition_file
from cdp_ingest.pipeline import _batch_mapper, iter_rows, mapped_to_stage_row, transform_unit

# rows the columnar path must map itself (and match map_row exactly)
CLEAN = {
    "plain": {},
    "upper-case keys": {"identifiers": [("ID", "a-1"), ("Device_ID", "d-1"), ("User_Id", "u-1")]},
    "quotes and backslashes": {"event_properties": [('say "hi"', 'a\\b"c'), ("path", "C:\\x")],
                               "user_properties": [("Name", 'O"Brien')]},
    "non-ascii values": {"event_properties": [("city", "Kraków"), ("emoji", "🎉"), ("sep", "a\u2028b")],
                         "identifiers": [("id", "josé-1"), ("device_id", "d")]},
    "no session": {"identifiers": [("id", "a"), ("device_id", "d")]},
    "empty session id": {"identifiers": [("id", "a"), ("device_id", "d"), ("session_id", "")]},
    "device model and brand": {"platform_properties": [("osname", "iOS"), ("appversion", "1"),
                                                       ("DeviceModel", "iPhone 15"), ("devicevendor", "Apple"),
                                                       ("osversion", "17.2")]},
    "empty model, no os version": {"platform_properties": [("osname", "iOS"), ("appversion", "1"),
                                                           ("devicemodel", "")]},
    "null metric": {"metric_value": None},
    "whole second": {"ts": datetime(2026, 11, 20, 10, 11, 12, tzinfo=UTC)},
    "another month": {"ts": datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)},
    "null and empty maps": {"user_properties": None, "event_properties": []},
    "event key with inner spaces": {"event_key": "Add-to cart_now"},
    "event key with spaces around": {"event_key": " page_view  "},  # stripped once per distinct key
    "longest event key": {"event_key": "k" * 255},
    "identity just short enough": {"identifiers": [("id", "x" * 1023), ("device_id", "d")]},
}
# rows it must leave to map_row (which maps them: whitespace to strip, merged keys, dropped nulls ...)
LEFT = {
    "user_id with spaces": {"identifiers": [("id", "a"), ("device_id", "d"), ("user_id", " u-1 ")]},
    "empty user_id": {"identifiers": [("id", "a"), ("device_id", "d"), ("user_id", "")]},
    "id with spaces": {"identifiers": [("id", " a"), ("device_id", "d")]},
    "session id with spaces": {"identifiers": [("id", "a"), ("device_id", "d"), ("session_id", "s ")]},
    "same key twice, same value": {"identifiers": [("id", "a"), ("ID", "a"), ("device_id", "d")]},
    "null map value": {"event_properties": [("page", None), ("x", "1")]},
    "control character": {"event_properties": [("note", "line1\nline2")]},
    "control character in a key": {"user_properties": [("a\tb", "1")]},
    "upper-case uuid": {"insert_id": "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"},
    "braced uuid": {"insert_id": "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"},
}
# rows map_row rejects (the columnar path must not map them)
BAD = {
    "no ts": {"ts": None},
    "ts out of range": {"ts": datetime(3001, 1, 1, tzinfo=UTC)},
    "blank event key": {"event_key": "  "},
    "event key too long": {"event_key": "x" * 256},
    "no identifiers": {"identifiers": None},
    "no id": {"identifiers": [("device_id", "d")]},
    "blank device id": {"identifiers": [("id", "a"), ("device_id", " ")]},
    "case clash": {"identifiers": [("id", "a"), ("ID", "b"), ("device_id", "d")]},
    "identity too long": {"identifiers": [("id", "x" * 1024), ("device_id", "d")]},
    "no insert_id": {"insert_id": None},
    "bad insert_id": {"insert_id": "not-a-uuid"},
    "no osname": {"platform_properties": [("appversion", "1")]},
    "no platform": {"platform_properties": None},
    "empty appversion": {"platform_properties": [("osname", "iOS"), ("appversion", "")]},
}
CASES = {**CLEAN, **LEFT, **BAD}


def _rows() -> list[dict]:
    return [event(i, **over) for i, over in enumerate(CASES.values())]


def test_every_row_it_maps_is_byte_identical_and_the_rest_is_left_to_map_row(tmp_path):
    path = write(tmp_path / "part-0.parquet", _rows())
    mapper = PartitionMapper(source_id="src", now=NOW)
    fast = PartitionBatchMapper(mapper)
    (sb,) = list(read_partition_file(str(path), batch_rows=1000))
    fb = fast.map_batch(sb.batch, sb.first_row, "t-", "imp-1", {})
    assert fb is not None and fb.origs is not None
    for i, ((ref, row, _, _), name) in enumerate(zip(iter_rows([sb]), CASES, strict=True)):
        orig = orjson.dumps(row, default=str)
        try:
            expected = mapped_to_stage_row(mapper.map_row(row, ref), "t-", "imp-1", ref)
        except RowError:
            expected = None
        if name in CLEAN:
            assert fb.ok[i], name
            assert (fb.indices[i], fb.ids[i], fb.bodies[i]) == expected, name
            assert fb.origs[i] == orig, name
        elif name in LEFT:
            assert not fb.ok[i] and expected is not None, name  # map_row maps it
        else:
            assert not fb.ok[i] and expected is None, name
    # a row the reader flagged (an oversized cell) is left to the row path too
    flagged = fast.map_batch(sb.batch, sb.first_row, "t-", "imp-1", {0: "identifiers: cell too big"})
    assert not flagged.ok[0] and flagged.ok[1]


def test_transform_gives_the_same_staged_file_and_errors_with_and_without_it(tmp_path, monkeypatch):
    rows = _rows() * 3
    for n, r in enumerate(rows):  # distinct insert_ids, except the bad ones
        if r["insert_id"] not in (None, "not-a-uuid") and n >= len(CASES):
            r["insert_id"] = str(uuid.UUID(int=10_000 + n))
        r["ts"] = r["ts"] + timedelta(seconds=n) if r["ts"] is not None and r["ts"].year < 3000 else r["ts"]
        if n % 5 == 0:
            r["metric_value"] = (decimal.Decimal(n) / 7).quantize(decimal.Decimal("0.000001"))
    path = write(tmp_path / "part-0.parquet", rows)

    def run(name: str, batch_rows: int):
        mapper = PartitionMapper(source_id="src", now=NOW)
        assert (_batch_mapper(mapper.map_row) is None) == (name == "rows")
        out = tmp_path / name
        res = transform_unit(read_partition_file(str(path), batch_rows=batch_rows), mapper.map_row, prefix="t-",
                             import_id="imp-1", staged_path=out / "staged.parquet", error_path=out / "errors.csv")
        return res, pq.read_table(res.staged), (out / "errors.csv").read_bytes()

    fast, fast_table, fast_errors = run("fast", 7)  # small batches: slices of the maps' value arrays
    monkeypatch.setenv("CDP_ROW_MAPPING", "1")
    slow, slow_table, slow_errors = run("rows", 1000)
    assert (fast.rows_in, fast.accepted, fast.rejected) == (slow.rows_in, slow.accepted, slow.rejected)
    assert fast.rejected == 3 * len(BAD)
    assert fast_table.equals(slow_table)
    assert fast_errors == slow_errors


def test_a_sliced_batch_gives_the_same_json_as_the_whole_one():
    """Batches cut from a bigger one are zero-copy slices: a map's keys/items and a string's offsets
    then point into the whole array (``_slices`` cuts reader batches over 8,192 rows)."""
    import pyarrow as pa

    from cdp_ingest.partition_fastmap import _lit, _Map, _plain

    maps = pa.array([[("A", "1")], [("b", "2"), ("B", "3")], None, [("k", 'v"x')], [("z", "9"), ("Y", "8")]],
                    pa.map_(pa.string(), pa.string()))
    whole, part = _Map(maps), _Map(maps.slice(2, 3))
    assert part.object.to_pylist() == whole.object.to_pylist()[2:] == ["{}", '{"k":"v\\"x"}', '{"z":"9","y":"8"}']
    assert part.orig.to_pylist() == whole.orig.to_pylist()[2:]
    assert list(whole.unclean) == [False, True, False, False, False]  # b/B: equal once lowercased
    assert list(part.unclean) == [False, False, False] and part.get("y").to_pylist() == [None, None, "8"]
    text = pa.array(["  a", "b", "c ", "dd", None, 'e"'])
    assert list(_plain(text.slice(1, 4))) == [True, False, True, False]
    assert _lit(text.slice(1, 5))[0].to_pylist() == ['"b"', '"c "', '"dd"', None, '"e\\""']
