"""The SFTP import DAG end to end (SPEC §2): real sftp client → real sshd → Airflow (dag.test) →
real OpenSearch, SMTP sink and webhook receiver."""

from __future__ import annotations

import csv
import io
import threading
import time
from datetime import UTC, datetime

import pytest
from sftp_kit import Account, make_account, manifest_bytes

from cdp_ingest.errorfile import FAILURE_COLUMN
from cdp_ingest.mapping import profile_id_for

pytestmark = [pytest.mark.services, pytest.mark.airflow]

LD = datetime(2026, 2, 10, 9, 0, tzinfo=UTC)  # logical date of the runs: the default event time


@pytest.fixture
def account(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook, airflow_db) -> Account:
    return make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                        webhook=webhook)


def profile(acc: Account, identity: str) -> dict:
    found = acc.store.get(f"{acc.prefix}profile", profile_id_for(identity))
    assert found, f"no profile for {identity}"
    return found["_source"]


def error_rows(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


PROFILE_COLUMNS = {"Customer ID": {"ctName": "identity"}, "Score": {"ctName": "score", "dataType": "INTEGER"}}


def test_profiles_and_events_in_upload_order(account):
    acc = account
    acc.write("p1.csv", "Customer ID,Name,Email,Score,tags,tags.operation,nickname,nickname.operation,"
                        "MSG-email,MSG-sms\n"
                        "c1,Ada,ada@example.com,10,vip,$add,Addy,,Y,N\n"
                        "c1,,,,beta,$add,,,,\n"
                        "c2,Grace,grace@example.com,20,vip,$add,Gee,,N,\n"
                        "c3,Alan,alan@example.com,5,,,,,,\n")
    acc.write("p1.manifest", manifest_bytes("p1.csv", "profile", acc.client_email, PROFILE_COLUMNS))
    acc.write("p2.csv", "Customer ID,tags,tags.operation,nickname,nickname.operation,Score\n"
                        "c1,vip,$remove,,$delete,11\n"
                        "c2,vip,$add,,,\n"
                        "c3,new,$add,,,\n")
    acc.write("p2.manifest", manifest_bytes("p2.csv", "profile", acc.client_email, PROFILE_COLUMNS))
    acc.write("e1.csv", "Customer ID,evtName,When,Amount,sku\n"
                        "c1,Product Viewed,1764547200,,A-1\n"
                        "c1,Charged,1767225600,19.99,A-1\n"
                        "c2,Charged,,5,B-2\n")
    acc.write("e1.manifest", manifest_bytes("e1.csv", "event", acc.client_email, {
        "Customer ID": {"ctName": "identity"}, "When": {"ctName": "ts"},
        "Amount": {"ctName": "amount", "dataType": "FLOAT"}}))
    # The later profile file undoes part of the first: only upload order gives the expected result.
    acc.upload("p1.csv", "p1.manifest", "p2.csv", "p2.manifest", "e1.csv", "e1.manifest", gap=1.1)

    for minute in range(3):
        dr = acc.run(LD.replace(minute=minute))
        assert dr.state == "success"

    c1, c2, c3 = (profile(acc, c) for c in ("c1", "c2", "c3"))
    assert c1["traits"] == {"tags": ["beta"], "score": 11}  # $add, $add, then $remove and $delete
    assert c1["data"]["pii"]["name"] == "Ada" and c1["data"]["contact"]["email"] == "ada@example.com"
    assert c1["data"]["identifier"]["id"] == "c1"
    assert c1["data"]["preferences"]["messaging"] == {"email": True, "sms": False}
    assert c1["consents"]["messaging-email"] == {"revoke": None}
    assert c1["consents"]["messaging-sms"]["revoke"].startswith("2026-02-10T09:00")
    assert c2["traits"] == {"tags": ["vip"], "score": 20, "nickname": "Gee"}  # a second $add is a no-op
    assert c3["traits"] == {"tags": ["new"], "score": 5}
    assert acc.store.count(f"{acc.prefix}profile") == 3

    # events: monthly index by their own ts; no ts = the run's logical date (not the wall clock)
    assert acc.store.count(f"{acc.prefix}event-2025-12") == 1
    assert acc.store.count(f"{acc.prefix}event-2026-01") == 1
    feb = acc.store._request("POST", f"/{acc.prefix}event-2026-02/_search", body={})["hits"]["hits"]
    assert len(feb) == 1
    ev = feb[0]["_source"]
    assert ev["type"] == "charged" and ev["profile"]["id"] == profile_id_for("c2")
    assert ev["metadata"]["time"]["create"].startswith("2026-02-10T09:02")
    assert ev["properties"] == {"amount": 5.0, "sku": "B-2"}

    # archived, nothing left in the drop folder, no error files
    day = "2026-02-10"
    assert acc.remote_files() == sorted(f"processed/{day}/{m}/{m}.{ext}" for m in ("p1", "p2", "e1")
                                        for ext in ("csv", "manifest"))
    # activity log and notifications
    entries = {e["manifest"]: e for e in acc.activity()}
    assert {m: (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) for m, e in entries.items()} \
        == {"p1.manifest": ("done", 4, 4, 0, 0), "p2.manifest": ("done", 3, 2, 0, 1),  # c2's $add changes nothing
            "e1.manifest": ("done", 3, 3, 0, 0)}
    assert all(e["seconds"] > 0 and e["finished_at"] and e["import_id"] for e in entries.values())
    subjects = acc.subjects(acc.client_email)
    assert len(subjects) == 6
    assert "[cdp-ingest] p1.manifest: picked up, importing p1.csv" in subjects
    assert "[cdp-ingest] e1.manifest: imported, 3 loaded, 0 rejected, 0 duplicates" in subjects
    assert "[cdp-ingest] p2.manifest: imported, 2 loaded, 0 rejected, 1 duplicates" in subjects
    done = acc.hooks("sftp-succeeded")
    assert [(h["manifest"], h["loaded"]) for h in done] == [("p1.manifest", 4), ("p2.manifest", 2),
                                                             ("e1.manifest", 3)]
    assert len(acc.hooks("sftp-picked-up")) == 3

    # a run with nothing to do ends skipped, and changes nothing
    dr = acc.run(LD.replace(minute=30))
    assert dr.state == "success"
    assert len(acc.subjects()) == 6


def test_rejected_rows_go_to_the_error_file_and_the_email(account):
    acc = account
    props = [f"p{i}" for i in range(1, 106)]
    header = ["identity", "evtName", "Amount", "phone", *props]

    def row(identity="c1", name="Purchase", amount="1", phone="", n_props=2, first="x"):
        values = [first] + ["v"] * (n_props - 1) if n_props else []
        return [identity, name, amount, phone, *values, *[""] * (len(props) - n_props)]

    rows = [
        row(),                                              # 1 ok
        row(amount="abc"),                                  # 2 wrong type
        row(identity=""),                                   # 3 missing identity
        row(n_props=101),                                   # 4 > 100 event properties (102 with Amount)
        row(name="App Launched"),                           # 5 reserved system event
        row(phone="12345"),                                 # 6 invalid phone number
        row(first="=HYPERLINK(\"http://x\")"),              # 7 ok: formulas only matter in the error file
        row(identity="=cmd|' /C calc'!A0", amount="1.5"),   # 8 wrong type, with a formula-like cell
        row(n_props=97, phone="+48 600-100-200"),           # 9 ok: 97 + Amount + phone = 99 properties
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    acc.write("big.csv", buf.getvalue())
    acc.write("big.manifest", manifest_bytes("big.csv", "event", acc.client_email,
                                             {"Amount": {"ctName": "Amount", "dataType": "INTEGER"}}))
    acc.upload("big.csv", "big.manifest")
    dr = acc.run(LD)
    assert dr.state == "success"  # row-level failures never stop the file

    assert acc.store.count(f"{acc.prefix}event-2026-02") == 3
    errors = error_rows(acc.folder / "errors" / "big.errors.csv")
    assert list(errors[0])[:4] == ["identity", "evtName", "Amount", "phone"]
    assert list(errors[0])[-1] == FAILURE_COLUMN and len(errors[0]) == len(header) + 1
    reasons = [r[FAILURE_COLUMN] for r in errors]
    assert reasons == [
        "column 'Amount': expected INTEGER",
        "no identity: at least one of identity, objectId, fbId, gpId must have a value",
        "event has 102 properties; at most 100 are allowed",
        "event name 'App Launched' is a reserved system event and cannot be imported",
        "column 'phone': invalid phone number; expected E.164 ('+' then 8 to 15 digits, spaces and dashes allowed)",
        "column 'Amount': expected INTEGER, got a fraction",
    ]
    assert errors[-1]["identity"] == "'=cmd|' /C calc'!A0"  # neutralised against formula injection
    assert errors[0]["p1"] == "x"  # original values kept

    e = acc.entry("big.manifest")
    assert (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) == ("done", 9, 3, 6, 0)
    assert e["error_file"] == f"{acc.name}/errors/big.errors.csv"
    done = [m for m in acc.emails(acc.client_email) if "imported" in m["Subject"]]
    assert len(done) == 1
    assert " ".join(done[0]["Subject"].split()) == (
        "[cdp-ingest] big.manifest: imported, 3 loaded, 6 rejected, 0 duplicates")
    attachments = [p for p in done[0].walk() if p.get_filename()]
    assert [a.get_filename() for a in attachments] == ["big.errors.csv"]
    assert attachments[0].get_payload(decode=True) == (acc.folder / "errors" / "big.errors.csv").read_bytes()
    [hook] = acc.hooks("sftp-succeeded")
    assert (hook["rejected"], hook["error_file"]) == (6, f"{acc.name}/errors/big.errors.csv")
    assert "identity" not in hook and acc.client_email not in str(hook)  # no row values, no address


def test_file_level_failures(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook, airflow_db):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook, max_file_bytes=300)
    acc.write("broken.manifest", b'{"fileName": "a.csv", "type": "event",')
    acc.write("lonely.manifest", manifest_bytes("missing.csv", "profile", acc.client_email))
    acc.write("huge.csv", "identity,evtName,note\n" + "c1,Purchase,xxxxxxxxxxxxxxxxxxxxxxxx\n" * 20)
    acc.write("huge.manifest", manifest_bytes("huge.csv", "event", acc.client_email))
    acc.write("mism.csv", "identity,evtName\nc1,Purchase\n")
    acc.write("mism.manifest", manifest_bytes("mism.csv", "event", acc.client_email, {"Price": {"ctName": "price"}}))
    acc.upload("broken.manifest", "lonely.manifest", "huge.csv", "huge.manifest", "mism.csv", "mism.manifest",
               gap=1.1)

    for minute in range(4):
        assert acc.run(LD.replace(minute=minute)).state == "failed"

    entries = {e["manifest"]: e for e in acc.activity() if e.get("manifest")}
    assert {m: (e["status"], e["error_code"]) for m, e in entries.items()} == {
        "broken.manifest": ("failed", "bad_manifest"), "lonely.manifest": ("failed", "no_data_file"),
        "huge.manifest": ("failed", "too_large"), "mism.manifest": ("failed", "bad_manifest")}
    assert entries["broken.manifest"]["message"] == (
        "manifest broken.manifest is not valid JSON: line 1 column 39: "
        "Expecting property name enclosed in double quotes")
    assert entries["lonely.manifest"]["message"] == (
        "no data file found: missing.csv (named by manifest lonely.manifest) is not in the folder")
    assert entries["huge.manifest"]["message"] == "file too large: huge.csv is 762 bytes, the limit is 300 bytes"
    assert "mapped columns missing from the header: 'Price'" in entries["mism.manifest"]["message"]

    # the unreadable manifest has no clientEmail: the account's contact gets the failure
    [to_ops] = acc.emails(acc.contact_email)
    assert " ".join(to_ops["Subject"].split()) == "[cdp-ingest] broken.manifest: import failed (bad manifest)"
    body = to_ops.get_payload()[0].get_payload(decode=True).decode()
    assert "not valid JSON" in body and "Correct the manifest" in body
    client = acc.subjects(acc.client_email)
    assert "[cdp-ingest] lonely.manifest: import failed (no data file)" in client
    assert "[cdp-ingest] huge.manifest: import failed (too large)" in client
    assert [h["error_code"] for h in acc.hooks("sftp-failed")] == ["bad_manifest", "no_data_file", "too_large",
                                                                    "bad_manifest"]
    # manifests go to failed/; a file too large goes with its manifest, a data file whose manifest was
    # wrong stays for a corrected manifest (and shows as waiting for one)
    files = acc.remote_files()
    assert [f.rsplit("/", 1)[-1] for f in files if f.startswith("failed/")] == sorted(
        ["broken.manifest", "lonely.manifest", "huge.manifest", "huge.csv", "mism.manifest"],
        key=lambda n: [f for f in files if f.endswith("/" + n)][0])
    assert "mism.csv" in files and not any(f.endswith(".manifest") and "/" not in f for f in files)
    assert acc.store.count(f"{acc.prefix}event-*") == 0
    acc.run(LD.replace(minute=10))  # nothing to do; the sensor refreshes the waiting entries
    assert [(e["file_name"], e["status"]) for e in acc.activity() if not e.get("manifest")] == [
        ("mism.csv", "waiting_for_manifest")]


def test_manifest_uploaded_before_its_data_file(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook,
                                                airflow_db):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook, settle_seconds=2, data_file_grace_seconds=60, sensor_timeout=60)
    acc.write("late.csv", "identity,evtName\nc1,Signed Up\nc2,Signed Up\n")
    acc.write("late.manifest", manifest_bytes("late.csv", "event", acc.client_email))
    acc.upload("late.manifest")
    uploaded = {}

    def upload_later():
        time.sleep(4)
        acc.upload("late.csv")
        uploaded["at"] = time.time()

    t = threading.Thread(target=upload_later)
    t.start()
    dr = acc.run(LD)
    t.join()
    assert dr.state == "success"
    e = acc.entry("late.manifest")
    assert (e["status"], e["loaded"]) == ("done", 2)
    picked = datetime.fromisoformat(e["picked_up_at"]).replace(tzinfo=UTC).timestamp()
    assert picked >= uploaded["at"] + 1  # waited for the data file, then for it to settle
    assert acc.remote_files() == ["processed/2026-02-10/late/late.csv", "processed/2026-02-10/late/late.manifest"]


