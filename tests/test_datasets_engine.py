"""Dataset engine (SPEC §4): declarations, change detection and raw/mapped syncs against the real services:
OpenSearch, a local HTTP server with ETag/Last-Modified, moto S3 and PostgreSQL."""

from __future__ import annotations

import gzip
import itertools
import json
import os
from pathlib import Path

import pytest
from dataset_kit import http_files

from cdp_ingest.datasets.raw import alias_indices, alias_name, index_stats, stage_raw, text_batches, versions
from cdp_ingest.datasets.spec import (
    DatasetError,
    all_datasets,
    load_config,
    parse_spec,
    remove_registry_entry,
    write_registry_entry,
)
from cdp_ingest.datasets.state import DatasetIndex
from cdp_ingest.datasets.sync import delete_dataset, sync_dataset
from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.errors import FileLevelError
from cdp_ingest.mapping import profile_id_for
from cdp_ingest.store import Store, make_client

_prefixes = itertools.count()
_jobs = itertools.count()


def job() -> str:
    return f"test-job-{os.getpid()}-{next(_jobs)}"


# ---- declarations (no services) ---------------------------------------------------------------------
def test_sync_interval_below_900_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="at least 900 seconds") as e:
        parse_spec("orders", {"source": "/data/orders.csv", "sync_interval": 600})
    assert e.value.code == "invalid_sync_interval"
    cfg = tmp_path / "datasets.yaml"
    cfg.write_text("datasets:\n  orders: {source: /data/orders.csv, sync_interval: 899}\n")
    with pytest.raises(DatasetError, match="at least 900"):
        load_config(cfg)
    assert parse_spec("orders", {"source": "/data/orders.csv", "sync_interval": "900"}).sync_interval == 900
    assert parse_spec("orders", {"source": "/data/orders.csv"}).sync_interval is None


@pytest.mark.parametrize("cfg, message", [
    ({"source": "../orders.csv"}, "must not contain '..'"),
    ({"source": "ftp://host/orders.csv"}, "unsupported source scheme"),
    ({"source": "/data/orders.xlsx"}, "unsupported file type"),
    ({"source": {"table": "orders"}}, "needs conn_id"),
    ({"source": {"conn_id": "pg", "table": "orders; drop table x"}}, "table must be"),
    ({"source": {"conn_id": "pg", "query": "delete from orders"}}, "must be a SELECT"),
    ({"source": "/data/o.csv", "watermark_column": "updated_at"}, "only applies to table/query"),
    ({"source": "/data/o.csv", "target": {"kind": "event", "mapping": "demo-profiles.yaml"}}, "maps profiles"),
    ({"source": "/data/o.csv", "target": {"kind": "event", "mapping": "nope.yaml"}}, "not found"),
    ({"source": "/data/o.csv", "schedule": "@daily"}, "unknown key"),
    ({"source": "/data/o.csv", "target": ["event", "demo-events.yaml"]}, "target must be 'raw' or"),
    ({"source": "/data/o.csv", "target": 1}, "target must be 'raw' or"),
])
def test_invalid_declarations_say_what_is_wrong(cfg, message):
    with pytest.raises(DatasetError, match=message):
        parse_spec("orders", cfg)


def test_watermark_lookback_is_checked_and_applied_to_the_last_maximum():
    from datetime import UTC, datetime

    from cdp_ingest.datasets.sources import below

    mapped = {"source": {"conn_id": "pg", "table": "orders"}, "watermark_column": "at",
              "target": {"kind": "event", "mapping": "demo-events.yaml"}}
    assert parse_spec("o", {**mapped, "watermark_lookback": "90"}).watermark_lookback == 90
    assert parse_spec("o", {**mapped, "watermark_lookback": 0.5}).watermark_lookback == 0.5
    assert parse_spec("o", {**mapped, "watermark_lookback": 0}).watermark_lookback is None
    assert parse_spec("o", {**mapped, "watermark_lookback": 60}).to_dict()["watermark_lookback"] == 60
    for bad in (-1, "an hour", True, float("nan"), [60]):
        with pytest.raises(DatasetError, match="watermark_lookback must be a number >= 0"):
            parse_spec("o", {**mapped, "watermark_lookback": bad})
    with pytest.raises(DatasetError, match="watermark_lookback needs a watermark_column"):
        parse_spec("o", {**mapped, "watermark_column": None, "watermark_lookback": 60})
    with pytest.raises(DatasetError, match="applies to mapped targets"):
        parse_spec("o", {**mapped, "target": "raw", "watermark_lookback": 60})
    assert below(1767268800, 3600, "ts") == 1767265200 and below(10.5, 0.5, "v") == 10.0
    assert below("12.50", 0.25, "amount") == "12.25"  # a decimal (stored as its text)
    assert below("2026-01-05T11:00:00+00:00", 5400, "at") == datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    assert below("2026-01-05", 86400, "day") == datetime(2026, 1, 4)
    assert below("v7", None, "version") == "v7"  # no lookback: the watermark as stored
    with pytest.raises(FileLevelError, match="needs a number or a date/time in version; its last maximum is 'v7'"):
        below("v7", 1, "version")


