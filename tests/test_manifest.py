"""SFTP manifests (SPEC §2): parsing, header checks and per-row interpretation, on real small files."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp_ingest.errors import FileLevelError, ManifestError, RowError
from cdp_ingest.manifest import (
    MAX_EVENT_PROPERTIES,
    MAX_IDENTITY_LEN,
    RESERVED_EVENT_NAMES,
    Column,
    Manifest,
    RowResult,
    check_header,
    interpret_row,
    is_reserved_event_name,
    parse_manifest,
)

NAME = "upload-2026-11-23.manifest"
BASE: dict[str, Any] = {"fileName": "data.csv", "type": "profile", "clientEmail": "ops@example.com"}


def write_manifest(tmp_path: Path, content: Any, name: str = NAME) -> bytes:
    """Write a manifest as a client would upload it and read the bytes back."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path.read_bytes()


def load(tmp_path: Path, content: Any, name: str = NAME) -> Manifest:
    return parse_manifest(write_manifest(tmp_path, content, name), name)


def manifest_error(tmp_path: Path, content: Any, name: str = NAME) -> str:
    with pytest.raises(ManifestError) as info:
        load(tmp_path, content, name)
    assert info.value.code == "bad_manifest"
    return info.value.message


def read_csv(tmp_path: Path, text: str) -> tuple[list[str], list[dict[str, str]]]:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def interpret_file(tmp_path: Path, manifest: Manifest, text: str) -> list[RowResult | str]:
    """Each row's result, or its failure description (what the error CSV would carry)."""
    header, rows = read_csv(tmp_path, text)
    check_header(manifest, header)
    out: list[Any] = []
    for row in rows:
        try:
            out.append(interpret_row(manifest, row))
        except RowError as e:
            out.append(str(e))
    return out


def profile(tmp_path: Path, **columns: Any) -> Manifest:
    return load(tmp_path, {**BASE, "columns": columns} if columns else BASE)


def event(tmp_path: Path, columns: dict[str, Any] | None = None) -> Manifest:
    doc = {**BASE, "type": "event"}
    if columns is not None:
        doc["columns"] = columns
    return load(tmp_path, doc)


# ------------------------------------------------------------------------------------------ the manifest


def test_parses_a_full_manifest(tmp_path):
    m = load(
        tmp_path,
        {
            "fileName": "users 2026-11-23.csv",
            "type": "Profile",
            "clientEmail": " ops@example.com ",
            "columns": {
                "Customer ID": {"ctName": "Identity"},
                "Score": {"ctName": "score", "dataType": "integer"},
                "Amount": {"ctName": "amount", "dataType": "FLOAT"},
                "Email opt-in": {"ctName": "msg-email", "dataType": "BOOLEAN"},
                "Name": {"ctName": " name "},
            },
        },
    )
    assert m.name == NAME
    assert m.file_name == "users 2026-11-23.csv"
    assert m.type == "profile" and m.is_profile and not m.is_event
    assert m.client_email == "ops@example.com"
    assert m.columns["Customer ID"] == Column("Customer ID", "identity", "STRING")
    assert m.columns["Score"] == Column("Score", "score", "INTEGER")
    assert m.columns["Amount"].data_type == "FLOAT"
    assert m.columns["Email opt-in"].target == "MSG-email"
    assert m.columns["Name"] == Column("Name", "name", "STRING")


def test_columns_are_optional_and_unmapped_columns_keep_their_name(tmp_path):
    m = load(tmp_path, {**BASE, "columns": None})
    assert m.columns == {}
    assert m.column_for("Favourite colour") == Column("Favourite colour", "Favourite colour", "STRING")
    assert m.column_for("Identity").target == "identity"
    assert m.column_for("OBJECTID").target == "objectId"


