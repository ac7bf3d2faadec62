"""The columnar profile mapping (cdp_ingest.fastmap.ProfileBatchMapper) against Mapper.map_row.

Unit part: over the same CSV, every row must come out with the same profile id and the same operations
(byte for byte), its "new" document must be what the store's merge builds for a new profile from those
operations, and the counts and the error CSV must be the same.
Store part (real OpenSearch): a file imported with and without the columnar mapping, streamed and staged,
first into empty indices and then again over the stored profiles, leaves the same profile documents.
"""

from __future__ import annotations

import csv
import itertools
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from store_kit import merged_new
from times_kit import EDGES, time_cell

from cdp_ingest.documents import NOW_MARK
from cdp_ingest.fastmap import ProfileBatchMapper, split_profile_body
from cdp_ingest.ledger import Ledger
from cdp_ingest.mapping import Mapper, Mapping
from cdp_ingest.pipeline import RowMapper, import_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import Store, make_client

NOW = datetime(2026, 11, 23, 5, 6, 7, 123456, tzinfo=UTC)
DEMO = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings" / "demo-profiles.yaml"
HEADER = ["email", "first_name", "last_name", "phone", "birthday", "loyalty_points", "newsletter", "country",
          "segment"]
OTHER = {  # identity fallback with normalisation, defaults (one of them null), a new nested object, types
    "kind": "profile", "identity": ["email", "phone"],
    "identity_normalize": {"email": ["trim", "lower"], "phone": ["e164"]},
    "unmapped": "traits",
    "fields": {"email": {"target": "data.contact.email"},
               "phone": {"target": "data.contact.phone", "validate": "phone"},
               "street": "data.contact.address.street", "city": {"target": "data.contact.address.city"},
               "score": {"target": "traits.score", "type": "FLOAT", "default": 0},
               "vip": {"target": "data.preferences.vip", "type": "BOOLEAN"},
               "seen": {"target": "aux.seen", "type": "DATETIME"},
               "visits": {"target": "stats.visits", "type": "INTEGER", "required": True}},
    "derived": {"data.pii.name": "{first} {last}", "data.pii.label": "<{missing}>", "data.pii.const": " fixed "},
    "defaults": {"data.job.company": "ACME", "data.job.title": None},
}
OTHER_HEADER = ["email", "phone", "street", "city", "score", "vip", "seen", "visits", "first", "last", "Note X"]


def write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def compare(mapping: Mapping, path: Path, tmp: Path, batch_rows: int = 7) -> tuple[int, int, int]:
    runs = []
    for fast in (True, False):
        mapper = Mapper(mapping, unit_key="u1", now=NOW)
        row_fn = mapper.map_row if fast else (lambda row, ref, mapper=mapper: mapper.map_row(row, ref))
        rm = RowMapper(row_fn, tmp / f"errors-{fast}.csv", max_cell_bytes=200)
        items = list(rm.items(read_batches(str(path), batch_rows=batch_rows), "p-", "imp-1"))
        error_file = rm.close()
        runs.append((items, (rm.rows_in, rm.accepted, rm.rejected),
                     Path(error_file).read_text(encoding="utf-8") if error_file else None))
    (fast_items, fast_counts, fast_errors), (row_items, row_counts, row_errors) = runs
    assert fast_counts == row_counts
    assert fast_errors == row_errors
    assert len(fast_items) == len(row_items)
    columnar = 0
    for a, b in zip(fast_items, row_items, strict=True):
        assert a[:4] == b[:4]  # ref, kind, index, profile id
        new, ops = split_profile_body(a[4])
        if new is None:  # left to map_row: the same staged body
            assert a[4] == b[4]
            continue
        columnar += 1
        row_ops = b[4][len(b'{"ops":'):-1]
        assert ops == row_ops
        assert new.replace(NOW_MARK, b'"NOW"', 2) == merged_new(b[3], b[0], orjson.loads(row_ops), "imp-1")
    return (*fast_counts[1:], columnar)