def test_a_malformed_mapping_file_is_a_declaration_error(tmp_path):
    """A mapping file whose fields are a list (not column: target): the declaration error names it. It raised
    an AttributeError, which the spec check (MappingError, OSError) let through."""
    (tmp_path / "bad.yaml").write_text("kind: event\nevent_type: x\nfields: [email, name]\n")
    with pytest.raises(DatasetError, match="mapping bad.yaml: mapping bad: fields must map column names to targets"):
        parse_spec("orders", {"source": "/data/o.csv", "target": {"kind": "event", "mapping": "bad.yaml"}},
                   mappings_dir=tmp_path)


def test_a_record_nested_too_deep_is_an_error_row_and_the_rest_is_staged(tmp_path):
    """A JSON-lines record nested 300 levels deep: the raw staging and the mapped dataset's text batches
    both failed on it with a TypeError (orjson writes 254 levels), stopping the sync; it is an error row now."""
    src = tmp_path / "d.jsonl"
    src.write_text('{"id": "1", "p": ' + "[" * 300 + "]" * 300 + '}\n{"id": "2", "p": 1}\n')
    staged = stage_raw(src, "jsonl", staged_path=tmp_path / "s.parquet", error_path=tmp_path / "e.csv")
    assert (staged.rows_in, staged.accepted, staged.rejected) == (2, 1, 1)
    assert "line 1: nested deeper than 254 levels" in (tmp_path / "e.csv").read_text()
    (batch,) = text_batches(src, "jsonl")
    assert batch.batch.num_rows == 2 and batch.bad_rows == {0: "line 1: nested deeper than 254 levels"}


def test_raw_json_lines_with_other_keys_keep_every_value_in_the_error_file(tmp_path):
    """Rejected JSON lines with keys the first rejected row did not have: their values were lost (only the
    key's name went into the reason), and an unreadable line's placeholder column ``line`` was listed as a
    column of the dataset."""
    src = tmp_path / "p.jsonl"
    src.write_text('{"id": 1, "a": "x"}\n{"a": "no id"}\n{broken\n{"id": 2, "b": "y"}\n{"c": "kept"}\n')
    staged = stage_raw(src, "jsonl", staged_path=tmp_path / "s.parquet", error_path=tmp_path / "e.csv",
                       id_column="id")
    assert (staged.rows_in, staged.accepted, staged.rejected) == (5, 2, 3)
    assert staged.columns == ["id", "a", "b", "c"]
    rows = [{k: v for k, v in r.items() if v} for r in read_error_file(staged.error_file)]
    assert rows == [{"a": "no id", FAILURE_COLUMN: "column 'id' (id_column) is empty"},
                    {"line": "{broken", FAILURE_COLUMN: rows[1][FAILURE_COLUMN]},
                    {"c": "kept", FAILURE_COLUMN: "column 'id' (id_column) is empty"}]
    assert rows[1][FAILURE_COLUMN].startswith("line 3: invalid JSON")


def test_text_batches_of_typed_rows_are_each_value_as_text():
    """JSON lines and database rows reach a mapped dataset's mapping as text columns: a column of text, whole
    numbers or booleans is cast by Arrow, numbers go through ``str``, anything else value by value; each
    cell the text ``_text`` gives it (random columns of every kind, mixed ones, nulls, integers past 64 bits,
    100.0, nan)."""
    import random

    from cdp_ingest.datasets.raw import _as_text_batch, _text

    pools = [["a", "", "é\u2028", None], [0, -7, 2**63 - 1, None], [2**64, 1], [1.5, 100.0, 1e16, -0.0, float("nan"),
             float("inf"), None, 3], [True, False, None], [[], {"a": [1, None]}, None, "x", 2, 2.5, True]]
    rnd = random.Random(5)
    for _ in range(300):
        rows = []
        for i in range(rnd.randint(1, 40)):
            row = {f"c{j}": rnd.choice(pool) for j, pool in enumerate(pools) if rnd.random() < 0.8}
            if rnd.random() < 0.2:
                row["mixed"] = rnd.choice([rnd.choice(pool) for pool in pools])
            rows.append((i + 1, row, None))
        batch = _as_text_batch(rows).batch
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            assert column.to_pylist() == [_text(row.get(name)) for _, row, _ in rows], name


