"""A corpus of bad inputs through the engine against the real OpenSearch (issue 12).

Each case asserts a clear file-level error or per-row rejections with their reasons, and that the
accounting holds: rows_in = loaded + rejected + duplicates.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file
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
    from cdp_ingest.errors import FileLevelError

    src = tmp_path / "listed.csv"  # listed by a sensor/glob, deleted before the import opened it
    m = Mapping.from_dict(EVENTS, name="case")
    with pytest.raises(FileLevelError) as ei:
        import_unit(str(src), lambda: read_batches(src), lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                    store=store, ledger=Ledger(store), work_dir=tmp_path / "work", kind="event", source="bad-input")
    assert ei.value.code == "no_data_file" and str(ei.value) == f"[no_data_file] data file not found: {src}"


def test_object_deleted_before_download_is_no_data_file(tmp_path, s3_server):
    import boto3
    from airflow.sdk import ObjectStoragePath

    from cdp_ingest.errors import FileLevelError
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

    from cdp_ingest.errors import FileLevelError
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