def test_manifest_with_bom_is_accepted(tmp_path):
    raw = b"\xef\xbb\xbf" + json.dumps(BASE).encode()
    assert parse_manifest(raw, NAME).file_name == "data.csv"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe{}", f"manifest {NAME} is not valid UTF-8 (bad byte at offset 0)"),
        ("", f"manifest {NAME} is empty"),
        (
            '{\n  "fileName": "data.csv",\n  "type" "event"\n}',
            f"manifest {NAME} is not valid JSON: line 3 column 10: Expecting ':' delimiter",
        ),
        ("[1, 2]", f"manifest {NAME} must be a JSON object, not an array"),
        ('"data.csv"', f"manifest {NAME} must be a JSON object, not a string"),
        ('{"fileName": "a.csv", "fileName": "b.csv"}', f"manifest {NAME} has duplicate key 'fileName'"),
        ({"type": "event", "clientEmail": "a@b.co"}, f"manifest {NAME}: 'fileName' is missing"),
        ({**BASE, "fileName": None}, f"manifest {NAME}: 'fileName' is missing"),
        ({**BASE, "fileName": 7}, f"manifest {NAME}: 'fileName' must be a string, not a number"),
        ({**BASE, "fileName": "  "}, f"manifest {NAME}: 'fileName' is empty"),
        ({**BASE, "type": ""}, f"manifest {NAME}: 'type' is empty"),
        ({"fileName": "a.csv", "clientEmail": "a@b.co"}, f"manifest {NAME}: 'type' is missing"),
        ({**BASE, "type": "events"}, f"manifest {NAME}: 'type' must be 'event' or 'profile', got 'events'"),
        ({**BASE, "type": ["event"]}, f"manifest {NAME}: 'type' must be a string, not an array"),
        ({"fileName": "a.csv", "type": "event"}, f"manifest {NAME}: 'clientEmail' is missing"),
        ({**BASE, "clientEmail": ""}, f"manifest {NAME}: 'clientEmail' is empty"),
        (
            {**BASE, "clientEmail": "ops.example.com"},
            f"manifest {NAME}: 'clientEmail' is not a valid email address",
        ),
        (
            {**BASE, "clientEmail": "a@b@c.com"},
            f"manifest {NAME}: 'clientEmail' is not a valid email address",
        ),
        (
            {**BASE, "clientEmail": "ops@localhost"},
            f"manifest {NAME}: 'clientEmail' is not a valid email address",
        ),
        (
            {**BASE, "clientEmail": "o ps@ex.com"},
            f"manifest {NAME}: 'clientEmail' is not a valid email address",
        ),
    ],
)
def test_manifest_errors(tmp_path, content, expected):
    assert manifest_error(tmp_path, content) == expected


def test_invalid_json_message_points_at_the_error(tmp_path):
    message = manifest_error(tmp_path, '{"fileName": "data.csv",}')
    assert message.startswith(f"manifest {NAME} is not valid JSON: line 1 column 25: ")


def test_deeply_nested_json_is_a_manifest_error(tmp_path):
    message = manifest_error(tmp_path, "[" * 200_000 + "]" * 200_000)
    assert message == f"manifest {NAME} is not valid JSON: nested too deeply"


def test_oversized_manifest_is_refused_before_parsing(tmp_path):
    raw = write_manifest(tmp_path, {**BASE, "columns": {f"c{i}": {"ctName": f"t{i}"} for i in range(50)}})
    with pytest.raises(ManifestError, match=rf"manifest {NAME} is too large \({len(raw)} bytes, limit 100\)"):
        parse_manifest(raw, NAME, max_bytes=100)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("upload.json", "manifest name 'upload.json' must end in '.manifest'"),
        ("upload.manifest.csv", "manifest name 'upload.manifest.csv' must end in '.manifest'"),
        (".manifest", "manifest name '.manifest' must not name a hidden file (leading '.')"),
        (
            "../up.manifest",
            "manifest name '../up.manifest' must be a bare file name in the manifest's folder",
        ),
        ("", "manifest name '' is empty"),
    ],
)
def test_manifest_name_must_be_a_bare_dot_manifest(name, expected):
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(BASE).encode(), name)
    assert info.value.message.startswith(expected)