def test_demo_mapping_edge_cases_match_the_row_path(tmp_path):
    rows = [
        ["ada@x.com", "Ada", "Lovelace", "+49301000000", "1960-01-10", "12", "Y", "PL", "silver"],
        ["b@x.com", "", "", "", "", "", "", "", ""],  # only the identity: name derives to ""
        ["not-an-email", "A", "B", "+49301000001", "1960-01-10", "1", "N", "DE", "x"],
        ["c@x.com", " Zoë ", "Ünal\u3000", "+49 (30) 1000-002", "$D_86400", "2147483648", "maybe", "FR", "y"],
        ["d@x.com", 'Q"uote\\', "tab\there", "+1", "1970-01-01T00:00:00Z", "-5", "yes", "", ""],
        ["", "No", "Identity", "", "", "", "", "", ""],
        ["e@x.com", "E", "E", "", "not a date", "7", "", "", ""],
        ["f@x.com", "$D_5", "F", "", "86400", "007", "TRUE", "", "gold"],
        ["g" * 1030 + "@x.com", "G", "G", "", "", "", "", "", ""],
        ["h@x.com", "H", "H", "", "2001-09-09T01:46:40+02:00", "", " no ", "\u2028", ""],
        ["i@x.com", "\u00a0I\u00a0", "", "", "", "", "", "", ""],
    ]
    accepted, rejected, columnar = compare(Mapping.load(DEMO), write(tmp_path / "p.csv", HEADER, rows), tmp_path)
    assert (accepted, rejected) == (5, 6)  # bad email, int32 overflow, bad phone, no identity, bad date, long cell
    assert columnar >= 3  # most accepted rows took the columnar path (the others were compared too)


def test_another_mapping_with_normalised_identities_defaults_and_new_objects(tmp_path):
    rnd = random.Random(11)
    rows = [[rnd.choice(["", "A@X.com ", " a@x.com", "b@y.org", "c@y.org", "bad email"]),
             rnd.choice(["", "+49 30 1234567", "0049301234567", "+48221234567", "12"]),
             rnd.choice(["", "Main St 1", 'Q"']), rnd.choice(["", "Berlin"]),
             rnd.choice(["", "1.5", "3", "0.25", "x"]), rnd.choice(["", "Y", "no", "1", "maybe"]),
             rnd.choice(["", "1700000000", "2025-01-01", "2025-01-01T10:00:00+01:00", "x"]),
             rnd.choice(["5", "0", "17", "", "99999999999"]), rnd.choice(["", "Ann", " Bo "]),
             rnd.choice(["", "Lee"]), rnd.choice(["", "note"])]
            for _ in range(500)]
    mapping = Mapping.from_dict(OTHER, name="other")
    accepted, rejected, columnar = compare(mapping, write(tmp_path / "o.csv", OTHER_HEADER, rows), tmp_path,
                                           batch_rows=64)
    assert accepted > 60 and rejected > 60 and columnar > 40


CHECKED = {  # e-mail and phone checks: required, optional, with a default (given unchecked when empty)
    "kind": "profile", "identity": ["email"],
    "fields": {"email": {"target": "data.contact.email", "required": True, "validate": "email"},
               "email2": {"target": "traits.email2", "validate": "email"},
               "phone": {"target": "data.contact.phone", "validate": "phone", "default": "n/a"},
               "phone2": {"target": "traits.phone2", "validate": "phone"}},
}
# characters the Arrow checks and Python's \s, \d and $ may see differently, and JSON escapes
TRICKY = ["a", "Z", "0", "9", ".", "@", "+", "-", "(", ")", " ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x7f",
          "\x85", "\xa0", "\u2028", "\u3000", "\u0663", "é", "$", "D", "_", '"', "\\", "!", "~", ","]


def _email(rnd: random.Random) -> str:
    def part(k: int) -> str:
        return "".join(rnd.choice(TRICKY) if rnd.random() < 0.05 else rnd.choice("abcxyz019._+-") for _ in range(k))
    shape = rnd.random()
    if shape < 0.1:
        return ""
    if shape < 0.2:
        return "".join(rnd.choice(TRICKY) for _ in range(rnd.randint(1, 8)))
    text = f"{part(rnd.randint(0, 6))}@{part(rnd.randint(1, 5))}.{part(rnd.randint(1, 4))}"
    return ("$D_" if rnd.random() < 0.03 else "") + text + ("\n" if rnd.random() < 0.03 else "")


