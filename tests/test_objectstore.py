"""``cdp_ingest_airflow.objectstore``: an s3:// (or gs://) path through an Airflow connection reads,
lists and writes like ``ObjectStoragePath``, without importing every installed provider's filesystem
and asset modules (google-cloud-storage, grpc: ~40 MB per task process that only reads S3).

Each check runs in a fresh interpreter (this test process may already hold those modules), against the
local S3 server and the GCS emulator."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from test_partition_e2e import _create_bucket

pytestmark = [pytest.mark.services, pytest.mark.airflow]
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    from airflow.sdk import ObjectStoragePath
    from cdp_ingest_airflow.objectstore import Readable, object_path, open_path
    mode, base, conn_id = sys.argv[1:4]
    if mode == "helper":
        with open_path(object_path(base + "/in/a.txt", conn_id)) as fh:
            data = fh.read().decode()
        names = sorted(p.name for p in object_path(base + "/in/", conn_id).iterdir())
        with open_path(object_path(base + "/out/b.txt", conn_id), "wb") as out:
            out.write(b"written " + data.encode())
        back = object_path(base + "/out/b.txt", conn_id).read_bytes().decode()
        from cdp_ingest.readers import open_source  # as the replay DAG reads an archive
        with open_source(Readable(object_path(base + "/in/c.txt.gz", conn_id))) as fh:
            data += "+" + fh.read().decode()
    else:  # Airflow's own route, the control
        with ObjectStoragePath(base + "/in/a.txt", conn_id=conn_id).open("rb") as fh:
            data = fh.read().decode()
        names, back = [], ""
    heavy = sorted(m for m in sys.modules if m in ("grpc", "googleapiclient", "google.cloud.storage",
                                                   "airflow.providers.amazon.aws.fs.s3",
                                                   "airflow.providers.google.cloud.fs.gcs"))
    print(json.dumps({"data": data, "names": names, "back": back, "heavy": heavy}))
""")


def _run(mode: str, base: str, conn_id: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")])}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, base, conn_id], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _put(kind: str, bucket: str, key: str, data: bytes) -> None:
    if kind == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        S3Hook(aws_conn_id="cdp_s3").load_bytes(data, key=key, bucket_name=bucket, replace=True)
    else:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="cdp-test", credentials=AnonymousCredentials())
        client.bucket(bucket).blob(key).upload_from_string(data)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_object_path_reads_lists_and_writes_with_only_its_own_provider(request, kind):
    request.getfixturevalue("s3_server" if kind == "s3" else "gcs_server")
    bucket = f"cdp-objstore-{kind}-{uuid.uuid4().hex[:8]}"
    _create_bucket(kind, bucket)
    _put(kind, bucket, "in/a.txt", b"hello")
    _put(kind, bucket, "in/c.txt", b"other")
    _put(kind, bucket, "in/c.txt.gz", gzip.compress(b"gunzipped"))
    scheme, conn_id = ("s3", "cdp_s3") if kind == "s3" else ("gs", "cdp_gcs")

    got = _run("helper", f"{scheme}://{bucket}", conn_id)
    assert (got["data"], got["names"], got["back"]) == ("hello+gunzipped", ["a.txt", "c.txt", "c.txt.gz"],
                                                        "written hello")
    if kind == "s3":  # the S3 task process never imports the Google provider's modules
        assert got["heavy"] == ["airflow.providers.amazon.aws.fs.s3"]
    else:
        assert "airflow.providers.amazon.aws.fs.s3" not in got["heavy"]
        assert "airflow.providers.google.cloud.fs.gcs" in got["heavy"]

    if kind == "s3":  # the control: Airflow's route imports every provider's modules for the same read
        control = _run("airflow", f"{scheme}://{bucket}", conn_id)
        assert control["data"] == "hello"
        assert {"grpc", "google.cloud.storage", "airflow.providers.google.cloud.fs.gcs"} <= set(control["heavy"])