def test_manifest_error_is_a_file_level_error(tmp_path):
    with pytest.raises(FileLevelError) as info:
        load(tmp_path, "not json")
    assert info.value.code == "bad_manifest"
    assert str(info.value).startswith("[bad_manifest] manifest ")


@pytest.mark.parametrize(
    ("file_name", "problem"),
    [
        ("../x.csv", "must be a bare file name in the manifest's folder (no '/' or '\\')"),
        ("..\\x.csv", "must be a bare file name in the manifest's folder (no '/' or '\\')"),
        ("a/b.csv", "must be a bare file name in the manifest's folder (no '/' or '\\')"),
        ("/etc/passwd", "must be a bare file name, not an absolute path"),
        ("\\\\server\\share.csv", "must be a bare file name, not an absolute path"),
        ("C:data.csv", "must be a bare file name, not an absolute path"),
        ("..", "must not be '.' or '..'"),
        (".", "must not be '.' or '..'"),
        (".hidden.csv", "must not name a hidden file (leading '.')"),
        ("x\u0000.csv", "must not contain NUL or other control characters"),
        ("x\n.csv", "must not contain NUL or other control characters"),
        (" data.csv", "must not start or end with whitespace"),
        ("other.manifest", "must name the data file, not a manifest (ends in '.manifest')"),
        ("é" * 128 + ".csv", "is longer than 255 bytes"),
    ],
)
def test_file_name_traversal_and_oddities_are_refused(tmp_path, file_name, problem):
    assert (
        manifest_error(tmp_path, {**BASE, "fileName": file_name}) == f"manifest {NAME}: 'fileName' {problem}"
    )


def test_unknown_top_level_keys_are_refused_with_a_hint(tmp_path):
    doc = {"filename": "data.csv", "type": "event", "clientEmail": "a@b.co", "notify": True}
    assert manifest_error(tmp_path, doc) == (
        f"manifest {NAME}: unknown keys 'filename' (did you mean 'fileName'?), 'notify' "
        "(allowed: fileName, type, clientEmail, columns)"
    )


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["a", "b"], "'columns' must be an object mapping CSV column names to"),
        ("a", "'columns' must be an object mapping CSV column names to"),
        ({"": {"ctName": "x"}}, "'columns' has an empty CSV column name"),
        ({"Age": "age"}, "column 'Age' must map to an object with 'ctName', not a string"),
        ({"Age": {"dataType": "INTEGER"}}, "column 'Age': 'ctName' is missing"),
        ({"Age": {"ctName": 3}}, "column 'Age': 'ctName' must be a string, not a number"),
        ({"Age": {"ctName": " "}}, "column 'Age': 'ctName' is empty"),
        (
            {"Age": {"ctName": "age", "dataType": "NUMBER"}},
            "column 'Age': unknown dataType 'NUMBER' (expected one of STRING, INTEGER, FLOAT, BOOLEAN, LONG)",
        ),
        (
            {"Age": {"ctName": "age", "dataType": 5}},
            "column 'Age': unknown dataType 5 (expected one of STRING, INTEGER, FLOAT, BOOLEAN, LONG)",
        ),
        (
            {"Age": {"ctName": "age", "datatype": "INTEGER"}},
            "column 'Age': unknown key 'datatype' (did you mean 'dataType'?) (allowed: ctName, dataType)",
        ),
        (
            {"Mail": {"ctName": "email"}, "E-mail": {"ctName": "email"}},
            "columns 'Mail' and 'E-mail' both map to target 'email'",
        ),
        (
            {"ID": {"ctName": "identity"}, "Ident": {"ctName": "IDENTITY"}},
            "columns 'ID' and 'Ident' both map to target 'identity'",
        ),
        (
            {"Tags.operation": {"ctName": "x"}},
            "column 'Tags.operation' is an operation column and cannot be mapped",
        ),
        ({"Name": {"ctName": "evtName"}}, "column 'Name': target 'evtName' is only allowed in event files"),
        ({"Fax": {"ctName": "MSG-fax"}}, "column 'Fax': unknown communication preference 'MSG-fax'"),
    ],
)
def test_column_mapping_errors(tmp_path, columns, expected):
    assert manifest_error(tmp_path, {**BASE, "columns": columns}).startswith(f"manifest {NAME}: {expected}")


