"""The §3 partition engine on real small Parquet files written with pyarrow (no Airflow, no services)."""

from __future__ import annotations

import decimal
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.errors import FileLevelError, RowError
from cdp_ingest.mapping import profile_id_for
from cdp_ingest.partitions import (
    COLUMNS,
    SCHEMA,
    PartitionMapper,
    check_schema,
    day_of_interval,
    is_data_file,
    local_deadline,
    parse_day,
    partition_prefix,
    read_partition_file,
    summarize_day,
)
from cdp_ingest.pipeline import read_stage, transform_unit

NOW = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
TS = datetime(2026, 11, 20, 10, 11, 12, 345678, tzinfo=UTC)


def event(i: int = 0, **over) -> dict:
    row = {
        "ts": TS + timedelta(seconds=i),
        "event_key": "add_to_cart",
        "identifiers": [("id", f"anon-{i}"), ("device_id", f"dev-{i}"), ("session_id", f"s-{i}")],
        "insert_id": str(uuid.UUID(int=i + 1)),
        "metric_value": decimal.Decimal("12.345600"),
        "user_properties": [("Plan", "gold")],
        "event_properties": [("Product_ID", "p-1"), ("price", "9.99")],
        "platform_properties": [("OsName", "Android"), ("AppVersion", "5.2.1"), ("osVersion", "14")],
    }
    row.update(over)
    return row


def write(path, rows, schema=SCHEMA):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def stage(tmp_path, path, source_id="hackle-test"):
    mapper = PartitionMapper(source_id=source_id, now=NOW)
    result = transform_unit(read_partition_file(str(path)), mapper.map_row, prefix="t-", import_id="imp-1",
                            staged_path=tmp_path / "work" / "staged.parquet",
                            error_path=tmp_path / "work" / "errors.csv")
    docs = []
    for b in read_stage(result.staged):
        docs.extend(zip(b["index"], b["id"], (orjson.loads(x) for x in b["body"]), strict=True))
    return result, docs


def map_one(row) -> dict:
    return PartitionMapper(source_id="src", now=NOW).map_row(row, 1).document


# ---- layout and days ------------------------------------------------------------------------------
def test_partition_layout_helpers():
    assert partition_prefix("s3://b/events/", date(2026, 11, 20)) == "s3://b/events/dt=2026-11-20/"
    assert partition_prefix("gs://b", date(2026, 1, 2)) == "gs://b/dt=2026-01-02/"
    assert is_data_file("part-00000.parquet")
    assert not is_data_file("_SUCCESS") and not is_data_file("_tmp.parquet") and not is_data_file(".x.parquet")
    assert not is_data_file("part-0.csv")
    assert parse_day(" 2026-11-20 ") == date(2026, 11, 20)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day("20/11/2026")


def test_day_comes_from_the_data_interval_in_the_source_time_zone():
    berlin = ZoneInfo("Europe/Berlin")
    # a daily run at 00:30 Berlin: interval starts 2026-11-19 23:30 UTC, which is the 20th in Berlin
    assert day_of_interval(datetime(2026, 11, 19, 23, 30, tzinfo=UTC), berlin) == date(2026, 11, 20)
    assert day_of_interval(datetime(2026, 11, 19, 23, 30, tzinfo=UTC), UTC) == date(2026, 11, 19)
    with pytest.raises(ValueError):
        day_of_interval(datetime(2026, 11, 19), UTC)


def test_local_deadline_is_the_configured_time_on_the_next_local_day():
    berlin = ZoneInfo("Europe/Berlin")
    d = local_deadline(date(2026, 11, 20), "09:00", berlin)
    assert d == datetime(2026, 11, 21, 9, 0, tzinfo=berlin)
    assert d.astimezone(UTC) == datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


# ---- schema ---------------------------------------------------------------------------------------
def test_schema_of_spec_passes_and_json_identifiers_are_allowed():
    check_schema(SCHEMA)
    check_schema(SCHEMA.set(SCHEMA.get_field_index("identifiers"), pa.field("identifiers", pa.string())))
    check_schema(SCHEMA.append(pa.field("extra", pa.int8())))


