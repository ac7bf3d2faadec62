"""A corpus of bad inputs through the engine against the real OpenSearch (issue 12).

Each case asserts a clear file-level error or per-row rejections with their reasons, and that the
accounting holds: rows_in = loaded + rejected + duplicates.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
from cdp_ingest.errors import FileLevelError
from cdp_ingest.ledger import Ledger
from cdp_ingest.mapping import Mapper, Mapping
from cdp_ingest.pipeline import ImportReport, import_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import Store, make_client

pytestmark = pytest.mark.services
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
_prefixes = itertools.count()

ISO_EVENTS = {"kind": "event", "id_column": "id", "identity": ["email"], "time": {"column": "ts", "format": "iso"},
              "event_type": {"value": "visit"},
              "fields": {"seen": {"target": "properties.seen", "type": "DATETIME"}, "note": "properties.note"}}


@pytest.fixture
def store(opensearch):
    s = Store(make_client(opensearch.info["url"]), prefix=f"t-bad{next(_prefixes)}-", chunk_docs=500, backoff=0.01)
    s.ensure_templates()
    yield s
    s._request("DELETE", f"/{s.prefix}*")


def run(store: Store, tmp_path: Path, data: bytes | str, mapping: dict, *, name: str = "in.csv",
        stage: bool = True, **read_kw) -> tuple[ImportReport, list[dict[str, str]]]:
    src = tmp_path / name
    src.write_bytes(data.encode() if isinstance(data, str) else data)
    m = Mapping.from_dict(mapping, name="case")
    rep = import_unit(str(src), lambda: read_batches(src, **read_kw),
                      lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                      store=store, ledger=Ledger(store), work_dir=tmp_path / "work", kind=m.kind, source="bad-input",
                      stage=stage)
    assert rep.status == "committed"
    assert rep.rows_in == rep.loaded + rep.rejected + rep.duplicates
    errors = read_error_file(rep.error_file) if rep.error_file else []
    assert len(errors) == rep.rejected
    return rep, errors


# ---- extreme times ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [True, False], ids=["staged", "streamed"])
def test_out_of_range_iso_times_are_row_rejections(store, tmp_path, stage):
    csv = ("id,email,ts,seen,note\n"
           "a,a@x.io,2025-11-02T10:00:00+01:00,2025-11-01T00:00:00Z,ok\n"
           "b,b@x.io,9999-12-31T23:59:59-01:00,,overflow-late\n"
           "c,c@x.io,0001-01-01T00:00:00+01:00,,overflow-early\n"
           "d,d@x.io,2025-11-03T10:00:00Z,9999-12-31T23:59:59-01:00,datetime-field\n"
           "e,e@x.io,0001-01-01T00:00:00Z,,before-1970\n"
           "f,f@x.io,2025-11-04T10:00:00Z,0001-01-01T00:00:00Z,old-but-valid-field\n")
    rep, errors = run(store, tmp_path, csv, ISO_EVENTS, stage=stage)
    assert (rep.rows_in, rep.loaded, rep.rejected) == (6, 2, 4)
    reasons = {e["id"]: e[FAILURE_COLUMN] for e in errors}
    assert reasons == {
        "b": "column 'ts': datetime out of range (years 1..9999 in UTC)",
        "c": "column 'ts': datetime out of range (years 1..9999 in UTC)",
        "d": "column 'seen': datetime out of range (years 1..9999 in UTC)",
        "e": "column 'ts' (time) out of range (1970..3000)",
    }
    assert [e["note"] for e in errors] == ["overflow-late", "overflow-early", "datetime-field", "before-1970"]
    assert store.count(f"{store.prefix}event-2025-11") == 2
    doc = store.get(f"{store.prefix}event-2025-11", "f")["_source"]
    assert doc["properties"]["seen"] == "0001-01-01T00:00:00+00:00"


def test_out_of_range_strftime_times_are_row_rejections(store, tmp_path):
    mapping = {**ISO_EVENTS, "time": {"column": "ts", "format": "%d/%m/%Y %H:%M %z"}}
    csv = ("id,email,ts,seen,note\n"
           "a,a@x.io,02/11/2025 10:00 +0100,,ok\n"
           "b,b@x.io,31/12/9999 23:59 -0100,,late\n"
           "c,c@x.io,01/01/0001 00:00 +0100,,early\n"
           "d,d@x.io,2025-11-02,,wrong format\n")
    rep, errors = run(store, tmp_path, csv, mapping)
    assert (rep.rows_in, rep.loaded, rep.rejected) == (4, 1, 3)
    assert [e[FAILURE_COLUMN] for e in errors] == [
        "column 'ts': datetime out of range (years 1..9999 in UTC)",
        "column 'ts': datetime out of range (years 1..9999 in UTC)",
        "column 'ts': not a datetime in format %d/%m/%Y %H:%M %z",
    ]


# ---- huge cells and documents -------------------------------------------------------------------------
EVENTS = {"kind": "event", "id_column": "id", "identity": ["email"], "event_type": {"value": "visit"},
          "fields": {"note": "properties.note"}}
PROFILES = {"kind": "profile", "identity": ["email"], "fields": {"note": "traits.note"}}


@pytest.mark.parametrize("stage", [True, False], ids=["staged", "streamed"])
def test_multi_megabyte_cell_rejects_only_its_row(store, tmp_path, stage):
    big = "x" * (8 << 20)
    csv = f"id,email,note\na,a@x.io,small\nb,b@x.io,{big}\nc,c@x.io,also small\n"
    rep, errors = run(store, tmp_path, csv, EVENTS, stage=stage)
    assert (rep.rows_in, rep.loaded, rep.rejected) == (3, 2, 1)
    assert errors[0]["id"] == "b" and len(errors[0]["note"]) == len(big)  # the value is kept for the fix
    assert errors[0][FAILURE_COLUMN] == "column 'note': cell is 8,388,608 bytes, over the limit of 1,048,576"
    index = f"{store.prefix}event-2026-11"  # no time column: the run's time
    assert store.count(index) == 2 and store.get(index, "b") is None


@pytest.mark.parametrize("stage", [True, False], ids=["staged", "streamed"])
def test_document_over_the_store_limit_is_rejected_with_reason(store, tmp_path, stage):
    # each cell passes (and stays under the 32,766-byte term limit of the flat_object bags), two do not
    store.max_cell_bytes, store.max_document_bytes = 40_000, 50_000
    mapping = {**EVENTS, "fields": {"note": "properties.note", "more": "properties.more"}}
    half = "y" * 30_000
    csv = f"id,email,note,more\na,a@x.io,{half},\nb,b@x.io,{half},{half}\nc,c@x.io,ok,ok\n"
    rep, errors = run(store, tmp_path, csv, mapping, stage=stage)
    assert (rep.rows_in, rep.loaded, rep.rejected) == (3, 2, 1)
    assert errors[0]["id"] == "b"
    assert errors[0][FAILURE_COLUMN].startswith("the document is 60,")
    assert errors[0][FAILURE_COLUMN].endswith("bytes, over the store limit of 50,000")
    assert store.count(f"{store.prefix}event-2026-11") == 2


def test_profile_rows_over_the_limit_are_rejected_and_the_profile_kept(store, tmp_path):
    store.max_cell_bytes, store.max_document_bytes = 40_000, 50_000
    part = "z" * 30_000
    mapping = {**PROFILES, "fields": {"note": "traits.note", "more": "traits.more"}}
    csv = (f"email,note,more\na@x.io,first,\nb@x.io,{part},{part}\n"  # one row over the limit
           f"c@x.io,{part},\nc@x.io,,{part}\n")  # two rows that together grow the profile past it
    rep, errors = run(store, tmp_path, csv, mapping)
    assert (rep.rows_in, rep.loaded, rep.rejected) == (4, 1, 3)
    reasons = sorted(e[FAILURE_COLUMN].split(" is ")[0] for e in errors)
    assert reasons == ["the merged profile", "the merged profile", "the row's profile data"]
    assert store.count(store.index("profile")) == 1


# ---- a source that disappears between listing and staging ---------------------------------------------
def test_missing_local_file_is_no_data_file(store, tmp_path):
    src = tmp_path / "listed.csv"  # listed by a sensor/glob, deleted before the import opened it
    m = Mapping.from_dict(EVENTS, name="case")
    with pytest.raises(FileLevelError) as ei:
        import_unit(str(src), lambda: read_batches(src), lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                    store=store, ledger=Ledger(store), work_dir=tmp_path / "work", kind="event", source="bad-input")
    assert ei.value.code == "no_data_file" and str(ei.value) == f"[no_data_file] data file not found: {src}"


def test_object_deleted_before_download_is_no_data_file(tmp_path, s3_server):
    import boto3
    from airflow.sdk import ObjectStoragePath

    from cdp_ingest_airflow.partition_dags import download

    s3 = boto3.client("s3", endpoint_url=s3_server.info["endpoint_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket="bad-input-gone")
    s3.put_object(Bucket="bad-input-gone", Key="day/part-0.parquet", Body=b"PAR1")
    url = "s3://bad-input-gone/day/part-0.parquet"
    path = ObjectStoragePath(url, conn_id="cdp_s3")
    assert [p.name for p in path.parent.iterdir()] == ["part-0.parquet"]  # listed ...
    s3.delete_object(Bucket="bad-input-gone", Key="day/part-0.parquet")  # ... then deleted
    with pytest.raises(FileLevelError) as ei:
        download(ObjectStoragePath(url, conn_id="cdp_s3"), url, tmp_path / "part-0.parquet")
    assert ei.value.code == "no_data_file" and url in ei.value.message
    assert list(tmp_path.iterdir()) == []


def test_sftp_file_deleted_before_download_is_no_data_file(tmp_path, sftp_server):
    import uuid

    import paramiko

    from cdp_ingest_airflow.manifest_operator import download, list_folder

    info = sftp_server.info
    folder = Path(info["landing"]) / f"gone-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "data.csv").write_text("email\na@x.io\n")
    client = paramiko.SSHClient()
    client.load_host_keys(info["known_hosts"])
    client.connect("127.0.0.1", port=sftp_server.port, username=info["login"], look_for_keys=False,
                   allow_agent=False, pkey=paramiko.Ed25519Key.from_private_key_file(info["private_key"]))
    try:
        sftp = client.open_sftp()
        listed = list_folder(sftp, str(folder))
        assert [f.name for f in listed] == ["data.csv"]
        (folder / "data.csv").unlink()  # the client deletes it between listing and download
        with pytest.raises(FileLevelError) as ei:
            download(sftp, str(folder / "data.csv"), tmp_path / "data.csv", size=listed[0].size, limit=1 << 20)
    finally:
        client.close()
    assert ei.value.code == "no_data_file"
    assert ei.value.message == "data file data.csv disappeared before it was downloaded"
    assert not (tmp_path / "data.csv").exists() and not (tmp_path / "data.csv.part").exists()


# ---- the CSV corpus ----------------------------------------------------------------------------------
BAGGED = {**EVENTS, "unmapped": "properties"}


def fails(store: Store, tmp_path: Path, data: bytes | str, mapping: dict = EVENTS, *, name: str = "in.csv",
          **read_kw) -> FileLevelError:
    """The import fails as a whole with a FileLevelError, recorded in the ledger; nothing is loaded."""
    src = tmp_path / name
    src.write_bytes(data.encode() if isinstance(data, str) else data)
    m = Mapping.from_dict(mapping, name="case")
    ledger = Ledger(store)
    with pytest.raises(FileLevelError) as ei:
        import_unit(str(src), lambda: read_batches(src, **read_kw),
                    lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row, store=store, ledger=ledger,
                    work_dir=tmp_path / "work", kind=m.kind, source="bad-input")
    store.refresh([store.index("ledger")])
    failed = store._request("POST", f"/{store.index('ledger')}/_search", body={"query": {"bool": {"filter": [
        {"term": {"status": "failed"}}, {"term": {"path": str(src)}}]}}})["hits"]["hits"]
    assert len(failed) == 1 and failed[0]["_source"]["message"] == f"FileLevelError: {ei.value}"[:2000]
    assert store.count(f"{store.prefix}event-*") == 0
    return ei.value


CSV_ROW_CASES = {
    # name: (file bytes, (rows_in, loaded, rejected), failure descriptions in row order)
    "ragged rows": (b"id,email,note\na,a@x.io\nb,b@x.io,ok,extra\nc,c@x.io,ok\n", (3, 1, 2),
                    ["row 1: expected 3 fields, found 2", "row 2: expected 3 fields, found 4"]),
    "UTF-8 BOM": (b"\xef\xbb\xbfid,email,note\na,a@x.io,ok\n", (1, 1, 0), []),
    "latin-1 bytes": (b"id,email,note\na,a@x.io,caf\xe9\nb,b@x.io,ok\n", (2, 1, 1), ["column 'note': invalid UTF-8"]),
    "header only": (b"id,email,note\n", (0, 0, 0), []),
    "header only, no newline": (b"id,email,note", (0, 0, 0), []),
    "blank lines and CRLF": (b"id,email,note\r\n\r\na,a@x.io,ok\r\n\r\nb,b@x.io,ok\r\n", (2, 2, 0), []),
    "unterminated quote": (b'id,email,note\na,a@x.io,ok\nb,b@x.io,"open\nc,c@x.io,ok\n', (2, 1, 1),
                           ["unterminated quote: a quoted value runs to the end of the file (the lines after it "
                            "were read into it)"]),
    "10k-character identity": (b"id,email,note\na," + b"x" * 10_000 + b"@x.io,ok\nb,b@x.io,ok\n", (2, 1, 1),
                               ["identity value must be shorter than 1024 characters"]),
    "10k-character id": (b"id,email,note\n" + b"y" * 10_000 + b",a@x.io,ok\nb,b@x.io,ok\n", (2, 1, 1),
                         ["column 'id' (id) is longer than 512 characters"]),
    "empty id": (b"id,email,note\n,a@x.io,ok\nb,b@x.io,ok\n", (2, 1, 1), ["column 'id' (id) is empty"]),
    "NUL and control characters": (b"id,email,note\na,a@x.io,x\x00y\x07z\n", (1, 1, 0), []),
}


@pytest.mark.parametrize("case", sorted(CSV_ROW_CASES))
def test_csv_corpus_rows_are_loaded_or_rejected_with_reason(store, tmp_path, case):
    data, counts, reasons = CSV_ROW_CASES[case]
    rep, errors = run(store, tmp_path, data, BAGGED)
    assert (rep.rows_in, rep.loaded, rep.rejected) == counts
    assert [e[FAILURE_COLUMN] for e in errors] == reasons
    if case == "ragged rows":  # no value lost: extra fields stay in the last column
        assert [e["note"] for e in errors] == ["", "ok,extra"]
    store.refresh([f"{store.prefix}event-*"])
    assert store.count(f"{store.prefix}event-*") == rep.loaded


def test_latin1_file_read_as_latin1_loads_every_row(store, tmp_path):
    rep, _ = run(store, tmp_path, "id,email,note\na,a@x.io,café\n".encode("latin-1"), EVENTS, encoding="latin-1")
    assert (rep.rows_in, rep.loaded) == (1, 1)
    assert store.get(f"{store.prefix}event-2026-11", "a")["_source"]["properties"]["note"] == "café"


def test_formula_cells_are_stored_verbatim_and_neutralised_in_the_error_file(store, tmp_path):
    csv = ('id,email,note\n'
           'a,a@x.io,"=HYPERLINK(""http://evil.example"",""x"")"\n'
           ',@SUM(1+1),+cmd|calc\n'  # rejected (no id): every formula cell quoted in the error CSV
           'b,b@x.io,-2+3\n')
    rep, errors = run(store, tmp_path, csv, EVENTS)
    assert (rep.rows_in, rep.loaded, rep.rejected) == (3, 2, 1)
    assert errors == [{"id": "", "email": "'@SUM(1+1)", "note": "'+cmd|calc",
                       FAILURE_COLUMN: "column 'id' (id) is empty"}]
    doc = store.get(f"{store.prefix}event-2026-11", "a")["_source"]
    assert doc["properties"]["note"] == '=HYPERLINK("http://evil.example","x")'  # data, not a formula


def test_duplicate_ids_in_one_file_count_as_duplicates(store, tmp_path):
    rep, errors = run(store, tmp_path, "id,email,note\na,a@x.io,1\na,a@x.io,2\nb,b@x.io,3\n", EVENTS)
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (3, 2, 0, 1) and errors == []


CSV_FILE_CASES = {
    "empty file": (b"", "unreadable", "file is empty: a header row is mandatory"),
    "only newlines": (b"\n\r\n\n", "unreadable", "file is empty: a header row is mandatory"),
    "duplicate columns": (b"id,email,note,note\na,a@x.io,1,2\n", "unreadable",
                          "header row has duplicate column names: 'note'"),
    "empty column names": (b"id,email,,\na,a@x.io,1,2\n", "unreadable",
                           "header row has empty column names at position(s) 3, 4"),
    "binary junk": (random.Random(12).randbytes(5000), "unreadable", "header row is not valid UTF-8"),
    "huge line": (b"id,email,note\na,a@x.io," + b"z" * (65 << 20), "unreadable",
                  "CSV parse error: a row is longer than 67108864 bytes (often an unterminated quote)"),
}


@pytest.mark.parametrize("case", sorted(CSV_FILE_CASES))
def test_csv_corpus_file_level_errors(store, tmp_path, case):
    data, code, message = CSV_FILE_CASES[case]
    err = fails(store, tmp_path, data)
    assert (err.code, err.message) == (code, message)


# ---- gzip --------------------------------------------------------------------------------------------
def test_gzip_bomb_of_one_line_is_refused_early(store, tmp_path):
    bomb = gzip.compress(b"id,email,note\na,a@x.io," + b"0" * (200 << 20) + b"\n", 9)
    assert len(bomb) < 300_000
    err = fails(store, tmp_path, bomb, name="in.csv.gz")
    assert err.code == "too_large" and "inflates more than 250:1" in err.message


def test_gzip_bomb_of_many_rows_is_refused(store, tmp_path):
    row = b"a%d,a@x.io," + b"0" * 60_000 + b"\n"
    bomb = gzip.compress(b"id,email,note\n" + b"".join(row % i for i in range(600)), 9)
    err = fails(store, tmp_path, bomb, name="rows.csv.gz")
    assert err.code == "too_large" and "likely compression bomb" in err.message


def test_gzip_over_the_decompressed_limit_and_truncated_gzip(store, tmp_path):
    body = b"id,email,note\n" + b"".join(b"r%d,u%d@x.io,%d\n" % (i, i, i * 7919) for i in range(20_000))
    err = fails(store, tmp_path, gzip.compress(body), name="big.csv.gz", max_decompressed_bytes=200_000)
    assert err.code == "too_large" and err.message.endswith("inflates to more than 200,000 bytes")
    err = fails(store, tmp_path, gzip.compress(body)[:-200], name="cut.csv.gz")
    assert err.code == "unreadable"
    assert "Compressed file ended before the end-of-stream marker was reached" in err.message
    rep, _ = run(store, tmp_path, gzip.compress(body), EVENTS, name="ok.csv.gz")  # the same file, whole
    assert (rep.rows_in, rep.loaded) == (20_000, 20_000)


# ---- Parquet -----------------------------------------------------------------------------------------
def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


GOOD_PARQUET = _parquet(pa.table({"id": ["a", "b"], "email": ["a@x.io", "b@x.io"], "note": ["1", "2"]}))


@pytest.mark.parametrize(("case", "data", "message"), [
    ("truncated", GOOD_PARQUET[: len(GOOD_PARQUET) // 2], "not a readable Parquet file: Parquet magic bytes not found"),
    ("corrupt footer", GOOD_PARQUET[:-12] + b"\x00" * 8 + b"PAR1", "not a readable Parquet file"),
    ("not Parquet at all", b"id,email\na,a@x.io\n", "not a readable Parquet file"),
], ids=["truncated", "corrupt", "csv-named-parquet"])
def test_parquet_unreadable_files(store, tmp_path, case, data, message):
    err = fails(store, tmp_path, data, name=f"{case.replace(' ', '-')}.parquet")
    assert err.code == "unreadable" and err.message.startswith(message)


def test_parquet_with_a_wrong_schema_is_mapped_as_text_or_rejected_per_row(store, tmp_path):
    table = pa.table({"id": pa.array([1, 2, None], pa.int64()),
                      "email": ["a@x.io", None, "c@x.io"],
                      "note": pa.array([{"k": 1}, {"k": 2}, None], pa.struct([("k", pa.int64())])),
                      "seen": pa.array([datetime(2025, 1, 2, 3, 4, 5), None, None], pa.timestamp("s"))})
    mapping = {**EVENTS, "unmapped": "properties"}
    rep, errors = run(store, tmp_path, _parquet(table), mapping, name="typed.parquet")
    assert (rep.rows_in, rep.loaded, rep.rejected) == (3, 2, 1)
    assert [e[FAILURE_COLUMN] for e in errors] == ["column 'id' (id) is empty"]
    doc = store.get(f"{store.prefix}event-2026-11", "1")["_source"]
    assert doc["properties"]["note"] == '{"k":1}' and doc["properties"]["seen"] == "2025-01-02T03:04:05"
    assert store.get(f"{store.prefix}event-2026-11", "2")["_source"]["profile"] is None  # null identity


def test_parquet_without_the_mapped_columns_rejects_every_row_with_reason(store, tmp_path):
    rep, errors = run(store, tmp_path, _parquet(pa.table({"foo": ["x", "y"]})), EVENTS, name="other.parquet")
    assert (rep.rows_in, rep.loaded, rep.rejected) == (2, 0, 2)
    assert {e[FAILURE_COLUMN] for e in errors} == {"column 'id' (id) is empty"}


# ---- manifests ---------------------------------------------------------------------------------------
def _manifest(**over) -> bytes:
    doc = {"fileName": "a.csv", "type": "event", "clientEmail": "ops@acme.example", **over}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


MANIFEST_CASES = [
    ("not JSON", b"{nope", "is not valid JSON: line 1 column 2: Expecting property name enclosed in double quotes"),
    ("empty", b"", "is empty"),
    ("array", b"[]", "must be a JSON object, not an array"),
    ("UTF-16", _manifest().decode().encode("utf-16"), "is not valid UTF-8 (bad byte at offset 0)"),
    ("latin-1", '{"fileName": "caf\xe9.csv"}'.encode("latin-1"), "is not valid UTF-8 (bad byte at offset 17)"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, "is not valid JSON: nested too deeply"),
    ("5000-digit number", b'{"x": 1' + b"0" * 5000 + b"}", "is not valid JSON: Exceeds the limit (4300 digits)"),
    ("duplicate key", b'{"fileName": "a.csv", "fileName": "b.csv"}', "has duplicate key 'fileName'"),
    ("no fileName", _manifest(fileName=...), ": 'fileName' is missing"),
    ("fileName a number", _manifest(fileName=5), ": 'fileName' must be a string, not a number"),
    ("traversal", _manifest(fileName="../other/a.csv"),
     ": 'fileName' must be a bare file name in the manifest's folder (no '/' or '\\')"),
    ("windows traversal", _manifest(fileName="..\\a.csv"),
     ": 'fileName' must be a bare file name in the manifest's folder (no '/' or '\\')"),
    ("absolute", _manifest(fileName="/etc/passwd"), ": 'fileName' must be a bare file name, not an absolute path"),
    ("dot-dot", _manifest(fileName=".."), ": 'fileName' must not be '.' or '..'"),
    ("NUL in name", _manifest(fileName="a\u0000.csv"),
     ": 'fileName' must not contain NUL or other control characters"),
    ("names a manifest", _manifest(fileName="b.manifest"),
     ": 'fileName' must name the data file, not a manifest (ends in '.manifest')"),
    ("bad type", _manifest(type="purchase"), ": 'type' must be 'event' or 'profile', got 'purchase'"),
    ("bad email", _manifest(clientEmail="nope"), ": 'clientEmail' is not a valid email address"),
    ("columns a list", _manifest(columns=[1]), ": 'columns' must be an object mapping CSV column names to"),
    ("column spec a number", _manifest(columns={"x": 5}), ": column 'x' must map to an object with 'ctName', not a"),
]


@pytest.mark.parametrize(("case", "raw", "message"), MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_malformed_manifests_fail_with_a_clear_message(case, raw, message):
    from cdp_ingest.errors import ManifestError
    from cdp_ingest.manifest import parse_manifest

    with pytest.raises(ManifestError) as ei:
        parse_manifest(raw, "drop.manifest")
    assert ei.value.code == "bad_manifest"
    assert ei.value.message.startswith("manifest drop.manifest")
    assert message in ei.value.message