def test_missing_data_type_is_string(tmp_path):
    m = profile(tmp_path, Zip={"ctName": "zip"})
    assert m.columns["Zip"].data_type == "STRING"


# ------------------------------------------------------------------------------------------- the header


def header_error(manifest: Manifest, header: list[str]) -> str:
    with pytest.raises(FileLevelError) as info:
        check_header(manifest, header)
    assert info.value.code == "bad_manifest"
    return info.value.message


def test_header_missing_mapped_columns_are_listed(tmp_path):
    m = profile(tmp_path, ID={"ctName": "identity"}, Age={"ctName": "age"}, City={"ctName": "city"})
    header, _ = read_csv(tmp_path, "ID,Name\n1,Ann\n")
    assert header_error(m, header) == (
        f"manifest {NAME} does not fit the header of data.csv: "
        "mapped columns missing from the header: 'Age', 'City'"
    )


def test_header_without_identity_column(tmp_path):
    m = profile(tmp_path, Email={"ctName": "email"})
    header, _ = read_csv(tmp_path, "Email,Name\na@b.co,Ann\n")
    assert header_error(m, header).endswith(
        "no identity column (a column named or mapped to one of identity, objectId, fbId, gpId)"
    )


@pytest.mark.parametrize("identity_column", ["identity", "Identity", "objectId", "fbId", "gpId"])
def test_any_identity_capable_column_satisfies_the_header(tmp_path, identity_column):
    check_header(profile(tmp_path), [identity_column, "Name"])


def test_event_header_needs_an_event_name_column(tmp_path):
    assert header_error(event(tmp_path), ["identity", "Amount"]).endswith(
        "no event name column (a column named or mapped to 'evtName')"
    )
    check_header(event(tmp_path, {"What": {"ctName": "evtName"}}), ["identity", "What"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ([], "the header row is empty"),
        (["identity", ""], "column 2 has no name"),
        (["identity", "Name", "Name"], "column 'Name' appears more than once"),
        (["identity", "Tags.operation"], "operation column 'Tags.operation' has no column 'Tags'"),
        (["identity", "identity.operation"], "operation column 'identity.operation' refers to 'identity'"),
        (["identity", "MSG-sms", "MSG-sms.operation"], "operation column 'MSG-sms.operation' refers to"),
        (["identity", "MSG-pager"], "column 'MSG-pager': unknown communication preference 'MSG-pager'"),
        (["identity", "Identity"], "columns 'identity' and 'Identity' both import as 'identity'"),
        (["identity", "x"] + [f"c{i}" for i in range(1023)], "1025 columns, limit 1024"),
    ],
)
def test_header_errors(tmp_path, header, expected):
    assert expected in header_error(profile(tmp_path), header)


def test_unmapped_header_column_colliding_with_a_mapped_target(tmp_path):
    m = profile(tmp_path, Mail={"ctName": "email"})
    assert header_error(m, ["identity", "Mail", "email"]).endswith(
        "columns 'Mail' and 'email' both import as 'email'"
    )


def test_operation_columns_are_refused_in_event_files(tmp_path):
    assert header_error(event(tmp_path), ["identity", "evtName", "Tags", "Tags.operation"]).endswith(
        "operation columns are only allowed in profile files: 'Tags.operation'"
    )


# ----------------------------------------------------------------------------------------------- rows