def _phone(rnd: random.Random) -> str:
    shape = rnd.random()
    if shape < 0.1:
        return ""
    digits = rnd.choice("0123456789" if rnd.random() < 0.1 else "123456789") + "".join(
        rnd.choice("0123456789") for _ in range(rnd.randint(6, 15)))
    text = "".join(c + (rnd.choice(" -().") if rnd.random() < 0.2 else "") for c in "+" + digits)
    if shape < 0.2:
        at = rnd.randrange(len(text) + 1)
        text = text[:at] + rnd.choice(TRICKY) + text[at:]
    return text + ("\n" if rnd.random() < 0.03 else "")


def test_email_and_phone_checks_match_the_row_path_on_random_values(tmp_path):
    """The Arrow checks of e-mails and phones pass only values map_row passes, with the same value; every
    other value goes to map_row: 3,000 random values over characters where RE2 and Python's re differ give
    the same rows, documents, counts and error file both ways."""
    rnd = random.Random(7)
    rows = [[_email(rnd), _email(rnd), _phone(rnd), _phone(rnd)] for _ in range(3000)]
    path = write(tmp_path / "c.csv", list(CHECKED["fields"]), rows)
    accepted, rejected, columnar = compare(Mapping.from_dict(CHECKED), path, tmp_path, batch_rows=256)
    assert accepted > 400 and rejected > 1500 and columnar > 300
    assert accepted - columnar > 20  # values only Python's checks pass (a trailing newline, Unicode) too


def test_clean_emails_and_phones_are_checked_without_python_per_value(monkeypatch):
    """Printable-ASCII e-mails and phones are checked by Arrow regexes, not by ``Mapper._value`` per distinct
    value; a value outside that (a Unicode digit, a non-breaking space, an invalid one) leaves its row to
    map_row."""
    from cdp_ingest.arrow import pa

    calls: list[str] = []
    real = Mapper._value
    monkeypatch.setattr(Mapper, "_value", lambda self, rule, text: calls.append(rule.column) or real(self, rule, text))
    n = 500
    cols = {"email": [f"u{i}@x{i % 7}.example.com" for i in range(n)] + ["v@x.io", "w@x.io", "bad"],
            "email2": [""] * n + ["a\xa0b@x.io", "", ""],
            "phone": [f"+49 (30) 1000-{i:03d}" for i in range(n)] + ["", "+49 30 \u0663\u0663\u0663\u0663\u0663", ""],
            "phone2": [f"+1.555.{i:07d}" for i in range(n)] + ["", "", ""]}
    batch = pa.RecordBatch.from_pydict(cols)
    fast = ProfileBatchMapper.compile(Mapper(Mapping.from_dict(CHECKED), unit_key="u", now=NOW))
    fb = fast.map_batch(batch, 1, "p-", "imp")
    assert fb.ok == [True] * n + [False] * 3
    assert calls == []
    new, _ops = split_profile_body(fb.bodies[7])
    doc = orjson.loads(new.replace(NOW_MARK, b'"NOW"', 2))
    assert (doc["data"]["contact"]["phone"], doc["traits"]["phone2"]) == ("+49301000007", "+15550000007")


DATED = {"kind": "profile", "identity": ["email"],
         "fields": {"born": {"target": "data.pii.birthday", "type": "DATETIME"},
                    "seen": {"target": "aux.seen", "type": "DATETIME", "required": True},
                    "since": {"target": "traits.since", "type": "DATETIME", "default": "unknown"}}}