def test_names_and_source_kinds():
    with pytest.raises(DatasetError, match="lowercase"):
        parse_spec("Bad-Name", {"source": "/x.csv"})
    assert parse_spec("a", {"source": "https://h/x.csv.gz"}).source.kind == "http"
    assert parse_spec("a", {"source": "s3://b/k/x.parquet", "format": "parquet"}).source.kind == "s3"
    pg = parse_spec("a", {"source": {"conn_id": "pg", "table": "public.orders"}, "watermark_column": "updated_at"})
    assert pg.source.sql() == 'SELECT * FROM "public"."orders"'
    ev = parse_spec("a", {"source": "/x.csv", "target": {"kind": "event", "mapping": "demo-events.yaml"}})
    assert ev.target.kind == "event" and Path(ev.target.mapping).is_file()


def test_api_datasets_read_local_files_only_inside_the_landing_folder(tmp_path, monkeypatch):
    landing = tmp_path / "landing"
    (landing / "in").mkdir(parents=True)
    monkeypatch.setenv("CDP_LANDING_DIR", str(landing))
    ok = parse_spec("a", {"source": "in/x.csv", "origin": "api"})
    assert ok.source.url == str(landing / "in" / "x.csv")
    (landing / "in" / "escape").symlink_to("/etc")
    for source in ("/etc/passwd.csv", "in/escape/passwd.csv"):
        with pytest.raises(DatasetError, match="inside the landing folder") as e:
            parse_spec("a", {"source": source, "origin": "api"})
        assert e.value.code == "forbidden_path"
    outside = tmp_path / "m.yaml"
    outside.write_text("kind: event\nevent_type: {value: x}\n")
    with pytest.raises(DatasetError, match="project's mappings"):
        parse_spec("a", {"source": "in/x.csv", "origin": "api", "target": {"kind": "event", "mapping": str(outside)}})
    assert parse_spec("a", {"source": "/etc/hosts.csv"}).source.url == "/etc/hosts.csv"  # config: the admin's call


def test_registry_folder_and_config_are_merged(tmp_path):
    reg = tmp_path / "registry"
    spec = parse_spec("from_api", {"source": "https://h/x.csv", "sync_interval": 3600})
    write_registry_entry(spec, reg)
    (reg / "broken.json").write_text("{not json")
    cfg = tmp_path / "datasets.yaml"
    cfg.write_text("datasets:\n  from_file: {source: /data/x.csv}\n")
    found = all_datasets(cfg, reg)
    assert sorted(found) == ["from_api", "from_file"]
    assert found["from_api"].origin == "api" and found["from_api"].sync_interval == 3600
    assert remove_registry_entry("from_api", reg) and "from_api" not in all_datasets(cfg, reg)