def test_schema_mismatch_fails_the_file_with_every_problem_listed(tmp_path):
    bad = pa.schema([("ts", pa.int64()), ("event_key", pa.string()), ("identifiers", pa.int32()),
                     ("insert_id", pa.string()), ("metric_value", pa.float64()),
                     ("user_properties", SCHEMA.field("user_properties").type),
                     ("event_properties", SCHEMA.field("event_properties").type)])
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({n: pa.nulls(1, t) for n, t in zip(bad.names, bad.types, strict=True)}), path)
    with pytest.raises(FileLevelError) as e:
        list(read_partition_file(str(path)))
    assert e.value.code == "bad_schema"
    msg = str(e.value)
    for part in ("missing column(s) platform_properties", "column ts must be a timestamp",
                 "column identifiers must be", "column metric_value must be decimal(24,6)"):
        assert part in msg


def test_dictionary_encoded_text_columns_are_read_as_text(tmp_path):
    """pandas writes a ``category`` column as dictionary-encoded text: the file failed as bad_schema ("column
    event_key must be a string, not dictionary<...>"); its values are read as text now."""
    rows = [event(i) for i in range(4)]
    rows[3]["insert_id"] = "nope"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    for name in ("event_key", "insert_id"):
        table = table.set_column(table.schema.get_field_index(name), name, table.column(name).dictionary_encode())
    path = tmp_path / "cat.parquet"
    pq.write_table(table, path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("event_key").type)
    result, docs = stage(tmp_path, path)
    assert (result.rows_in, result.accepted, result.rejected) == (4, 3, 1)
    plain, plain_docs = stage(tmp_path / "plain", write(tmp_path / "plain.parquet", rows))
    assert docs == plain_docs
    assert [e[FAILURE_COLUMN] for e in read_error_file(result.error_file)] == ["insert_id: not a UUID"]


