"""SFTP manifest imports with their tasks on different hosts (CDP_STAGING_URL): the SFTP DAG runs with
``dag.test()`` and every task instance gets its own, fresh ``CDP_STAGING_DIR`` — before a task starts,
the folders of the tasks before it are moved away, as if they were on other machines, so a local path
in an XCom cannot reach another task's files. The downloaded data file, the manifest, the staged
Parquet file and the error CSVs go through the local S3 server (moto); once the import is reported
the staging bucket is empty again. Against the real sshd, OpenSearch, SMTP sink and webhook."""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sftp_kit import Account, make_account, manifest_bytes
from staging_kit import staging_bucket

from cdp_ingest.errorfile import FAILURE_COLUMN

pytestmark = [pytest.mark.services, pytest.mark.airflow]
LD = datetime(2026, 2, 11, 9, 0, tzinfo=UTC)
TASKS = ["wait_for_manifest", "parse_manifest", "transform", "validate", "load", "finalize"]


class Hosts:
    """Runs each task instance "on another host": its own new ``CDP_STAGING_DIR`` under ``live/``; the
    folders of earlier tasks are moved to ``gone/`` first (kept only to check what a task left behind).
    Before each task it also notes the staging bucket's objects (below the staging URL)."""

    def __init__(self, base: Path, bucket: str, s3) -> None:
        self.live, self.gone = base / "live", base / "gone"
        self.live.mkdir(parents=True)
        self.gone.mkdir(parents=True)
        self.bucket, self.s3 = bucket, s3
        self.started: list[str] = []
        self.bucket_before: dict[str, set[str]] = {}

    def attach(self, dag) -> None:
        for task in dag.tasks:
            before = task.on_execute_callback
            before = list(before) if isinstance(before, list | tuple) else [before] if before else []
            task.on_execute_callback = [*before, self.enter]

    def enter(self, context) -> None:
        task_id = context["ti"].task_id
        for folder in self.live.iterdir():
            folder.rename(self.gone / folder.name)
        own = self.live / f"{len(self.started):02d}-{task_id}"
        own.mkdir()
        os.environ["CDP_STAGING_DIR"] = str(own)  # monkeypatch (set by make_account) restores it
        self.started.append(task_id)
        self.bucket_before[task_id] = {k.removeprefix("staged/") for k in self.keys()}

    def keys(self) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])]

    def left_behind(self) -> list[str]:
        """Files any task left in its local staging folder."""
        return sorted(str(p.relative_to(self.gone.parent)) for p in self.gone.parent.rglob("*") if p.is_file())


@pytest.fixture
def remote(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook, airflow_db, s3_server):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook)
    s3, bucket = staging_bucket(s3_server, monkeypatch, "cdp-sftp-staging", prefix="staged")
    return acc, s3, bucket


def run_on_hosts(acc: Account, hosts: Hosts, when: datetime, *, retries: int | None = None):
    dag = acc.dag()
    dag.deadline = None  # see sftp_kit.Account.run
    hosts.attach(dag)
    if retries is not None:
        for task in dag.tasks:
            task.retries = retries
            task.retry_delay = timedelta(0)
    return dag.test(logical_date=when)