# ---- services ---------------------------------------------------------------------------------------
@pytest.fixture
def store(opensearch, tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_DATASETS_DIR", str(tmp_path / "datasets"))
    s = Store(make_client(opensearch.info["url"]), prefix=f"t-ds{next(_prefixes)}-", chunk_docs=200)
    yield s
    s._request("DELETE", f"/{s.prefix}*")


@pytest.fixture
def http_server():
    with http_files() as served:
        yield served


def rows_of(store: Store, name: str) -> dict[str, dict]:
    resp = store._request("POST", f"/{alias_name(store.prefix, name)}/_search", body={"size": 1000})
    return {h["_id"]: h["_source"] for h in resp["hits"]["hits"]}


def test_url_dataset_sync_replaces_rows_atomically_and_detects_no_change(store, http_server):
    base, handler = http_server
    handler.files["/orders.csv"] = (b"order_id,amount,placed_at\n1,10.5,2026-01-01T10:00:00\n2,20,2026-01-02T10:00:00\n"
                                    b"3,30,2026-01-03T10:00:00\n", "Wed, 01 Jan 2026 10:00:00 GMT")
    spec = parse_spec("orders", {"source": f"{base}/orders.csv", "id_column": "order_id", "sync_interval": 900})
    first = sync_dataset(spec, store, job_id=job())
    assert first["state"] == "complete" and first["changed"] is True
    assert first["result"]["loaded"] == 3 and first["result"]["rows_in"] == 3
    v1 = alias_indices(store, alias_name(store.prefix, "orders"))
    assert len(v1) == 1 and v1[0].startswith(f"{store.prefix}dataset-orders-")
    assert rows_of(store, "orders")["2"]["amount"] == "20"

    # unchanged: a conditional GET answered 304, recorded as nothing changed
    again = sync_dataset(spec, store, job_id=job())
    assert again["state"] == "complete" and again["changed"] is False and "304" in again["reason"]
    assert handler.hits[-1] == ("/orders.csv", 304)
    assert alias_indices(store, alias_name(store.prefix, "orders")) == v1

    # the source changes a row, deletes one and adds one: the dataset ends with exactly the source's rows
    handler.files["/orders.csv"] = (b"order_id,amount,placed_at\n1,11,2026-01-01T10:00:00\n3,30,2026-01-03T10:00:00\n"
                                    b"4,40,2026-01-04T10:00:00\n", "Thu, 02 Jan 2026 10:00:00 GMT")
    third = sync_dataset(spec, store, job_id=job())
    assert third["changed"] is True and third["result"]["loaded"] == 3
    rows = rows_of(store, "orders")
    assert sorted(rows) == ["1", "3", "4"] and rows["1"]["amount"] == "11"
    v2 = alias_indices(store, alias_name(store.prefix, "orders"))
    assert v2 != v1 and store._request("HEAD", f"/{v1[0]}", ok_statuses=(404,)) is False  # old index removed
    mapping = store._request("GET", f"/{v2[0]}/_mapping")[v2[0]]["mappings"]["properties"]
    assert mapping["placed_at"]["type"] == "date" and mapping["order_id"]["type"] == "keyword"
    stats = index_stats(store, "orders")
    assert stats["rows"] == 3 and stats["size_bytes"] > 0

    # a failing source: the job fails with its code and message, the previous dataset stays readable
    del handler.files["/orders.csv"]
    with pytest.raises(FileLevelError):
        sync_dataset(spec, store, job_id=(failing := job()))
    failed = DatasetIndex(store).job(failing)
    assert failed["state"] == "failure" and failed["error_code"] == "no_data_file"
    assert "HTTP 404" in failed["error_message"]
    assert sorted(rows_of(store, "orders")) == ["1", "3", "4"]
    assert alias_indices(store, alias_name(store.prefix, "orders")) == v2
    jobs = DatasetIndex(store).jobs(dataset="orders")
    assert [j["state"] for j in jobs].count("complete") == 3
    assert [j["job_id"] for j in DatasetIndex(store).jobs(dataset="orders", state="failure")] == [failing]


def test_local_jsonl_gz_file_and_rows_the_store_refuses(store, tmp_path):
    src = tmp_path / "people.jsonl.gz"
    lines = [{"id": i, "name": f"n{i}", "score": i / 2, "tags": ["x", "y"], "attrs": {"k": i}} for i in range(1, 1001)]
    lines.append({"id": 1001, "name": "late", "score": "not a number"})  # after the sample the mapping is inferred from
    src.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in lines) + "\n{broken\n").encode()))
    spec = parse_spec("people", {"source": str(src), "id_column": "id"})
    done = sync_dataset(spec, store, job_id=job())
    r = done["result"]
    assert (r["rows_in"], r["loaded"], r["rejected"], r["duplicates"]) == (1002, 1000, 2, 0)
    errors = Path(r["error_file"]).read_text()
    assert "line 1002: invalid JSON" in errors and "1001,late,not a number" in errors and "score" in errors
    assert index_stats(store, "people")["rows"] == 1000
    doc = store.get(alias_name(store.prefix, "people"), "7")["_source"]
    assert doc == {"id": 7, "name": "n7", "score": 3.5, "tags": ["x", "y"], "attrs": {"k": 7}}
    assert sync_dataset(spec, store, job_id=job())["changed"] is False  # same size and mtime


def test_mapped_json_lines_whose_keys_change_after_the_first_batch(store, tmp_path):
    """5,100 JSON lines mapped to events; from line 5,001 (the second batch of 5,000) each also has a
    ``coupon``. A rejected row of the second batch lost its coupon in the error file, and the transform's and
    the load's error files were joined under one header although their columns differed."""
    mapping = tmp_path / "clicks.yaml"
    mapping.write_text("kind: event\nsource_id: js-clicks\nid_column: id\nidentity: [email]\n"
                       "time: {column: ts, format: epoch}\nevent_type: {column: event}\nunmapped: properties\n")
    lines = []
    for i in range(1, 5101):
        row = {"id": f"e{i}", "email": f"u{i % 50}@x.io", "event": "click", "ts": 1767261600 + i}
        if i > 5000:
            row["coupon"] = f"C{i}"
        if i in (3, 5050):
            row["ts"] = "soon"
        lines.append(json.dumps(row))
    lines[5059] = "{broken"
    src = tmp_path / "clicks.jsonl"
    src.write_text("\n".join(lines) + "\n")
    spec = parse_spec("jsclicks", {"source": str(src), "target": {"kind": "event", "mapping": str(mapping)}})
    r = sync_dataset(spec, store, job_id=job())["result"]
    assert (r["rows_in"], r["loaded"], r["rejected"], r["duplicates"]) == (5100, 5097, 3, 0)
    store.refresh([f"{store.prefix}event-*"])
    assert store.count(f"{store.prefix}event-2026-01") == 5097
    rows = read_error_file(r["error_file"])
    assert [(x["id"], x["coupon"], x["line"]) for x in rows] == [("e3", "", ""), ("e5050", "C5050", ""),
                                                                ("", "", "{broken")]
    assert rows[1]["ts"] == "soon" and rows[1]["email"] == "u0@x.io" and "epoch" in rows[1][FAILURE_COLUMN]


