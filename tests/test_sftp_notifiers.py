"""Client notifications (SPEC §2): content, the "still processing" deadline alerts and their callback,
the run-failure safety net — against the real SMTP sink and webhook receiver."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from pathlib import Path

import pytest
from sftp_kit import make_account

from cdp_ingest_airflow.activity import ActivityLog
from cdp_ingest_airflow.connections import store_from_connection
from cdp_ingest_airflow.notifiers import attachable, compose, on_run_failure, still_processing

ROOT = Path(__file__).resolve().parents[1]


def test_every_account_dag_has_still_processing_alerts_every_two_hours():
    from airflow.sdk import AsyncCallback
    from airflow.sdk.definitions.deadline import DagRunQueuedAtDeadline

    from cdp_ingest_airflow.sftp_dags import build_all

    dags = build_all(ROOT / "config" / "sftp_accounts.yaml")
    assert set(dags) == {"sftp_import_acme", "sftp_import_globex"}
    for dag in dags.values():
        alerts = dag.deadline
        assert [a.interval for a in alerts] == [timedelta(hours=h) for h in range(2, 24, 2)]
        assert all(isinstance(a.reference, DagRunQueuedAtDeadline) for a in alerts)
        assert all(isinstance(a.callback, AsyncCallback) for a in alerts)
        assert {a.callback.path for a in alerts} == {"cdp_ingest_airflow.notifiers.still_processing"}
        assert [a.callback.kwargs["hours"] for a in alerts] == list(range(2, 24, 2))
        assert dag.dagrun_timeout == timedelta(hours=24) and dag.max_active_runs == 1
        assert isinstance(dag.on_failure_callback, functools.partial)  # plain function, not a BaseNotifier


def test_account_config_rules():
    from cdp_ingest_airflow.sftp_dags import account_config

    cfg = account_config("acme", {"folder": "/clients/acme/"}, {"settle_seconds": 5})
    assert (cfg["folder"], cfg["settle_seconds"], cfg["still_processing_hours"]) == ("clients/acme", 5, 2)
    assert account_config("globex", None)["folder"] == "globex"
    for name, raw, problem in [("acme", {"folder": "../etc"}, "inside the SFTP root"),
                               ("acme", {"foldr": "x"}, "unknown keys"),
                               ("ac me", {}, "letters, digits"),
                               ("acme", {"still_processing_hours": 30}, "still_processing_hours")]:
        with pytest.raises(ValueError, match=problem):
            account_config(name, raw)


def test_content_is_escaped_and_says_what_to_do():
    entry = {"id": "a1", "account": "acme", "manifest": "<b>x</b>.manifest", "file_name": "<script>.csv",
             "type": "event", "rows_in": 10, "loaded": 7, "rejected": 3, "duplicates": 0,
             "error_file": "acme/errors/x.errors.csv", "error_code": "no_data_file", "message": "no data file found"}
    subject, body = compose("succeeded", entry, attachment="/tmp/x.errors.csv")
    assert subject == "[cdp-ingest] <b>x</b>.manifest: imported, 7 loaded, 3 rejected, 0 duplicates"
    assert "<script>" not in body and "&lt;script&gt;.csv" in body
    assert "attached as <code>x.errors.csv</code>" in body
    subject, body = compose("failed", entry)
    assert subject.endswith("import failed (no data file)") and "Upload the data file named" in body
    subject, _ = compose("still_processing", entry, hours=4)
    assert subject.endswith("still processing after 4 h")
    with pytest.raises(ValueError):
        compose("exploded", entry)


def test_failure_email_names_only_the_files_that_moved():
    base = {"id": "a1", "account": "acme", "manifest": "ev.manifest", "file_name": "ev.csv", "type": "event",
            "archived_to": "acme/failed/2026-02-10/ev.1234abcd"}
    _, body = compose("failed", {**base, "error_code": "manifest_reused", "message": "name taken",
                                 "archived_files": ["ev.manifest"]})
    assert "uploaded files were moved" not in body and "The files were moved" not in body
    assert ("Only the manifest was moved to <code>acme/failed/2026-02-10/ev.1234abcd/</code> in your SFTP folder; "
            "the data file <b>ev.csv</b> was not moved and stays in the folder.") in body
    _, body = compose("failed", {**base, "error_code": "no_data_file", "message": "no data file",
                                 "archived_files": ["ev.manifest"]})
    assert "Only the manifest was moved to <code>acme/failed/2026-02-10/ev.1234abcd/</code>" in body
    assert "ev.csv</b> was not moved" not in body
    _, body = compose("failed", {**base, "error_code": "too_large", "message": "too big",
                                 "archived_files": ["ev.csv", "ev.manifest"]})
    assert "The manifest and the data file <b>ev.csv</b> were moved to" in body


def test_big_error_files_are_attached_gzipped(tmp_path):
    small = tmp_path / "s.errors.csv"
    small.write_text("a,Failure Description\n1,x\n")
    assert attachable(str(small)) == str(small)
    big = tmp_path / "b.errors.csv"
    big.write_text("a,Failure Description\n" + "1,column 'a': expected INTEGER\n" * 50_000)
    got = attachable(str(big), max_bytes=200_000)
    assert got.endswith("b.errors.csv.gz") and Path(got).stat().st_size < 200_000
    assert attachable(str(big), max_bytes=100) is None and attachable(None) is None


@pytest.mark.services
def test_still_processing_callback_and_run_failure_net(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink,
                                                       webhook):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook)
    activity = ActivityLog(store_from_connection("cdp_opensearch"))
    run_id = "scheduled__2026-02-10T09:00:00+00:00"
    activity.update("e1", account=acc.name, manifest="slow.manifest", file_name="slow.csv", type="event",
                    status="processing", dag_id=acc.dag_id, run_id=run_id, client_email=acc.client_email)
    # what the triggerer passes to an AsyncCallback of a missed deadline
    context = {"dag_run": {"dag_id": acc.dag_id, "dag_run_id": run_id, "state": "running"},
               "deadline": {"id": "d1", "deadline_time": "2026-02-10T11:00:00+00:00"}}

    assert asyncio.run(still_processing(context, hours=2)) == "sent"
    assert asyncio.run(still_processing(context, hours=2)) == "already sent"  # a retried callback
    assert asyncio.run(still_processing(context, hours=4)) == "sent"
    assert sorted(acc.subjects(acc.client_email)) == ["[cdp-ingest] slow.manifest: still processing after 2 h",
                                              "[cdp-ingest] slow.manifest: still processing after 4 h"]
    assert [(h["hours"], h["status"]) for h in acc.hooks("sftp-still-processing")] == [(2, "processing"),
                                                                                      (4, "processing")]

    # the DagRun object a DAG-level failure callback gets
    Run = type("Run", (), {"dag_id": acc.dag_id, "run_id": run_id})

    on_run_failure({"dag_run": Run()})
    e = activity.get("e1")
    assert (e["status"], e["error_code"]) == ("failed", "internal")
    assert "[cdp-ingest] slow.manifest: import failed (internal)" in acc.subjects(acc.client_email)
    assert asyncio.run(still_processing(context, hours=6)) == "nothing in progress"
    on_run_failure({"dag_run": Run()})  # already reported: nothing more
    assert len(acc.emails(acc.client_email)) == 3