def test_datetime_fields_match_the_row_path_on_random_values(tmp_path, monkeypatch):
    """DATETIME cells are written by Arrow when they are whole epoch seconds or ISO 8601 forms it reads like
    ``datetime.fromisoformat`` (years 1000..9998 in UTC); every other cell goes through ``Mapper._value``: 3,000
    rows of random and edge cells give the same rows, documents, counts and error file both ways."""
    rnd = random.Random(13)
    rows = [[f"u{i}@x.org", time_cell(rnd, 0.6), time_cell(rnd, 0.6), rnd.choice(["", time_cell(rnd, 0.6)])]
            for i in range(3000)]
    rows += [[f"edge{i}@x.org", a, b, a] for i, (a, b) in enumerate(zip(EDGES, EDGES[::-1], strict=True))]
    path = write(tmp_path / "d.csv", ["email", *DATED["fields"]], rows)
    accepted, rejected, columnar = compare(Mapping.from_dict(DATED), path, tmp_path, batch_rows=512)
    assert accepted > 800 and rejected > 800 and columnar > 800
    calls: list[str] = []
    real = Mapper._value
    monkeypatch.setattr(Mapper, "_value", lambda self, rule, text: calls.append(text) or real(self, rule, text))
    fast = ProfileBatchMapper.compile(Mapper(Mapping.from_dict(DATED), unit_key="u", now=NOW))
    for sb in read_batches(str(path), batch_rows=4000):
        fast.map_batch(sb.batch, sb.first_row, "p-", "imp")
    assert {"", "$D_86400", "1761955200.5", "2025-11-01+01:00"} <= set(calls)
    assert not {"1970-01-01T00:00:00", "2025-11-01 10:00:00.5", "1761955200", "9998-12-31T23:59:59.999999",
                "1000-01-01T00:00:00", "2025-11-01T00:30:00+01:00", "1970-01-01"} & set(calls)


def test_object_and_list_defaults_are_mapped_columnar(tmp_path):
    """Object and list defaults kept a profile mapping row by row; they are constants: the same operations and
    new documents both ways."""
    raw = {**OTHER, "defaults": {"traits.tags": ["a", {"b": None}], "data.loyalty.card": {"tier": "gold", "n": []}}}
    assert ProfileBatchMapper.compile(Mapper(Mapping.from_dict(raw), unit_key="u", now=NOW)) is not None
    rows = [["Ada@Example.com", "", "Main 1", "Paris", "1.5", "true", "", "3", "Ada", "L", "x"],
            ["", "+4930123456", "", "", "", "", "", "0", "", "", ""], ["", "", "", "", "", "", "", "", "", "", ""]]
    accepted, rejected, columnar = compare(Mapping.from_dict(raw), write(tmp_path / "o.csv", OTHER_HEADER, rows),
                                           tmp_path)
    assert (accepted, rejected, columnar) == (2, 1, 2)


@pytest.mark.parametrize("change", [
    {"derived": {"data.pii.name": "{first!r}"}}, {"derived": {"data.pii.name": "{first:>9}"}},
    {"derived": {"data.pii.name": "{first.upper}"}},
])
def test_mappings_it_cannot_reproduce_stay_on_the_row_path(change):
    raw = {**OTHER, **change}
    assert ProfileBatchMapper.compile(Mapper(Mapping.from_dict(raw), unit_key="u", now=NOW)) is None


@pytest.mark.parametrize("fields", [
    {"email": "data.contact.email", "first": "segments.first"},  # under a skeleton list
    {"email": "data.contact.email", "first": "data.x.a", "last": "traits.b", "city": "data.x.c"},  # a new
    {"email": "data.contact.email", "first": "traits.a", "last": "traits.a.b"},  # object split; one inside another
    {"email": "data.contact.email", "first": "active"},  # a root itself (crashed the columnar mapping)
])
def test_targets_it_cannot_order_like_map_row_stay_on_the_row_path(fields):
    fast = ProfileBatchMapper.compile(Mapper(Mapping.from_dict(
        {"kind": "profile", "identity": ["email"], "fields": fields}), unit_key="u", now=NOW))
    assert fast is not None and fast._plan(tuple(OTHER_HEADER)) is None


def test_a_root_as_target_maps_like_the_row_path(tmp_path):
    """``active`` (a profile root that is a value, not an object) as a target: the columnar mapping crashed
    on it (the whole import failed); the rows now go through map_row, the same both ways."""
    mapping = Mapping.from_dict({"kind": "profile", "identity": ["email"],
                                 "fields": {"email": "data.contact.email",
                                            "vip": {"target": "active", "type": "BOOLEAN"}}}, name="active")
    path = write(tmp_path / "a.csv", ["email", "vip"], [["a@x.org", "true"], ["b@x.org", "no"], ["c@x.org", ""],
                                                       ["", "true"], ["d@x.org", "maybe"]])
    assert compare(mapping, path, tmp_path) == (3, 2, 0)
    ops = Mapper(mapping, unit_key="u", now=NOW).map_row({"email": "b@x.org", "vip": "no"}, 2).operations
    assert ("$set", "active", False) in ops