def test_s3_parquet_dataset_uses_the_etag(store, s3_server, tmp_path):
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    s3 = boto3.client("s3", endpoint_url=s3_server.info["endpoint_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    bucket = f"ds-{next(_prefixes)}"
    s3.create_bucket(Bucket=bucket)
    local = tmp_path / "p.parquet"
    pq.write_table(pa.table({"k": ["a", "b"], "n": [1, 2], "ok": [True, False]}), local)
    s3.upload_file(str(local), bucket, "exports/p.parquet")
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server.info["endpoint_url"]}}
    spec = parse_spec("s3p", {"source": f"s3://{bucket}/exports/p.parquet", "id_column": "k"})
    assert sync_dataset(spec, store, job_id=job(), storage_options=opts)["result"]["loaded"] == 2
    props = store._request("GET", f"/{alias_name(store.prefix, 's3p')}/_mapping")
    mapping = next(iter(props.values()))["mappings"]["properties"]
    assert (mapping["n"]["type"], mapping["ok"]["type"]) == ("long", "boolean")
    second = sync_dataset(spec, store, job_id=job(), storage_options=opts)
    assert second["changed"] is False and "ETag" in second["reason"]
    pq.write_table(pa.table({"k": ["c"], "n": [3], "ok": [True]}), local)
    s3.upload_file(str(local), bucket, "exports/p.parquet")
    assert sync_dataset(spec, store, job_id=job(), storage_options=opts)["changed"] is True
    assert sorted(rows_of(store, "s3p")) == ["c"]


def _pg(postgres):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres")


def test_postgres_table_with_watermark_changes_deletes_and_adds(store, postgres):
    table = f"orders_{os.getpid()}_{next(_prefixes)}"
    with _pg(postgres) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int primary key, amount numeric(10,2), updated_at timestamptz)")
        cur.execute(f"INSERT INTO {table} VALUES (1, 10, '2026-01-01'), (2, 20, '2026-01-02'), (3, 30, '2026-01-03')")  # noqa: S608 - generated table name
    spec = parse_spec("pgorders", {"source": {"conn_id": "cdp_postgres", "table": f"public.{table}"},
                                   "watermark_column": "updated_at", "id_column": "id", "sync_interval": 3600})
    connect = lambda: _pg(postgres)  # noqa: E731
    first = sync_dataset(spec, store, job_id=job(), connect=connect)
    assert first["result"]["loaded"] == 3
    assert rows_of(store, "pgorders")["2"] == {"id": 2, "amount": 20.0, "updated_at": "2026-01-02T00:00:00+00:00"}
    assert sync_dataset(spec, store, job_id=job(), connect=connect)["reason"].startswith("watermark unchanged")
    with _pg(postgres) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET amount = 11, updated_at = '2026-02-01' WHERE id = 1")  # noqa: S608 - generated table name
        cur.execute(f"DELETE FROM {table} WHERE id = 2")  # noqa: S608 - generated table name
        cur.execute(f"INSERT INTO {table} VALUES (4, 40, '2026-02-02')")  # noqa: S608 - generated table name
    third = sync_dataset(spec, store, job_id=job(), connect=connect)
    assert third["changed"] is True
    rows = rows_of(store, "pgorders")
    assert sorted(rows) == ["1", "3", "4"] and rows["1"]["amount"] == 11.0
    # a failing query: failure with code and message, the previous rows still readable
    with _pg(postgres) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")
    with pytest.raises(FileLevelError):
        sync_dataset(spec, store, job_id=(failing := job()), connect=connect)
    failed = DatasetIndex(store).job(failing)
    assert failed["error_code"] == "source_query_failed" and "does not exist" in failed["error_message"]
    assert sorted(rows_of(store, "pgorders")) == ["1", "3", "4"]
    gone = delete_dataset(store, "pgorders")
    assert gone["removed_indices"] and store._request("HEAD", f"/{alias_name(store.prefix, 'pgorders')}",
                                                      ok_statuses=(404,)) is False
    assert DatasetIndex(store).state("pgorders") == {}


def _event_table(postgres, tmp_path: Path, name: str, columns: str, rows: str, mapping: str) -> tuple[str, Path]:
    """A new table ``name_<pid>_<n>`` with ``columns`` and the ``rows`` (SQL VALUES), and an event mapping file
    (``mapping``: its lines after ``kind``, ``id_column`` and ``identity``)."""
    table = f"{name}_{os.getpid()}_{next(_prefixes)}"
    with _pg(postgres) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} ({columns})")
        cur.execute(f"INSERT INTO {table} VALUES {rows}")  # noqa: S608 - generated table name
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"kind: event\nsource_id: pg-{name}\nid_column: id\nidentity: [email]\n{mapping}")
    return table, path