def test_types_dates_and_unmapped_columns(tmp_path):
    m = profile(
        tmp_path,
        ID={"ctName": "identity"},
        Age={"ctName": "age", "dataType": "INTEGER"},
        Big={"ctName": "big", "dataType": "LONG"},
        Score={"ctName": "score", "dataType": "FLOAT"},
        VIP={"ctName": "vip", "dataType": "BOOLEAN"},
        Joined={"ctName": "joined", "dataType": "INTEGER"},
        Updated={"ctName": "ts"},
    )
    [r] = interpret_file(
        tmp_path,
        m,
        "ID,Age,Big,Score,VIP,Joined,Updated,Favourite colour,Zip\n"
        "u1, 42 ,9007199254740993,2.5,Y,$D_1700000000,1700000100,blue,01234\n",
    )
    assert r.identity == {"identity": "u1"}
    assert r.ts == datetime(2023, 11, 14, 22, 15, tzinfo=UTC)
    assert r.properties == {
        "age": 42,
        "big": 9007199254740993,
        "score": 2.5,
        "vip": True,
        "joined": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        "Favourite colour": "blue",
        "Zip": "01234",
    }
    assert r.operations == [(("$set", k, v)) for k, v in r.properties.items()]
    assert r.event_name is None and r.preferences == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("FALSE", False), ("1", True), ("0", False), ("y", True), ("N", False)],
)
def test_boolean_spellings(tmp_path, text, expected):
    m = profile(tmp_path, VIP={"ctName": "vip", "dataType": "BOOLEAN"})
    assert interpret_row(m, {"identity": "u1", "VIP": text}).properties == {"vip": expected}


def test_ts_is_none_when_absent_or_empty(tmp_path):
    m = profile(tmp_path)
    assert interpret_row(m, {"identity": "u1"}).ts is None
    assert interpret_row(m, {"identity": "u1", "ts": ""}).ts is None
    assert interpret_row(m, {"identity": "u1", "ts": "$D_0"}).ts == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"identity": "u1", "Age": "forty"}, "column 'Age': expected INTEGER"),
        ({"identity": "u1", "Age": "4.5"}, "column 'Age': expected INTEGER, got a fraction"),
        ({"identity": "u1", "Score": "high"}, "column 'Score': expected FLOAT"),
        ({"identity": "u1", "VIP": "maybe"}, "column 'VIP': expected BOOLEAN (true/false, 1/0, Y/N)"),
        ({"identity": "u1", "Big": "1e30"}, "column 'Big': LONG out of range"),
        ({"identity": "u1", "ts": "yesterday"}, "column 'ts': not an epoch-seconds datetime"),
        ({"identity": "u1", "Name": "$D_soon"}, "column 'Name': not an epoch-seconds datetime"),
    ],
)
def test_type_errors_name_the_column_and_type_not_the_value(tmp_path, row, expected):
    m = profile(
        tmp_path,
        Age={"ctName": "age", "dataType": "INTEGER"},
        Score={"ctName": "score", "dataType": "FLOAT"},
        VIP={"ctName": "vip", "dataType": "BOOLEAN"},
        Big={"ctName": "big", "dataType": "LONG"},
    )
    with pytest.raises(RowError) as info:
        interpret_row(m, row)
    assert str(info.value) == expected
    for value in row.values():
        if value not in ("u1",):
            assert value not in str(info.value)


def test_identity_fields_and_limits(tmp_path):
    m = profile(tmp_path, ID={"ctName": "identity"}, FB={"ctName": "fbId"})
    results = interpret_file(
        tmp_path,
        m,
        "ID,objectId,FB,gpId,Name\n"
        "u1,,,,Ann\n"
        ",obj-9,fb-1,,Bob\n"
        ",,,,Nobody\n"
        f"{'x' * MAX_IDENTITY_LEN},,,,Max\n"
        f"{'x' * (MAX_IDENTITY_LEN + 1)},,,,Long\n"
        "  ,  ,,,Blank\n",
    )
    assert results[0].identity == {"identity": "u1"}
    assert results[1].identity == {"objectId": "obj-9", "fbId": "fb-1"}
    assert "identity" not in results[1].properties and results[1].properties == {"Name": "Bob"}
    assert results[2] == "no identity: at least one of identity, objectId, fbId, gpId must have a value"
    assert results[3].identity == {"identity": "x" * MAX_IDENTITY_LEN}
    assert results[4] == "column 'ID': identity must be shorter than 1024 characters"
    assert len(results[3].identity["identity"]) == 1023
    assert results[5] == "no identity: at least one of identity, objectId, fbId, gpId must have a value"