# ---- against the store ------------------------------------------------------------------------------------
_prefixes = itertools.count()


@pytest.fixture
def stores(opensearch):
    made = []

    def make() -> Store:
        s = Store(make_client(opensearch.info["url"]), prefix=f"t-fprof{next(_prefixes)}-", chunk_docs=300)
        s.ensure_templates()
        made.append(s)
        return s

    yield make
    for s in made:
        s._request("DELETE", f"/{s.prefix}*")


def profiles(store: Store) -> dict[str, dict]:
    store.refresh([store.index("profile")])
    resp = store._request("POST", f"/{store.index('profile')}/_search", body={"size": 10_000})
    docs = {}
    for hit in resp["hits"]["hits"]:
        doc = hit["_source"]
        for key in ("insert", "update"):  # the merge's own clock
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", doc["metadata"]["time"][key])
            doc["metadata"]["time"][key] = None
        doc["metadata"]["aux"]["cdp"]["import_id"] = None  # each import has its own
        docs[hit["_id"]] = doc
    return docs


@pytest.mark.services
@pytest.mark.parametrize("stage", [False, True], ids=["streamed", "staged"])
def test_imports_leave_the_same_profiles_both_ways(stores, tmp_path, monkeypatch, stage):
    """New profiles (the columnar documents), a profile repeated within a chunk and, on the second
    file, profiles already stored (their operations applied to the stored documents)."""
    rnd = random.Random(7)
    first = [[f"c{i}@x.com", rnd.choice(["Ada", "Bo", ""]), "L", rnd.choice(["", "+49301000000"]), "1960-01-10",
              str(i), rnd.choice(["Y", "N", ""]), "PL", rnd.choice(["gold", ""])] for i in range(400)]
    first += [["c5@x.com", "Again", "", "", "", "99", "", "", "x"], ["bad", "", "", "", "", "", "", "", ""]]
    second = [[f"c{i}@x.com", "New", "", "", "", str(i + 1), "", "DE", ""] for i in range(0, 600, 3)]
    results = {}
    columnar = []
    real = ProfileBatchMapper.map_batch
    monkeypatch.setattr(ProfileBatchMapper, "map_batch",
                        lambda self, *a, **kw: (fb := real(self, *a, **kw)) and columnar.append(sum(fb.ok)) or fb)
    for fast in (True, False):
        if fast:
            monkeypatch.delenv("CDP_ROW_MAPPING", raising=False)
        else:
            monkeypatch.setenv("CDP_ROW_MAPPING", "1")
        store = stores()
        reports = []
        for n, rows in enumerate((first, second)):
            path = write(tmp_path / f"{fast}-{n}.csv", HEADER, rows)
            m = Mapping.load(DEMO)
            rep = import_unit(str(path), lambda path=path: read_batches(path, batch_rows=150),
                              lambda iid, m=m: Mapper(m, unit_key=iid, now=NOW).map_row, store=store,
                              ledger=Ledger(store), work_dir=tmp_path / f"work-{fast}", kind="profile",
                              source="t", stage=stage)
            reports.append((rep.rows_in, rep.loaded, rep.rejected, rep.duplicates))
        results[fast] = (reports, profiles(store))
    assert sum(columnar) >= 550  # the fast run mapped (nearly) all rows columnar; the other run none
    assert results[True][0] == results[False][0] == [(402, 401, 1, 0), (200, 200, 0, 0)]
    fast_docs, row_docs = results[True][1], results[False][1]
    assert len(fast_docs) == 400 + 200 - 134
    assert fast_docs == row_docs
    again = next(d for d in fast_docs.values() if d["data"]["contact"]["email"] == "c5@x.com")
    assert again["data"]["pii"]["firstname"] == "Again" and again["data"]["loyalty"]["points"] == 99
    updated = next(d for d in fast_docs.values() if d["data"]["contact"]["email"] == "c3@x.com")
    assert updated["data"]["pii"]["firstname"] == "New" and updated["data"]["contact"]["address"]["country"] == "DE"
    assert updated["data"]["pii"]["lastname"] == "L"  # kept from the first file