def test_postgres_query_mapped_to_events_is_incremental(store, postgres, tmp_path):
    table, mapping = _event_table(
        postgres, tmp_path, "clicks", "id text, email text, event text, ts bigint, session_id text",
        "('e1', 'a@x.io', 'click', 1767261600, 's1'), ('e2', 'b@x.io', 'view', 1767265200, 's2')",
        "session_column: session_id\ntime: {column: ts, format: epoch}\nevent_type: {column: event}\n")
    spec = parse_spec("clicks", {"source": {"conn_id": "cdp_postgres", "query": f"select * from {table}"},  # noqa: S608 - generated table name
                                 "watermark_column": "ts", "target": {"kind": "event", "mapping": str(mapping)}})
    connect = lambda: _pg(postgres)  # noqa: E731
    first = sync_dataset(spec, store, job_id=job(), connect=connect)
    assert first["result"]["loaded"] == 2
    store.refresh([f"{store.prefix}event-*"])
    assert store.count(f"{store.prefix}event-2026-01") == 2
    with _pg(postgres) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES ('e3', 'a@x.io', 'buy', 1767268800, 's1')")  # noqa: S608 - generated table name
    second = sync_dataset(spec, store, job_id=job(), connect=connect)
    r = second["result"]  # the rows at or above the watermark: e2 (at it) again, a duplicate, and e3
    assert (r["rows_in"], r["loaded"], r["duplicates"], r["rejected"]) == (2, 1, 1, 0)
    assert second["reason"] == "rows where ts >= 1767265200"
    assert store.count(f"{store.prefix}event-2026-01") == 3
    assert DatasetIndex(store).state("clicks")["markers"]["watermark"] == 1767268800


def test_incremental_sync_reads_rows_at_the_last_watermark_and_says_when_rows_came_below_it(store, postgres,
                                                                                            tmp_path):
    """A row written after a sync with the same watermark as that sync's maximum was never read (the query
    read ``> last``). A row written below it (a transaction that committed late) is not read unless
    ``watermark_lookback`` reaches it, and the sync says so instead of passing over it in silence."""
    table, mapping = _event_table(
        postgres, tmp_path, "orders", "id text, email text, event text, at timestamptz",
        "('o1', 'a@x.io', 'order', '2026-01-05 10:00:00+00'), ('o2', 'b@x.io', 'order', '2026-01-05 11:00:00+00')",
        "time: {column: at, format: iso}\nevent_type: {column: event}\n")
    decl = {"source": {"conn_id": "cdp_postgres", "table": f"public.{table}"}, "watermark_column": "at",
            "target": {"kind": "event", "mapping": str(mapping)}}
    spec = parse_spec("orders", decl)
    connect = lambda: _pg(postgres)  # noqa: E731

    def insert(*rows: str) -> None:
        with _pg(postgres) as conn, conn.cursor() as cur:
            for row in rows:
                cur.execute(f"INSERT INTO {table} VALUES {row}")  # noqa: S608 - generated table name

    def stored() -> int:
        store.refresh([f"{store.prefix}event-*"])
        return store.count(f"{store.prefix}event-2026-01")

    assert sync_dataset(spec, store, job_id=job(), connect=connect)["result"]["loaded"] == 2
    insert("('o3', 'c@x.io', 'order', '2026-01-05 11:00:00+00')")  # the same time as the last maximum
    second = sync_dataset(spec, store, job_id=job(), connect=connect)
    assert second["reason"] == "rows where at >= 2026-01-05T11:00:00+00:00"
    r = second["result"]
    assert (r["rows_in"], r["loaded"], r["duplicates"]) == (2, 1, 1) and stored() == 3
    insert("('o4', 'd@x.io', 'order', '2026-01-05 10:30:00+00')",  # committed late, below the maximum
           "('o5', 'e@x.io', 'order', '2026-01-05 12:00:00+00')")
    third = sync_dataset(spec, store, job_id=job(), connect=connect)
    assert third["result"]["loaded"] == 1 and stored() == 4  # o5 only
    assert third["reason"] == ("rows where at >= 2026-01-05T11:00:00+00:00; 1 row(s) were added below the "
                               "window (at < 2026-01-05T11:00:00+00:00) since the last sync: they are not read "
                               "(raise watermark_lookback, or force a full sync)")
    # With a lookback of an hour and a half, a late row within it is read (and the rows already there are
    # their own duplicates).
    spec = parse_spec("orders", {**decl, "watermark_lookback": 5400})
    insert("('o6', 'f@x.io', 'order', '2026-01-05 11:30:00+00')")
    fourth = sync_dataset(spec, store, job_id=job(), connect=connect)
    assert fourth["reason"] == ("rows where at >= 2026-01-05T10:30:00+00:00 (2026-01-05T12:00:00+00:00 less the "
                                "lookback 5400)")
    r = fourth["result"]  # o4 (10:30, not read before), o3, o2, o6, o5
    assert (r["rows_in"], r["loaded"], r["duplicates"]) == (5, 2, 3) and stored() == 6