def events_file(n_good: int) -> tuple[str, list[str]]:
    """``n_good`` purchases plus four rows every one of which is rejected (reasons in file order)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Customer ID", "evtName", "Amount", "phone"])
    bad = {3: (["", "Purchase", "1", ""], "no identity: at least one of identity, objectId, fbId, gpId must have "
                                          "a value"),
           10: (["c10", "Purchase", "abc", ""], "column 'Amount': expected INTEGER"),
           20: (["c20", "App Launched", "1", ""], "event name 'App Launched' is a reserved system event and cannot "
                                                 "be imported"),
           30: (["=c30", "Purchase", "1", "12345"], "column 'phone': invalid phone number; expected E.164 ('+' "
                                                   "then 8 to 15 digits, spaces and dashes allowed)")}
    reasons = []
    for i in range(n_good + len(bad)):
        if i in bad:
            w.writerow(bad[i][0])
            reasons.append(bad[i][1])
        else:
            w.writerow([f"c{i}", "Purchase", str(i), "+48 600 100 200" if i % 2 else ""])
    return buf.getvalue(), reasons


COLUMNS = {"Customer ID": {"ctName": "identity"}, "Amount": {"ctName": "amount", "dataType": "INTEGER"}}


def test_sftp_import_with_every_task_on_another_host(remote, tmp_path):
    acc, s3, bucket = remote
    text, reasons = events_file(150)
    acc.write("orders.csv", text)
    acc.write("orders.manifest", manifest_bytes("orders.csv", "event", acc.client_email, COLUMNS))
    acc.upload("orders.csv", "orders.manifest")
    hosts = Hosts(tmp_path / "hosts", bucket, s3)

    dr = run_on_hosts(acc, hosts, LD)
    assert dr.state == "success"
    assert hosts.started == TASKS  # each in its own staging folder, the earlier ones gone
    e = acc.entry("orders.manifest")
    iid = e["import_id"]
    # handed over through S3: what each task found there when it started
    assert hosts.bucket_before["transform"] == {f"{iid}/data.csv", f"{iid}/manifest.json"}
    assert hosts.bucket_before["load"] == {f"{iid}/data.csv", f"{iid}/manifest.json", f"{iid}/staged.parquet",
                                           f"{iid}/transform-errors.csv"}
    assert hosts.bucket_before["finalize"] == {f"{iid}/data.csv", f"{iid}/manifest.json",
                                               f"{iid}/orders.{iid}.errors.csv"}
    assert hosts.keys() == []  # reported, then removed
    assert hosts.left_behind() == []  # no task kept a local copy

    assert (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) == ("done", 154, 150, 4, 0)
    acc.store.refresh([f"{acc.prefix}event-*"])
    assert acc.store.count(f"{acc.prefix}event-*") == 150
    errors = list(csv.DictReader(io.StringIO((acc.folder / "errors" / "orders.errors.csv").read_text())))
    assert [r[FAILURE_COLUMN] for r in errors] == reasons
    assert [r["Customer ID"] for r in errors] == ["", "c10", "c20", "'=c30"]  # neutralised formula
    done = [m for m in acc.emails(acc.client_email) if "imported" in m["Subject"]]
    assert " ".join(done[0]["Subject"].split()) == (
        "[cdp-ingest] orders.manifest: imported, 150 loaded, 4 rejected, 0 duplicates")
    [attachment] = [p for p in done[0].walk() if p.get_filename()]
    assert attachment.get_payload(decode=True) == (acc.folder / "errors" / "orders.errors.csv").read_bytes()
    assert acc.remote_files() == ["errors/orders.errors.csv", "processed/2026-02-11/orders/orders.csv",
                                  "processed/2026-02-11/orders/orders.manifest"]


def test_failed_load_on_another_host_leaves_nothing_and_the_rerun_loads_everything(remote, tmp_path,
                                                                                  monkeypatch):
    """The load dies (the store refuses every bulk request; no retries): the run fails and is reported,
    the bucket and every host are clean. The client sends a new manifest for the same data file: the
    same import (same id, same staging prefix) runs again and loads exactly the file."""
    from cdp_ingest.errors import StoreError
    from cdp_ingest.store import Store

    acc, s3, bucket = remote
    text, reasons = events_file(40)
    acc.write("orders.csv", text)
    acc.write("orders.manifest", manifest_bytes("orders.csv", "event", acc.client_email, COLUMNS))
    acc.write("orders-2.manifest", manifest_bytes("orders.csv", "event", acc.client_email, COLUMNS))
    acc.upload("orders.csv", "orders.manifest")

    def refused(self, payload: bytes, *args, **kw):
        raise StoreError("worker lost its connection")

    first = Hosts(tmp_path / "first", bucket, s3)
    with monkeypatch.context() as m:
        m.setattr(Store, "_send_bulk", refused)
        assert run_on_hosts(acc, first, LD, retries=0).state == "failed"
    assert first.started == TASKS
    failed = acc.entry("orders.manifest")
    assert (failed["status"], failed["error_code"]) == ("failed", "internal")
    iid = failed["import_id"]
    # the load died after fetching from S3; nothing is removed before finalize has reported the failure
    assert first.bucket_before["finalize"] == first.bucket_before["load"] == {
        f"{iid}/data.csv", f"{iid}/manifest.json", f"{iid}/staged.parquet", f"{iid}/transform-errors.csv"}
    assert first.keys() == [] and first.left_behind() == []
    assert acc.store.count(f"{acc.prefix}event-*") == 0
    failure = [r[FAILURE_COLUMN] for r in csv.DictReader(
        io.StringIO((acc.folder / "errors" / "orders.errors.csv").read_text()))]
    assert failure == reasons  # the client got the rows rejected before the load died
    assert "orders.csv" in acc.remote_files()  # an internal error keeps the data file for a new manifest

    acc.upload("orders-2.manifest")
    again = Hosts(tmp_path / "again", bucket, s3)
    assert run_on_hosts(acc, again, LD.replace(minute=5)).state == "success"
    e = acc.entry("orders-2.manifest")
    assert e["import_id"] == iid  # the same import, resumed under the same staging prefix
    assert (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) == ("done", 44, 40, 4, 0)
    acc.store.refresh([f"{acc.prefix}event-*"])
    assert acc.store.count(f"{acc.prefix}event-*") == 40
    assert again.keys() == [] and again.left_behind() == []


def test_load_retried_on_another_host_after_its_commit(remote, tmp_path, monkeypatch):
    """The load commits, then fails removing its staged objects; the retry runs on another host, finds
    the import committed and hands over the error CSV the failed try published. The run succeeds with
    the committed counts, the client gets the error file, and finalize empties the bucket."""
    from cdp_ingest_airflow import staging

    acc, s3, bucket = remote
    text, reasons = events_file(30)
    acc.write("orders.csv", text)
    acc.write("orders.manifest", manifest_bytes("orders.csv", "event", acc.client_email, COLUMNS))
    acc.upload("orders.csv", "orders.manifest")
    real_remove, calls = staging.remove, []

    def remove_fails_once(location):
        calls.append(location)
        if len(calls) == 1:
            raise OSError("staging storage unreachable")
        return real_remove(location)

    monkeypatch.setattr(staging, "remove", remove_fails_once)
    hosts = Hosts(tmp_path / "hosts", bucket, s3)
    assert run_on_hosts(acc, hosts, LD, retries=1).state == "success"
    assert hosts.started == [*TASKS[:5], "load", "finalize"]  # the load twice, on two hosts
    iid = acc.entry("orders.manifest")["import_id"]
    assert calls[0] == f"s3://{bucket}/staged/{iid}/staged.parquet"  # after the commit
    assert f"{iid}/orders.{iid}.errors.csv" in hosts.bucket_before["finalize"]
    e = acc.entry("orders.manifest")
    assert (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) == ("done", 34, 30, 4, 0)
    acc.store.refresh([f"{acc.prefix}event-*"])
    assert acc.store.count(f"{acc.prefix}event-*") == 30
    errors = list(csv.DictReader(io.StringIO((acc.folder / "errors" / "orders.errors.csv").read_text())))
    assert [r[FAILURE_COLUMN] for r in errors] == reasons
    assert hosts.keys() == [] and hosts.left_behind() == []
