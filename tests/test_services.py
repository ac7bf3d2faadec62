"""The services harness: every real local service starts, answers, and is reached through the
same Airflow connections the DAGs use."""

from __future__ import annotations

import json
import mailbox
import os
import smtplib
import subprocess
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

from devservices import Harness, ServiceError, _alive

pytestmark = pytest.mark.services


def test_opensearch_index_and_read_back_through_airflow_connection(opensearch):
    from airflow.providers.opensearch.hooks.opensearch import OpenSearchHook

    client = OpenSearchHook(open_search_conn_id="cdp_opensearch", log_query=False).client
    doc = {"id": "smoke-1", "data": {"pii": {"firstname": "Ada"}}}
    client.index(index="cdp-smoke", id="smoke-1", body=doc, refresh=True)
    got = client.get(index="cdp-smoke", id="smoke-1")
    assert got["_source"] == doc
    assert client.info()["version"]["number"] == opensearch.info["version"]
    client.indices.delete(index="cdp-smoke")


def _sftp(svc, commands: str, known_hosts: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sftp", "-b", "-", "-P", str(svc.port), "-i", svc.info["private_key"],
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
         f"{svc.info['login']}@127.0.0.1"],
        input=commands, capture_output=True, text=True, timeout=30)


def test_sftp_put_with_real_client_and_read_with_airflow_hook(sftp_server, tmp_path):
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    src = tmp_path / "upload.csv"
    src.write_text("identity,name\n1,Ada\n")
    r = _sftp(sftp_server, f"put {src} upload.csv\n", sftp_server.info["known_hosts"])
    assert r.returncode == 0, r.stderr
    hook = SFTPHook(ssh_conn_id="cdp_sftp")
    assert "upload.csv" in hook.list_directory(".")
    hook.retrieve_file("upload.csv", str(tmp_path / "back.csv"))
    assert (tmp_path / "back.csv").read_text() == src.read_text()
    hook.delete_file("upload.csv")


def test_sftp_refuses_unknown_host_key(sftp_server, tmp_path):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    r = _sftp(sftp_server, "ls\n", str(wrong))
    assert r.returncode != 0
    assert "host key" in r.stderr.lower()


def test_s3_round_trip_through_aws_connection(s3_server):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="cdp_s3")
    hook.create_bucket("cdp-smoke")
    hook.load_string("hello", key="dt=2026-11-23/_SUCCESS", bucket_name="cdp-smoke")
    assert hook.read_key("dt=2026-11-23/_SUCCESS", "cdp-smoke") == "hello"
    assert hook.list_keys("cdp-smoke", prefix="dt=") == ["dt=2026-11-23/_SUCCESS"]


def test_gcs_round_trip_against_emulator(gcs_server):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="cdp-test", credentials=AnonymousCredentials())
    bucket = client.create_bucket("cdp-smoke")
    bucket.blob("dt=2026-11-23/_SUCCESS").upload_from_string(b"")
    assert [b.name for b in client.list_blobs("cdp-smoke")] == ["dt=2026-11-23/_SUCCESS"]
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_server.info["endpoint_url"]


def test_postgres_through_airflow_connection(postgres):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id="cdp_postgres")
    hook.run("CREATE TABLE IF NOT EXISTS smoke (id int primary key, email text)")
    hook.run("INSERT INTO smoke VALUES (1, 'a@example.com') ON CONFLICT DO NOTHING")
    assert hook.get_records("SELECT id, email FROM smoke") == [(1, "a@example.com")]


def test_smtp_sink_stores_messages(smtp_sink):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "cdp@localhost", "client@example.com", "smoke"
    msg.set_content("hello")
    with smtplib.SMTP("127.0.0.1", smtp_sink.port, timeout=10) as s:
        s.send_message(msg)
    subjects = [m["Subject"] for m in mailbox.Maildir(smtp_sink.info["maildir"], create=False)]
    assert "smoke" in subjects


def _post(url: str, body: bytes, token: str | None) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_webhook_receiver_enforces_auth_and_stores_json(webhook):
    url, token = webhook.info["url"] + "/notify", webhook.info["token"]
    assert _post(url, b'{"status": "x"}', None) == 401
    assert _post(url, b"not json", token) == 400
    assert _post(url, json.dumps({"status": "success", "rows": 3}).encode(), token) == 200
    stored = [json.loads(p.read_text()) for p in sorted(Path(webhook.info["inbox"]).glob("*.json"))]
    assert {"path": "/notify", "body": {"status": "success", "rows": 3}} in stored


def test_failed_start_reports_log_tail_and_stop_is_by_pid(tmp_path, monkeypatch):
    import devservices

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    script = fake_bin / "moto_server"
    script.write_text("#!/bin/sh\necho 'boom: cannot bind' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setattr(devservices, "VENV_BIN", fake_bin)
    h = Harness(tmp_path / "run")
    with pytest.raises(ServiceError, match=r"(?s)s3 exited with code 3.*boom: cannot bind"):
        h.start(["s3"])

    h2 = Harness(tmp_path / "run2")
    svc = h2.start(["webhook"])["webhook"]
    assert _alive(svc.pid)
    Harness(tmp_path / "run2").stop()  # a second harness object finds the PID in state.json
    assert not _alive(svc.pid)