def test_incremental_profile_sync_counts_the_rows_read_again_as_duplicates(store, postgres):
    """A profile row read again at the last watermark changes nothing: a duplicate, not written again
    (before, every sync counted it as loaded once more); a changed row is loaded."""
    table = f"crm_{os.getpid()}_{next(_prefixes)}"

    def insert(rows: str) -> None:
        with _pg(postgres) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES {rows}")  # noqa: S608 - generated table name

    with _pg(postgres) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (email text, first_name text, loyalty_points int, changed int)")
    insert("('ann@x.io', 'Ann', 10, 1), ('bob@x.io', 'Bob', 5, 2)")
    spec = parse_spec("crmpg", {"source": {"conn_id": "cdp_postgres", "table": table}, "watermark_column": "changed",
                                "target": {"kind": "profile", "mapping": "demo-profiles.yaml"}})
    connect = lambda: _pg(postgres)  # noqa: E731
    index = store.index("profile")
    assert sync_dataset(spec, store, job_id=job(), connect=connect)["result"]["loaded"] == 2
    bob = store.get(index, profile_id_for("bob@x.io"))
    insert("('dan@x.io', 'Dan', 1, 3)")
    r = sync_dataset(spec, store, job_id=job(), connect=connect)["result"]  # bob (at the watermark) again, dan
    assert (r["rows_in"], r["loaded"], r["duplicates"], r["rejected"]) == (2, 1, 1, 0)
    assert store.get(index, profile_id_for("bob@x.io"))["_seq_no"] == bob["_seq_no"]
    insert("('bob@x.io', 'Bob', 6, 3)")
    r = sync_dataset(spec, store, job_id=job(), connect=connect)["result"]  # dan again; bob's new points
    assert (r["rows_in"], r["loaded"], r["duplicates"], r["rejected"]) == (2, 1, 1, 0)
    assert store.get(index, profile_id_for("bob@x.io"))["_source"]["data"]["loyalty"]["points"] == 6
    store.refresh([index])
    assert store.count(index) == 3


def test_a_load_that_fails_after_writing_leaves_the_previous_version_readable(store, tmp_path, monkeypatch):
    src = tmp_path / "stock.csv"
    src.write_text("sku,qty\na,1\nb,2\n")
    spec = parse_spec("stock", {"source": str(src), "id_column": "sku"})
    sync_dataset(spec, store, job_id=job())
    before = alias_indices(store, alias_name(store.prefix, "stock"))
    src.write_text("sku,qty\na,10\nc,30\nd,40\n")

    # the store stops answering after the new index holds rows: the swap must not happen
    real_refresh = Store.refresh

    def refresh_then_fail(self, indices):
        real_refresh(self, indices)
        if any("-dataset-stock-" in i for i in indices):
            from cdp_ingest.errors import StoreError

            raise StoreError("POST /_refresh still failing after 6 retries (HTTP 503)")

    monkeypatch.setattr(Store, "refresh", refresh_then_fail)
    with pytest.raises(Exception, match="HTTP 503"):
        sync_dataset(spec, store, job_id=(failing := job()))
    monkeypatch.undo()
    assert DatasetIndex(store).job(failing)["error_code"] == "store_unavailable"
    assert alias_indices(store, alias_name(store.prefix, "stock")) == before
    assert sorted(rows_of(store, "stock")) == ["a", "b"] and rows_of(store, "stock")["a"]["qty"] == "1"
    assert versions(store, store.prefix, "stock") == before  # the half-written index was deleted
    # the next sync retries from the source (the markers were not advanced by the failed one)
    again = sync_dataset(spec, store, job_id=job())
    assert again["changed"] is True and sorted(rows_of(store, "stock")) == ["a", "c", "d"]


