"""The streaming readers over real remote stores: moto S3, the GCS emulator and the private sshd,
through fsspec URLs (s3://, gs://, sftp://) and through Airflow's ObjectStoragePath."""

from __future__ import annotations

import gzip

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdp_ingest.readers import read_batches, read_csv_header, read_json_lines

pytestmark = pytest.mark.services
CSV = "identity,name,score\n" + "".join(f"u{i},Name {i},{i}\n" for i in range(2500))


def _rows(source, fmt=None, **kw) -> list[dict]:
    out = []
    for sb in read_batches(source, fmt, batch_rows=1000, **kw):
        assert not sb.bad_rows
        out.extend(sb.batch.to_pylist())
    return out


def test_csv_parquet_and_gz_jsonl_from_s3(s3_server, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_server.info["endpoint_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket="readers")
    s3.put_object(Bucket="readers", Key="in/data.csv", Body=CSV.encode())
    table = pa.table({"id": list(range(3000)), "name": [f"n{i}" for i in range(3000)]})
    pq.write_table(table, tmp_path / "d.parquet")
    s3.upload_file(str(tmp_path / "d.parquet"), "readers", "in/d.parquet")
    s3.put_object(Bucket="readers", Key="in/m.jsonl.gz", Body=gzip.compress(b'{"a": 1}\n{"a": 2}\nnot json\n'))
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server.info["endpoint_url"],
                                                                      "region_name": "us-east-1"}}
    rows = _rows("s3://readers/in/data.csv", storage_options=opts)
    assert len(rows) == 2500 and rows[-1] == {"identity": "u2499", "name": "Name 2499", "score": "2499"}
    assert read_csv_header("s3://readers/in/data.csv", storage_options=opts) == ["identity", "name", "score"]
    prows = _rows("s3://readers/in/d.parquet", "parquet", storage_options=opts)
    assert len(prows) == 3000 and prows[2999] == {"id": 2999, "name": "n2999"}
    chunks = list(read_json_lines("s3://readers/in/m.jsonl.gz", storage_options=opts))
    assert [r for c in chunks for r in c.records] == [{"a": 1}, {"a": 2}, None]
    assert any("invalid JSON" in d for c in chunks for d in c.bad_rows.values())


def test_csv_from_gcs_emulator(gcs_server):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="cdp-test", credentials=AnonymousCredentials())
    bucket = client.create_bucket("readers-gcs")
    bucket.blob("in/data.csv").upload_from_string(CSV)
    rows = _rows("gs://readers-gcs/in/data.csv", storage_options={"token": "anon", "project": "cdp-test",
                                                                  "endpoint_url": gcs_server.info["endpoint_url"]})
    assert len(rows) == 2500 and rows[0]["name"] == "Name 0"


def test_csv_over_sftp_url(sftp_server):
    # fsspec's sftp filesystem auto-accepts host keys; DAGs read SFTP through SFTPHook, which verifies them
    from pathlib import Path

    landing = Path(sftp_server.info["landing"])
    (landing / "remote.csv").write_text(CSV)
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(sftp_server.info["private_key"])
    opts = {"port": sftp_server.port, "username": sftp_server.info["login"], "pkey": key,
            "look_for_keys": False, "allow_agent": False}
    # the path is the absolute landing path (internal-sftp without chroot)
    rows = _rows(f"sftp://127.0.0.1{landing / 'remote.csv'}", storage_options=opts)
    assert len(rows) == 2500


def test_object_storage_path_from_airflow_connection(s3_server):
    from airflow.sdk import ObjectStoragePath

    s3 = boto3.client("s3", endpoint_url=s3_server.info["endpoint_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket="readers-osp")
    s3.put_object(Bucket="readers-osp", Key="x/data.csv", Body=CSV.encode())
    path = ObjectStoragePath("s3://readers-osp/x/data.csv", conn_id="cdp_s3")
    assert len(_rows(path)) == 2500
    with path.open("rb") as fh:  # an open file object is read, and left open for its owner
        assert len(_rows(fh, "csv")) == 2500
        assert not fh.closed
