"""SFTP rows and drop-folder rules (SPEC §2): pure engine functions, no services."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest

from cdp_ingest.documents import apply_operation, new_document
from cdp_ingest.errors import FileLevelError, RowError
from cdp_ingest.manifest import parse_manifest
from cdp_ingest.mapping import profile_id_for
from cdp_ingest.pipeline import mapped_to_stage_row
from cdp_ingest.sftp_rows import (
    READY,
    WAIT_DATA,
    WAIT_SETTLE,
    RemoteFile,
    SftpRowMapper,
    activity_id,
    archive_folder,
    check_size,
    error_file_name,
    event_type,
    is_data_candidate,
    peek_file_name,
    plan_folder,
    profile_key,
    profile_path,
    readiness,
    upload_order,
)

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)  # the run's logical date


def manifest(kind: str, columns: dict | None = None, name: str = "m1.manifest"):
    doc = {"fileName": "data.csv", "type": kind, "clientEmail": "ops@example.com"}
    if columns is not None:
        doc["columns"] = columns
    return parse_manifest(json.dumps(doc).encode(), name)


def apply_all(ops_rows: list[list[tuple]]) -> dict:
    doc = new_document("profile", "p", NOW)
    for ops in ops_rows:
        for op, path, value in ops:
            apply_operation(doc, op, path, value)
    return doc


# ---- profiles ----------------------------------------------------------------------------------------


def test_profile_row_links_by_identity_and_maps_standard_and_custom_properties():
    m = manifest("profile", {"Customer": {"ctName": "identity"}, "Points": {"ctName": "points", "dataType": "INTEGER"}})
    mapper = SftpRowMapper(m, unit_key="u1", now=NOW)
    out = mapper.map_row({"Customer": "c-42", "Name": "Ada", "Email": "ada@example.com", "Points": "7",
                          "plan.tier": "gold"}, 1)
    assert out.kind == "profile"
    assert out.doc_id == profile_id_for("c-42")  # same id every other source derives from "c-42"
    doc = apply_all([out.operations])
    assert doc["data"]["identifier"]["id"] == "c-42"
    assert doc["data"]["pii"]["name"] == "Ada"
    assert doc["data"]["contact"]["email"] == "ada@example.com"
    assert doc["traits"] == {"points": 7, "plan_tier": "gold"}


def test_other_identities_are_namespaced():
    assert profile_key({"objectId": "42"}) == "objectId:42"
    assert profile_key({"identity": "42", "objectId": "x"}) == "42"
    with pytest.raises(RowError, match="no identity"):
        profile_key({})


def test_operations_across_rows_are_applied_in_order():
    m = manifest("profile")
    mapper = SftpRowMapper(m, unit_key="u1", now=NOW)
    rows = [
        {"identity": "u1", "tags": "a", "tags.operation": "$add", "nick": "Ace", "nick.operation": ""},
        {"identity": "u1", "tags": "b", "tags.operation": "$ADD", "nick": "", "nick.operation": ""},
        {"identity": "u1", "tags": "a", "tags.operation": "$remove", "nick": "", "nick.operation": "$delete"},
    ]
    doc = apply_all([mapper.map_row(r, i).operations for i, r in enumerate(rows, 1)])
    assert doc["traits"] == {"tags": ["b"]}


def test_bad_operation_and_bad_email_reject_the_row():
    mapper = SftpRowMapper(manifest("profile"), unit_key="u1", now=NOW)
    with pytest.raises(RowError, match="invalid operation"):
        mapper.map_row({"identity": "u1", "tags": "a", "tags.operation": "$push"}, 1)
    with pytest.raises(RowError, match="column 'Email': invalid email address"):
        mapper.map_row({"identity": "u1", "Email": "not-an-address"}, 2)


def test_message_preferences_become_preferences_and_consents():
    mapper = SftpRowMapper(manifest("profile"), unit_key="u1", now=NOW)
    out = mapper.map_row({"identity": "u1", "MSG-email": "Y", "MSG-sms": "false", "MSG-dndSMS": "1",
                          "ts": "1767225600"}, 1)
    doc = apply_all([out.operations])
    assert doc["data"]["preferences"]["messaging"] == {"email": True, "sms": False, "dnd_sms": True}
    assert doc["consents"]["messaging-email"] == {"revoke": None}
    assert doc["consents"]["messaging-sms"] == {"revoke": "2026-01-01T00:00:00.000000"}  # the row's ts
    assert "messaging-dnd_sms" not in doc["consents"]
    with pytest.raises(RowError, match="expected BOOLEAN"):
        mapper.map_row({"identity": "u1", "MSG-push": "maybe"}, 2)


def test_profile_operations_survive_staging():
    mapper = SftpRowMapper(manifest("profile"), unit_key="u1", now=NOW)
    out = mapper.map_row({"identity": "u1", "born": "$D_1000000000"}, 1)
    index, doc_id, body = mapped_to_stage_row(out, "t-", "imp", 1)
    assert index == "t-profile" and doc_id == profile_id_for("u1")
    assert ["$set", "traits.born", "2001-09-09T01:46:40+00:00"] in orjson.loads(body)["ops"]


# ---- events ------------------------------------------------------------------------------------------


def test_event_row_becomes_a_tracardi_event_in_the_month_of_its_time():
    m = manifest("event", {"When": {"ctName": "ts"}, "Amount": {"ctName": "amount", "dataType": "FLOAT"}})
    mapper = SftpRowMapper(m, unit_key="unit-x", now=NOW, source_id="sftp:acme")
    out = mapper.map_row({"identity": "c-1", "evtName": "Product Viewed", "When": "1764547200", "Amount": "9.5"}, 3)
    assert out.kind == "event" and out.when == datetime(2025, 12, 1, tzinfo=UTC)
    index, doc_id, body = mapped_to_stage_row(out, "t-", "imp-1", 3)
    assert index == "t-event-2025-12"
    doc = orjson.loads(body)
    assert doc["id"] == doc_id and doc["type"] == "product-viewed" and doc["name"] == "Product Viewed"
    assert doc["properties"] == {"amount": 9.5}
    assert doc["profile"] == {"id": profile_id_for("c-1")}
    assert doc["source"] == {"id": "sftp:acme"}
    assert doc["metadata"]["time"]["create"] == "2025-12-01T00:00:00.000000"
    assert doc["metadata"]["time"]["insert"] == "2026-03-15T12:00:00.000000"


def test_event_ids_are_stable_per_unit_and_row():
    m = manifest("event")
    row = {"identity": "c-1", "evtName": "Purchase"}
    a = SftpRowMapper(m, unit_key="unit-x", now=NOW).map_row(row, 1)
    b = SftpRowMapper(m, unit_key="unit-x", now=datetime(2030, 1, 1, tzinfo=UTC)).map_row(row, 1)
    c = SftpRowMapper(m, unit_key="unit-x", now=NOW).map_row(row, 2)
    assert a.doc_id == b.doc_id != c.doc_id


def test_event_without_ts_uses_the_processing_time_given_not_the_clock():
    out = SftpRowMapper(manifest("event"), unit_key="u", now=NOW).map_row({"identity": "c", "evtName": "Login"}, 1)
    assert out.when == NOW
    assert mapped_to_stage_row(out, "t-", "i", 1)[0] == "t-event-2026-03"


def test_event_rules_reject_rows():
    mapper = SftpRowMapper(manifest("event"), unit_key="u", now=NOW)
    with pytest.raises(RowError, match="reserved system event"):
        mapper.map_row({"identity": "c", "evtName": "App Launched"}, 1)
    with pytest.raises(RowError, match="at most 100"):
        mapper.map_row({"identity": "c", "evtName": "Big", **{f"p{i}": "x" for i in range(101)}}, 2)
    with pytest.raises(RowError, match="invalid phone number"):
        mapper.map_row({"identity": "c", "evtName": "Call", "phone": "12"}, 3)
    assert event_type("  Added to Cart!  ") == "added-to-cart"


# ---- folder rules ------------------------------------------------------------------------------------


def test_upload_order_is_mtime_then_name():
    files = [RemoteFile("b.manifest", 1, 20), RemoteFile("a.manifest", 1, 20), RemoteFile("c.manifest", 1, 10)]
    assert [f.name for f in upload_order(files)] == ["c.manifest", "a.manifest", "b.manifest"]


def test_readiness_waits_for_settling_and_for_a_late_data_file():
    m = RemoteFile("x.manifest", 10, 100.0)
    before = RemoteFile("x.csv", 10, 90.0)
    after = RemoteFile("x.csv", 10, 110.0)
    kw = {"settle_seconds": 30, "data_file_grace_seconds": 600}
    assert readiness(m, before, now=120, **kw) == WAIT_SETTLE  # manifest written 20 s ago
    assert readiness(m, before, now=131, **kw) == READY
    assert readiness(m, after, now=131, **kw) == WAIT_SETTLE  # data arrived after its manifest: may grow
    assert readiness(m, after, now=141, **kw) == READY
    assert readiness(m, None, now=500, **kw) == WAIT_DATA
    assert readiness(m, None, now=701, **kw) == READY  # give up waiting: parse reports "no data file"


def test_plan_folder_takes_the_oldest_manifest_and_lists_files_waiting_for_one():
    files = [RemoteFile("b.csv", 5, 50), RemoteFile("a.csv", 5, 10), RemoteFile("a.manifest", 1, 20),
             RemoteFile("b.manifest", 1, 60), RemoteFile("orphan.csv", 1, 5), RemoteFile(".hidden", 1, 1),
             RemoteFile("up.csv.part", 1, 1)]
    plan = plan_folder(files, {"a.manifest": "a.csv", "b.manifest": "b.csv"}, now=1000, settle_seconds=0)
    assert plan.manifest.name == "a.manifest" and plan.state == READY and plan.data_file == "a.csv"
    assert [f.name for f in plan.waiting] == ["orphan.csv"] and plan.pending == 2
    unreadable = plan_folder([RemoteFile("bad.manifest", 1, 1)], {"bad.manifest": None}, now=1000)
    assert unreadable.state == READY and unreadable.data_file is None
    assert plan_folder([], {}, now=1).manifest is None
    assert not is_data_candidate("x.manifest") and is_data_candidate("x.csv")


def test_peek_file_name_is_tolerant():
    assert peek_file_name(b'{"fileName": "a.csv"}') == "a.csv"
    assert peek_file_name(b'{"fileName": "../a.csv"}') is None
    assert peek_file_name(b"{not json") is None
    assert peek_file_name(b"[1]") is None


def test_size_limit_and_names():
    check_size(5, 5, "f.csv")
    with pytest.raises(FileLevelError) as e:
        check_size(6 * 1024**3, 5 * 1024**3, "f.csv")
    assert e.value.code == "too_large" and "6.0 GB" in e.value.message and "5.0 GB" in e.value.message
    when = datetime(2026, 3, 15, 23, 59, tzinfo=UTC)
    assert archive_folder("done", "up-1.manifest", when, "abcd1234") == "processed/2026-03-15/up-1"
    assert archive_folder("failed", "up-1.manifest", when, "abcd1234") == "failed/2026-03-15/up-1.abcd1234"
    assert error_file_name("up-1.manifest") == "up-1.errors.csv"
    assert activity_id("acme", "a.manifest", 10.4) == activity_id("acme", "a.manifest", 10.0)
    assert activity_id("acme", "a.manifest", 10) != activity_id("acme", "a.manifest", 11)
    assert profile_path("EMAIL") == "data.contact.email" and profile_path("x.y") == "traits.x_y"