def test_zip_source_and_gcs_object(store, tmp_path, gcs_server):
    import zipfile

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    archive = tmp_path / "export.csv.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export.csv", "k,v\nx,1\ny,2\n")
    spec = parse_spec("zipped", {"source": str(archive), "id_column": "k"})
    assert sync_dataset(spec, store, job_id=job())["result"]["loaded"] == 2
    assert sorted(rows_of(store, "zipped")) == ["x", "y"]

    client = storage.Client(project="cdp-test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"datasets-{next(_prefixes)}-{os.getpid()}")
    bucket.blob("d/rows.jsonl").upload_from_string(b'{"id": "g1", "n": 1}\n{"id": "g2", "n": 2}\n')
    opts = {"token": "anon", "project": "cdp-test", "endpoint_url": gcs_server.info["endpoint_url"]}
    gspec = parse_spec("gcsrows", {"source": f"gs://{bucket.name}/d/rows.jsonl", "id_column": "id"})
    assert sync_dataset(gspec, store, job_id=job(), storage_options=opts)["result"]["loaded"] == 2
    second = sync_dataset(gspec, store, job_id=job(), storage_options=opts)
    assert second["changed"] is False and "ETag" in second["reason"]
    assert rows_of(store, "gcsrows")["g2"] == {"id": "g2", "n": 2}


def test_csv_url_mapped_to_profiles_goes_through_the_pipeline(store, http_server):
    base, handler = http_server
    handler.files["/crm.csv"] = (b"email,first_name,last_name,loyalty_points\nann@x.io,Ann,Lee,10\n"
                                 b"not-an-email,Bob,Ray,5\nbob@x.io,Bob,Ray,7\n", "Wed, 01 Jan 2026 10:00:00 GMT")
    spec = parse_spec("crm", {"source": f"{base}/crm.csv", "target": {"kind": "profile",
                                                                       "mapping": "demo-profiles.yaml"}})
    done = sync_dataset(spec, store, job_id=job())
    r = done["result"]
    assert (r["rows_in"], r["loaded"], r["rejected"]) == (3, 2, 1)
    assert "not a valid email" in Path(r["error_file"]).read_text()
    store.refresh([store.index("profile")])
    assert store.count(store.index("profile")) == 2
    ledger = store._request("POST", f"/{store.index('ledger')}/_search", body={"query": {"term": {"account": "crm"}}})
    entries = [h["_source"] for h in ledger["hits"]["hits"]]
    assert len(entries) == 1 and entries[0]["status"] == "committed" and entries[0]["source"] == "dataset:crm"
    # unchanged (304): nothing imported again
    assert sync_dataset(spec, store, job_id=job())["changed"] is False
    assert store.count(store.index("profile")) == 2


def test_readers_of_the_alias_see_the_old_rows_or_the_new_rows_never_a_mix(store, tmp_path):
    import threading

    src = tmp_path / "big.csv"
    src.write_text("id,v\n" + "".join(f"{i},old\n" for i in range(50)))
    spec = parse_spec("big", {"source": str(src), "id_column": "id"})
    sync_dataset(spec, store, job_id=job())
    src.write_text("id,v\n" + "".join(f"{i},new\n" for i in range(3000)))
    alias = alias_name(store.prefix, "big")
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            body = {"size": 0, "aggs": {"v": {"terms": {"field": "v"}}}}
            resp = store._request("POST", f"/{alias}/_search", body=body)
            buckets = {b["key"]: b["doc_count"] for b in resp["aggregations"]["v"]["buckets"]}
            seen.append((buckets.get("old", 0), buckets.get("new", 0)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        sync_dataset(spec, store, job_id=job())
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 3 and (50, 0) in seen and seen[-1] == (0, 3000)
    assert set(seen) == {(50, 0), (0, 3000)}  # never half a sync, never old and new rows together


def test_cli_and_client_refuse_a_short_interval_before_calling_the_api(capsys, monkeypatch):
    from cdp_ingest.cli import main
    from cdp_ingest.datasets.client import DatasetsClient

    rc = main(["datasets", "--url", "http://127.0.0.1:9", "create", "x", "--source", "https://h/x.csv",
               "--sync-interval", "899"])
    assert rc == 1 and "sync_interval must be at least 900 seconds" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="at least 900"):
        DatasetsClient("http://127.0.0.1:9", token="t").create("x", "https://h/x.csv", sync_interval=60)
    # no credentials, or an unreachable API: a clear error, not a traceback
    for var in ("CDP_API_TOKEN", "CDP_API_USER", "CDP_API_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert main(["datasets", "--url", "http://127.0.0.1:9", "list"]) == 1
    assert "give a token, or a username and password" in capsys.readouterr().err
    monkeypatch.setenv("CDP_API_TOKEN", "t")
    assert main(["datasets", "--url", "http://127.0.0.1:9", "list"]) == 1
    assert "[unreachable] http://127.0.0.1:9" in capsys.readouterr().err


def test_cli_sends_the_watermark_lookback(capsys, monkeypatch):
    from cdp_ingest.cli import main
    from cdp_ingest.datasets.client import DatasetsClient

    sent: list[tuple[str, str, dict]] = []

    def call(self, method, path, body=None, **_):
        sent.append((method, path, body))
        return {"name": "orders", "job_id": "j1"}

    monkeypatch.setattr(DatasetsClient, "_call", call)
    monkeypatch.setenv("CDP_API_TOKEN", "t")
    rc = main(["datasets", "--url", "http://127.0.0.1:9", "create", "orders", "--conn-id", "cdp_postgres", "--table",
               "public.orders", "--target", "event", "--mapping", "orders.yaml", "--watermark-column", "updated_at",
               "--watermark-lookback", "600", "--no-wait"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["job_id"] == "j1"
    assert sent == [("POST", "/cdp-datasets/api/datasets", {
        "name": "orders", "source": {"conn_id": "cdp_postgres", "table": "public.orders"},
        "target": {"kind": "event", "mapping": "orders.yaml"}, "watermark_column": "updated_at",
        "watermark_lookback": 600.0})]
