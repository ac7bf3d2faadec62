"""SFTP waits that time out (issue 13): a data file whose manifest never came and a manifest whose data
file never came are on the activity log with what is missing, and the client side is told once (webhook
``sftp-wait-timed-out`` + e-mail to the account's contact address) naming the file and the missing part.
Real sshd, OpenSearch, SMTP sink and webhook receiver; real DAG runs (dag.test)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sftp_kit import make_account, manifest_bytes

pytestmark = [pytest.mark.services, pytest.mark.airflow, pytest.mark.slow]


def test_waits_that_time_out_are_recorded_and_notified_once_then_the_import_continues(
        tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook, airflow_db):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook, data_file_grace_seconds=600, sensor_timeout=3)
    acc.write("stray.csv", "identity,evtName\nc1,Login\n")
    acc.write("orders.manifest", manifest_bytes("orders.csv", "event", acc.client_email))
    acc.upload("stray.csv", "orders.manifest")

    for _ in range(2):  # the second timeout must not notify again
        dr = acc.run(datetime.now(UTC))
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        assert states["wait_for_manifest"] == "skipped", states

    entries = {e.get("manifest") or e["file_name"]: e for e in acc.activity()}
    manifest = entries["orders.manifest"]
    assert (manifest["status"], manifest["missing"], manifest["source"]) == ("timed_out", "orders.csv", "sftp")
    steps = [e["step"] for e in manifest["events"]]
    assert steps[0] == "waiting for data file" and "wait timed out" in steps
    stray = entries["stray.csv"]
    assert stray["status"] == "waiting_for_manifest" and "manifest" in stray["missing"]
    assert "wait timed out" in [e["step"] for e in stray["events"]]

    hooks = acc.hooks("sftp-wait-timed-out")
    assert sorted((h["file_name"], h["missing"]) for h in hooks) == [
        ("orders.csv", "orders.csv"), ("stray.csv", "a .manifest naming this file")]
    assert any("orders.manifest" in h["message"] and "waiting for orders.csv" in h["message"] for h in hooks)
    subjects = acc.subjects(acc.contact_email)
    assert sorted(subjects) == ["[cdp-ingest] orders.manifest: not imported yet, waiting for orders.csv",
                                "[cdp-ingest] stray.csv: not imported yet, waiting for a .manifest naming this file"]

    # the data file arrives: the same entry goes on to picked up → done, and no longer says what is missing
    acc.write("orders.csv", "identity,evtName\nc1,Order Placed\nc2,Order Placed\n")
    acc.upload("orders.csv")
    assert acc.run(datetime.now(UTC)).state == "success"
    done = acc.entry("orders.manifest")
    assert (done["status"], done["loaded"], done.get("missing")) == ("done", 2, None)
    statuses = [e["status"] for e in done["events"]]
    assert statuses.index("timed_out") < statuses.index("picked_up") < statuses.index("done")
    assert len(acc.hooks("sftp-wait-timed-out")) == 2