def test_not_parquet_is_unreadable(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(FileLevelError) as e:
        read_partition_file(str(p))
    assert e.value.code == "unreadable"


# ---- one row → one document -----------------------------------------------------------------------
def test_event_document_shape():
    doc = map_one(event(0, identifiers=[("ID", "anon-0"), ("Device_ID", "dev-0"), ("User_Id", "u-42"),
                                       ("session_id", "s-0"), ("ga_session_id", "ga-1")]))
    assert doc["id"] == "00000000-0000-0000-0000-000000000001"
    assert doc["type"] == "add_to_cart" and doc["name"] == "Add to cart"
    assert doc["metadata"]["time"]["create"] == "2026-11-20T10:11:12.345"
    assert doc["metadata"]["time"]["insert"] == "2026-11-24T06:00:00.000000"
    assert doc["profile"] == {"id": profile_id_for("u-42")}
    assert doc["session"] == {"id": "s-0", "start": None, "duration": 0, "tz": "utc"}
    assert doc["device"] == {"id": "dev-0"}
    assert doc["os"] == {"name": "Android", "version": "14"} and doc["app"] == {"version": "5.2.1"}
    assert doc["properties"] == {"product_id": "p-1", "price": "9.99"}
    assert doc["context"]["identifiers"] == {"id": "anon-0", "device_id": "dev-0", "user_id": "u-42",
                                             "session_id": "s-0", "ga_session_id": "ga-1"}
    assert doc["context"]["user_properties"] == {"plan": "gold"}
    assert doc["context"]["platform"] == {"osname": "Android", "appversion": "5.2.1", "osversion": "14"}
    assert doc["source"] == {"id": "src"}
    assert doc["data"]["metric_value"] == decimal.Decimal("12.345600")  # as given; files give text (below)


def test_profile_falls_back_to_id_and_matches_other_sources():
    doc = map_one(event(3))
    assert doc["profile"]["id"] == profile_id_for("anon-3")
    assert map_one(event(3, identifiers=[("id", "anon-3"), ("device_id", "d")]))["session"] is None


def test_identifiers_as_json_string_give_the_same_document():
    as_map = map_one(event(5))
    as_json = map_one(event(5, identifiers='{"ID": "anon-5", "device_id": "dev-5", "session_id": "s-5"}'))
    assert as_json == as_map
    assert map_one(event(5, identifiers='{"id": 123, "device_id": "d"}'))["context"]["identifiers"]["id"] == "123"


@pytest.mark.parametrize(("over", "reason"), [
    ({"ts": None}, "ts: missing"),
    ({"ts": datetime(3001, 1, 1, tzinfo=UTC)}, "ts: out of range (1970..3000)"),
    ({"event_key": "  "}, "event_key: missing or empty"),
    ({"event_key": "x" * 256}, "event_key: longer than 255 characters"),
    ({"identifiers": None}, "identifiers: missing"),
    ({"identifiers": [("device_id", "d")]}, "identifiers: required key 'id' is missing or empty"),
    ({"identifiers": [("id", "a"), ("device_id", " ")]}, "identifiers: required key 'device_id' is missing or empty"),
    ({"identifiers": "{not json"}, "identifiers: not a JSON object"),
    ({"identifiers": '["id", "a"]'}, "identifiers: not a JSON object"),
    ({"identifiers": '{"id": {"x": 1}, "device_id": "d"}'}, "identifiers: value of key 'id' is not a string"),
    ({"identifiers": [("id", "a"), ("ID", "b"), ("device_id", "d")]},
     "identifiers: keys differing only in case ('id') have different values"),
    ({"identifiers": [("id", "x" * 1024), ("device_id", "d")]},
     "identifiers: identity (user_id or id) must be shorter than 1024 characters"),
    ({"insert_id": None}, "insert_id: missing"),
    ({"insert_id": "not-a-uuid"}, "insert_id: not a UUID"),
    ({"platform_properties": [("appversion", "1")]}, "platform_properties: required key 'osname' is missing or empty"),
    ({"platform_properties": None}, "platform_properties: required key 'osname' is missing or empty"),
    ({"platform_properties": [("osname", "iOS"), ("appversion", "")]},
     "platform_properties: required key 'appversion' is missing or empty"),
])
def test_each_bad_row_gets_one_clear_reason(over, reason):
    with pytest.raises(RowError) as e:
        PartitionMapper(source_id="s", now=NOW).map_row(event(1, **over), 1)
    assert str(e.value) == reason


def test_same_key_twice_with_same_value_is_merged_and_uuid_is_canonical():
    doc = map_one(event(1, identifiers=[("id", "a"), ("ID", "a"), ("device_id", "d")],
                        insert_id="{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}"))
    assert doc["context"]["identifiers"] == {"id": "a", "device_id": "d"}
    assert doc["id"] == "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


# ---- whole files through the pipeline's transform step ----------------------------------------------
def test_file_to_staged_documents_with_error_file(tmp_path):
    rows = [event(i) for i in range(6)]
    rows[1]["identifiers"] = [("device_id", "d")]                       # missing id
    rows[2]["platform_properties"] = [("osname", "iOS")]                # missing appversion
    rows[3]["insert_id"] = "nope"                                       # bad insert_id
    rows[4]["metric_value"] = decimal.Decimal("123456789012345678.123456")
    rows[5]["metric_value"] = decimal.Decimal("0")
    result, docs = stage(tmp_path, write(tmp_path / "part-0.parquet", rows))
    assert (result.rows_in, result.accepted, result.rejected) == (6, 3, 3)
    assert result.columns == COLUMNS
    by_id = {d["id"]: (index, d) for index, _id, d in docs}
    index, d0 = by_id[str(uuid.UUID(int=1))]
    assert index == "t-event-2026-11"
    assert d0["data"]["metric_value"] == "12.345600"
    assert d0["metadata"]["aux"]["cdp"] == {"import_id": "imp-1", "row": 1}
    assert by_id[str(uuid.UUID(int=5))][1]["data"]["metric_value"] == "123456789012345678.123456"
    assert by_id[str(uuid.UUID(int=6))][1]["data"]["metric_value"] == "0.000000"

    errors = read_error_file(result.error_file)
    assert [e[FAILURE_COLUMN] for e in errors] == [
        "identifiers: required key 'id' is missing or empty",
        "platform_properties: required key 'appversion' is missing or empty",
        "insert_id: not a UUID",
    ]
    assert list(errors[0]) == [*COLUMNS, FAILURE_COLUMN]
    # maps are shown as JSON objects with their original keys, ts in ISO 8601, metric exact
    assert orjson.loads(errors[0]["identifiers"]) == {"device_id": "d"}
    assert orjson.loads(errors[1]["platform_properties"]) == {"osname": "iOS"}
    assert errors[1]["ts"] == "2026-11-20T10:11:14.345+00:00"
    assert errors[2]["insert_id"] == "nope" and errors[2]["metric_value"] == "12.345600"


def test_timestamps_are_utc_and_truncated_to_ms_whatever_the_unit_or_zone(tmp_path):
    kolkata = timezone(timedelta(hours=5, minutes=30))
    ns = pa.array([1_764_000_000_123_456_789], pa.timestamp("ns", tz="Asia/Kolkata"))
    naive = pa.array([datetime(2026, 10, 31, 23, 59, 59, 999999)], pa.timestamp("us"))
    for i, ts in enumerate((ns, naive)):
        schema = SCHEMA.set(0, pa.field("ts", ts.type))
        row = event(i)
        table = pa.Table.from_pylist([row], schema=SCHEMA).set_column(0, pa.field("ts", ts.type), ts)
        assert table.schema == schema
        pq.write_table(table, tmp_path / f"p{i}.parquet")
    _, docs = stage(tmp_path, tmp_path / "p0.parquet")
    expected = datetime.fromtimestamp(1_764_000_000.123, tz=UTC)
    assert docs[0][2]["metadata"]["time"]["create"] == expected.replace(tzinfo=None).isoformat(timespec="milliseconds")
    assert expected.astimezone(kolkata).utcoffset() == timedelta(hours=5, minutes=30)
    _, docs = stage(tmp_path, tmp_path / "p1.parquet")
    assert docs[0][0] == "t-event-2026-10"  # naive = UTC: still October, not shifted to November
    assert docs[0][2]["metadata"]["time"]["create"] == "2026-10-31T23:59:59.999"


def test_json_string_identifiers_column_and_file_object_source(tmp_path):
    schema = SCHEMA.set(2, pa.field("identifiers", pa.string()))
    rows = [event(i, identifiers=orjson.dumps({"Id": f"a{i}", "device_id": "d"}).decode()) for i in range(3)]
    rows[2]["identifiers"] = "[]"
    path = write(tmp_path / "json.parquet", rows, schema)
    mapper = PartitionMapper(source_id="s", now=NOW)
    with open(path, "rb") as fh:
        fh.read(10)  # a file object is rewound before reading
        result = transform_unit(read_partition_file(fh), mapper.map_row, prefix="t-", import_id="i",
                                staged_path=tmp_path / "w" / "s.parquet", error_path=tmp_path / "w" / "e.csv")
        assert not fh.closed
    assert (result.accepted, result.rejected) == (2, 1)
    assert read_error_file(result.error_file)[0]["identifiers"] == "[]"


def test_integer_metric_and_uuid_typed_insert_id(tmp_path):
    schema = SCHEMA.set(4, pa.field("metric_value", pa.int64())).set(3, pa.field("insert_id", pa.binary(16)))
    rows = [event(0, metric_value=7, insert_id=uuid.UUID(int=9).bytes)]
    _, docs = stage(tmp_path, write(tmp_path / "i.parquet", rows, schema))
    assert docs[0][1] == str(uuid.UUID(int=9))
    assert docs[0][2]["data"]["metric_value"] == "7.000000"


# ---- day summary ----------------------------------------------------------------------------------
def test_summarize_day_adds_up_and_refuses_broken_accounting():
    results = [
        {"status": "committed", "path": "a", "rows_in": 10, "loaded": 7, "rejected": 2, "duplicates": 1,
         "error_file": "/e/a.csv"},
        {"status": "skipped", "path": "b", "rows_in": 0},
        {"status": "committed", "path": "c", "rows_in": 5, "loaded": 5, "rejected": 0, "duplicates": 0,
         "error_file": None},
    ]
    assert summarize_day(results) == {"files": 3, "committed": 2, "skipped": 1, "rows_in": 15, "loaded": 12,
                                      "rejected": 2, "duplicates": 1, "error_files": ["/e/a.csv"]}
    with pytest.raises(FileLevelError, match="accounting mismatch"):
        summarize_day([{"status": "committed", "path": "x", "rows_in": 3, "loaded": 1, "rejected": 0,
                        "duplicates": 0}])