def test_profile_operations_across_rows(tmp_path):
    m = profile(
        tmp_path,
        Customer={"ctName": "identity"},
        Tags={"ctName": "tags"},
        Visits={"ctName": "visits", "dataType": "INTEGER"},
    )
    results = interpret_file(
        tmp_path,
        m,
        "Customer,Tags,Tags.operation,Visits,Visits.operation,City\n"
        "u1,gold,$add,3,,Paris\n"
        "u1,silver,$ADD, 4 , $set ,\n"
        "u1,gold,$remove,,$delete,\n"
        "u1,,$delete,,,Rome\n"
        "u1,,$add,,,\n"
        "u1,gold,$append,,,\n",
    )
    r1, r2, r3, r4, r5, r6 = results
    assert r1.operations == [("$add", "tags", "gold"), ("$set", "visits", 3), ("$set", "City", "Paris")]
    assert r1.properties == {"visits": 3, "City": "Paris"}
    assert r2.operations == [("$add", "tags", "silver"), ("$set", "visits", 4)]
    assert r3.operations == [("$remove", "tags", "gold"), ("$delete", "visits", None)]
    assert r3.properties == {}
    assert r4.operations == [("$delete", "tags", None), ("$set", "City", "Rome")]
    assert r5.operations == [] and r5.properties == {}  # empty cell: nothing to add
    assert r6 == "column 'Tags.operation': invalid operation; expected one of $set, $add, $remove, $delete"
    for r in (r1, r2, r3, r4, r5):
        assert not any(k.endswith(".operation") for k in r.properties)
        assert not any(t.endswith(".operation") for _, t, _ in r.operations)


def test_typed_values_in_add_operations(tmp_path):
    m = profile(tmp_path, Score={"ctName": "scores", "dataType": "FLOAT"})
    r = interpret_row(m, {"identity": "u1", "Score": "1.5", "Score.operation": "$add"})
    assert r.operations == [("$add", "scores", 1.5)]
    with pytest.raises(RowError, match=r"^column 'Score': expected FLOAT$"):
        interpret_row(m, {"identity": "u1", "Score": "abc", "Score.operation": "$add"})


def test_communication_preferences(tmp_path):
    m = profile(tmp_path, SMS={"ctName": "MSG-sms"})
    results = interpret_file(
        tmp_path,
        m,
        "identity,SMS,MSG-email,msg-whatsapp,MSG-push,MSG-dndSMS,MSG-dndEmail\n"
        "u1,true,N,1,0,Y,false\n"
        "u2,,,,,,\n"
        "u3,perhaps,,,,,\n",
    )
    assert results[0].preferences == {
        "MSG-sms": True,
        "MSG-email": False,
        "MSG-whatsapp": True,
        "MSG-push": False,
        "MSG-dndSMS": True,
        "MSG-dndEmail": False,
    }
    assert results[0].properties == {} and results[0].operations == []
    assert results[1].preferences == {}
    assert results[2] == "column 'SMS': expected BOOLEAN (true/false, 1/0, Y/N)"


def test_msg_columns_are_plain_properties_in_event_files(tmp_path):
    r = interpret_row(event(tmp_path), {"identity": "u1", "evtName": "Opted in", "MSG-sms": "yes"})
    assert r.preferences == {} and r.properties == {"MSG-sms": "yes"}


