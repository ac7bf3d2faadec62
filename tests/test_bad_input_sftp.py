"""Bad input through the SFTP import DAG, as a client sees it (issue 12): a huge cell and an
out-of-range time are per-row rejections in errors/ and the e-mail; a gzip bomb fails the file as
``too_large`` with the file and its manifest moved to failed/."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import pytest
from sftp_kit import make_account, manifest_bytes

from cdp_ingest.errorfile import FAILURE_COLUMN, read_error_file

pytestmark = [pytest.mark.services, pytest.mark.airflow]
LD = datetime(2026, 2, 12, 9, 0, tzinfo=UTC)


@pytest.fixture
def acc(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook, airflow_db):
    return make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                        webhook=webhook)


def test_huge_cell_and_bad_time_are_rejected_rows_the_client_gets_back(acc):
    big = "x" * (3 << 20)  # over the 1 MiB cell limit of the store connection
    acc.write("ev.csv", "identity,evtName,When,note\n"
                        "c1,Purchase,1767225600,ok\n"
                        f"c2,Purchase,1767225601,{big}\n"
                        "c3,Purchase,99999999999999,late\n"
                        "c4,Purchase,1767225603,ok\n")
    acc.write("ev.manifest", manifest_bytes("ev.csv", "event", acc.client_email, {"When": {"ctName": "ts"}}))
    acc.upload("ev.csv", "ev.manifest", gap=1.1)
    assert acc.run(LD).state == "success"
    e = acc.entry("ev.manifest")
    assert (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) == ("done", 4, 2, 2, 0)
    errors = read_error_file(acc.folder / "errors" / "ev.errors.csv")
    assert [(r["identity"], r[FAILURE_COLUMN]) for r in errors] == [
        ("c2", "column 'note': cell is 3,145,728 bytes, over the limit of 1,048,576"),
        ("c3", "column 'When': epoch seconds out of range (1970..3000)"),
    ]
    assert len(errors[0]["note"]) == len(big)
    assert acc.store.count(f"{acc.prefix}event-*") == 2
    assert " ".join(acc.emails(acc.client_email)[-1]["Subject"].split()).endswith(
        "imported, 2 loaded, 2 rejected, 0 duplicates")


def test_gzip_bomb_fails_the_file_as_too_large(acc):
    acc.write("bomb.csv", gzip.compress(b"identity,evtName,note\nc1,Purchase," + b"0" * (100 << 20) + b"\n", 9))
    acc.write("bomb.manifest", manifest_bytes("bomb.csv", "event", acc.client_email))
    acc.upload("bomb.csv", "bomb.manifest", gap=1.1)
    assert acc.run(LD).state == "failed"
    e = acc.entry("bomb.manifest")
    assert (e["status"], e["error_code"]) == ("failed", "too_large")
    assert e["message"].startswith("the gzipped file inflates more than 250:1 (")  # no staging path shown
    assert e["message"].endswith("refused as a likely compression bomb")
    assert e["archived_files"] == ["bomb.csv", "bomb.manifest"]  # an unusable file goes with its manifest
    assert sorted(f.rsplit("/", 1)[-1] for f in acc.remote_files()) == ["bomb.csv", "bomb.manifest"]
    assert all(f.startswith("failed/") for f in acc.remote_files())
    mail = acc.emails(acc.client_email)[-1]
    assert " ".join(mail["Subject"].split()).endswith("import failed (too large)")
    text = mail.get_payload(decode=True) or mail.get_payload()[0].get_payload(decode=True)
    assert b"The manifest and the data file <b>bomb.csv</b> were moved to" in text
    assert acc.store.count(f"{acc.prefix}event-*") == 0