def test_rerun_of_the_same_files_changes_nothing(account):
    acc = account
    acc.write("ev.csv", "identity,evtName,sku\n" + "".join(f"c{i},Purchase,S{i}\n" for i in range(50)))
    acc.write("ev.manifest", manifest_bytes("ev.csv", "event", acc.client_email))
    acc.write("pr.csv", "identity,Name,tags,tags.operation\nc1,Ada,x,$add\nc2,Bob,y,$add\n")
    acc.write("pr.manifest", manifest_bytes("pr.csv", "profile", acc.client_email))
    acc.upload("ev.csv", "ev.manifest", "pr.csv", "pr.manifest", gap=1.1)
    assert acc.run(LD).state == "success" and acc.run(LD.replace(minute=1)).state == "success"
    before = (acc.store.count(f"{acc.prefix}event-*"), acc.store.count(f"{acc.prefix}profile"), profile(acc, "c1"))
    assert before[:2] == (50, 2)

    # 1) the very same upload again: the manifest name is taken
    acc.upload("ev.csv", "ev.manifest")
    assert acc.run(LD.replace(minute=2)).state == "failed"
    reused = [e for e in acc.activity() if e.get("manifest") == "ev.manifest" and e["status"] == "failed"]
    assert [e["error_code"] for e in reused] == ["manifest_reused"]
    assert reused[0]["message"].startswith("manifest name ev.manifest was already used by an import finished")
    assert "ev.csv" in acc.remote_files()  # kept for a manifest with a new name
    assert reused[0]["archived_files"] == ["ev.manifest"]
    failure = acc.emails(acc.client_email)[-1]
    assert " ".join(failure["Subject"].split()).endswith("import failed (manifest reused)")
    text = failure.get_payload()[0].get_payload(decode=True).decode()
    assert "Only the manifest was moved to" in text and "<b>ev.csv</b> was not moved and stays in the folder" in text
    assert "uploaded files were moved" not in text
    # 2) the same data under a new manifest name: recognised as already imported, nothing loaded
    acc.write("ev-again.manifest", manifest_bytes("ev.csv", "event", acc.client_email))
    acc.upload("ev-again.manifest")
    assert acc.run(LD.replace(minute=3)).state == "success"
    again = acc.entry("ev-again.manifest")
    assert (again["status"], again["loaded"], again["rows_in"]) == ("done", 0, 0)
    assert " ".join(acc.emails(acc.client_email)[-1]["Subject"].split()) == (
        "[cdp-ingest] ev-again.manifest: nothing to import, ev.csv was already imported")
    # 3) the same profile file again under a new manifest name: skipped too (same name and content)
    acc.write("pr-again.manifest", manifest_bytes("pr.csv", "profile", acc.client_email))
    acc.upload("pr.csv", "pr-again.manifest", gap=1.1)
    assert acc.run(LD.replace(minute=4)).state == "success"

    acc.store.refresh([f"{acc.prefix}*"])
    after = (acc.store.count(f"{acc.prefix}event-*"), acc.store.count(f"{acc.prefix}profile"), profile(acc, "c1"))
    assert after == before
    assert not [f for f in acc.remote_files() if "/" not in f]  # everything archived