def test_events(tmp_path):
    m = event(
        tmp_path, {"User": {"ctName": "objectId"}, "Event": {"ctName": "evtName"}, "When": {"ctName": "ts"}}
    )
    results = interpret_file(
        tmp_path,
        m,
        "User,Event,When,Amount,Phone\n"
        "o1,Product Viewed,1700000000,12.5,+49 151-2345 6789\n"
        "o1,,1700000000,1,\n"
        "o1,app launched,1700000000,1,\n"
        "o1, Notification   CLICKED ,,,\n",
    )
    r = results[0]
    assert r.identity == {"objectId": "o1"}
    assert r.event_name == "Product Viewed"
    assert r.ts == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert r.properties == {"Amount": "12.5", "Phone": "+4915123456789"}
    assert r.operations == [] and r.preferences == {}
    assert results[1] == "event name ('evtName') is missing"
    assert results[2] == "event name 'app launched' is a reserved system event and cannot be imported"
    assert (
        results[3] == "event name 'Notification   CLICKED' is a reserved system event and cannot be imported"
    )


@pytest.mark.parametrize(
    "name",
    [
        "App Launched",
        "App Installed",
        "App Uninstalled",
        "Notification Sent",
        "Notification Viewed",
        "Notification Clicked",
        "UTM Visited",
        "Stayed",
        "Reply Sent",
    ],
)
def test_reserved_event_names_include_the_platform_events(name):
    assert name in RESERVED_EVENT_NAMES
    assert is_reserved_event_name(name.upper())
    assert is_reserved_event_name(name.lower())


def test_custom_event_names_are_not_reserved():
    for name in ("Charged", "Product Viewed", "App Launched Twice", "Stayed Home"):
        assert not is_reserved_event_name(name)


def test_event_property_limit(tmp_path):
    m = event(tmp_path)
    props = [f"p{i}" for i in range(MAX_EVENT_PROPERTIES + 1)]
    header = ["identity", "evtName", "ts", *props]
    lines = [
        ",".join(header),
        ",".join(["u1", "Bought", "1700000000", *["1"] * MAX_EVENT_PROPERTIES, ""]),  # 100 set: fine
        ",".join(["u1", "Bought", "1700000000", *["1"] * (MAX_EVENT_PROPERTIES + 1)]),
    ]
    ok, too_many = interpret_file(tmp_path, m, "\n".join(lines) + "\n")
    assert len(ok.properties) == MAX_EVENT_PROPERTIES  # identity, evtName and ts do not count
    assert too_many == "event has 101 properties; at most 100 are allowed"


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("+14155552671", "+14155552671"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+91-98765-43210", "+919876543210"),
        ("+12345678", "+12345678"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_valid_phone_numbers_are_normalised(tmp_path, text, stored):
    m = profile(tmp_path, Mobile={"ctName": "Phone", "dataType": "INTEGER"})
    assert interpret_row(m, {"identity": "u1", "Mobile": text}).properties == {"Phone": stored}
    assert interpret_row(m, {"identity": "u1", "phone": text}).properties == {"phone": stored}


@pytest.mark.parametrize(
    "text",
    ["14155552671", "+1234567", "+1234567890123456", "+44 (20) 7946 0958", "+4420x79460958", "phone", "+"],
)
def test_invalid_phone_numbers_reject_the_row(tmp_path, text):
    m = profile(tmp_path)
    with pytest.raises(RowError) as info:
        interpret_row(m, {"identity": "u1", "PHONE": text})
    assert str(info.value) == (
        "column 'PHONE': invalid phone number; "
        "expected E.164 ('+' then 8 to 15 digits, spaces and dashes allowed)"
    )


def test_phone_in_event_files_is_validated_too(tmp_path):
    with pytest.raises(RowError, match="invalid phone number"):
        interpret_row(event(tmp_path), {"identity": "u1", "evtName": "Called", "Phone": "555-1234"})


def test_short_and_long_rows(tmp_path):
    m = profile(tmp_path)
    results = interpret_file(tmp_path, m, "identity,Name,City\nu1,Ann\nu2,Bob,Rome,extra,more\n")
    assert results[0].properties == {"Name": "Ann"}  # missing trailing field = empty cell
    assert results[1] == "row has 2 more field(s) than the header"


def test_event_name_length_limit(tmp_path):
    with pytest.raises(RowError, match=r"^column 'evtName': event name longer than 512 characters$"):
        interpret_row(event(tmp_path), {"identity": "u1", "evtName": "E" * 513})
