"""Random event, session and profile mappings over random rows: the columnar mapping (cdp_ingest.fastmap)
against the row-by-row ``Mapper.map_row``, the same documents (profiles: operations and new documents),
counts and error file both ways.

The feature tests in test_fastmap.py compare one feature at a time; here fields of every type, checks,
defaults, ``derived`` templates, identities with ``identity_normalize``, free-form bags, ``metadata``
values, every time format the columnar path takes and a few it does not are drawn together, so their
combinations are compared too. A share of the rows must go columnar, or the comparison proves nothing."""

from __future__ import annotations

import os
import random

import pytest
from test_fastmap import NOW, run, same, write
from test_fastmap_profiles import compare
from times_kit import EDGES, epoch_ms_cell, time_cell

from cdp_ingest.fastmap import EventBatchMapper, ProfileBatchMapper
from cdp_ingest.mapping import Mapper, Mapping

COLUMNS = ["c0", "c1", "c2", "c3", "c4", "c5"]
HEADER = ["rid", "ts", "kind", "sid", *COLUMNS, "extra one", "Extra-2"]
ROOTS = {"profile": ["data", "traits", "aux", "interests", "consents", "segments", "stats"],
         "event": ["properties", "traits", "context", "device", "os", "app", "utm", "hit", "data", "aux",
                   "request", "config"],
         "session": ["properties", "traits", "context", "device", "os", "app", "utm", "aux"]}
META = {"event": ["metadata.status", "metadata.instance", "metadata.time.x", "metadata.profile_less", "tags.values"],
        "session": ["metadata.channel", "metadata.status", "metadata.time.insert"],
        "profile": ["data.pii.firstname", "active", "segments.x", "data.contact.email"]}
TIMES = ["epoch", "epoch_ms", "iso", "%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M", "%Y%m%d%H%M%S.%f", "%d %b %Y",
         "%a, %d-%b-%y %H:%M %z",
         "%m/%d/%Y %I:%M %p"]
CELLS = ["", " ", "x", "Ada@Example.com", " ada@example.com ", "b@x.org", "not an email", "+49 30 1234567",
         "0049301234567", "12", "7", "-3", "+3", "007", "2147483648", "9223372036854775807", "1e3", "1.5", "-0",
         "0.1", "inf", "nan", "true", "False", "yes", "0", "1", "2025-11-01", "2025-11-01T10:00:00Z",
         "2025-02-29T10:00:00", "1761955200", "1761955200.5", "$D_1761955200", 'q"uote', "back\\slash",
         "za\u017c\u00f3\u0142\u0107", "tab\there", "multi\nline", "ctl\x01", "\u2028", "{\"a\": 1}", "[1,2]",
         "  padded  ", "\u00e9@x.org", "x" * 40]


def _target(rnd: random.Random, kind: str, used: set[str]) -> str:
    while True:
        if rnd.random() < 0.06:
            t = rnd.choice(META[kind])
        else:
            t = ".".join([rnd.choice(ROOTS[kind]), *rnd.sample(["a", "b", "c", "d-e", "f_1"], rnd.randint(1, 2))])
        if t not in used or rnd.random() < 0.03:  # (a target twice: map_row keeps the first key's place)
            used.add(t)
            return t


def random_mapping(rnd: random.Random, kind: str) -> dict:
    used: set[str] = set()
    fields = {}
    for col in rnd.sample(COLUMNS, rnd.randint(1, len(COLUMNS))):
        ftype = rnd.choice(["STRING", "STRING", "INTEGER", "LONG", "FLOAT", "BOOLEAN", "DATETIME"])
        spec: dict = {"target": _target(rnd, kind, used), "type": ftype}
        if ftype == "STRING" and rnd.random() < 0.3:
            spec["validate"] = rnd.choice(["email", "phone"])
        if rnd.random() < 0.25:
            spec["default"] = rnd.choice(["n/a", 0, 1.5, True, "", "2025-11-01", None])
        if rnd.random() < 0.15:
            spec["required"] = True
        fields[col] = spec if rnd.random() < 0.8 or set(spec) != {"target", "type"} or ftype != "STRING" \
            else spec["target"]
    identity = rnd.sample(COLUMNS, rnd.randint(1 if kind == "profile" else 0, 2))
    raw: dict = {"kind": kind, "fields": fields,
                 "unmapped": rnd.choice(["ignore", "traits"] + ["properties"] * (kind != "profile"))}
    if rnd.random() < 0.85 and kind != "profile":
        raw["id_column"] = "rid"
    if identity:
        raw["identity"] = identity
        if rnd.random() < 0.6:
            raw["identity_normalize"] = {c: rnd.sample(["trim", "lower", "e164"], rnd.randint(1, 2))
                                         for c in identity if rnd.random() < 0.7}
    if rnd.random() < 0.5:
        raw["derived"] = {_target(rnd, kind, used): rnd.choice(
            ["{c0}-{c1}", " fixed ", "{c2}", "{c3} and {extra one}", "", "{c4}{c5}", "{nope}"] * 3 + ["{c1:>3}"])
            for _ in range(rnd.randint(1, 2))}
    if rnd.random() < 0.4:
        raw["defaults"] = {_target(rnd, kind, used): rnd.choice(["web", 3, 2.5, False, None, "q\""] * 4 + [
            [1], {"a": 1}, [], {}, {"a": {"b": [1, "x", None]}}, [{"k": "v"}, 2.5], {"q\"": "\u00e9"}] * 2)}
    if kind == "event":
        raw["event_type"] = {"column": "kind"} if rnd.random() < 0.7 else {"value": rnd.choice(["buy", "page-view"])}
        if rnd.random() < 0.6:
            raw["session_column"] = "sid"
        raw["source_id"] = rnd.choice(["crm", "s\"q"])
    if kind == "event" or (kind == "session" and rnd.random() < 0.8):
        raw["time"] = {"column": "ts", "format": rnd.choice(TIMES)}
    return raw


def time_text(rnd: random.Random, fmt: str) -> str:
    if fmt == "iso":
        return time_cell(rnd, 0.7)
    if fmt == "epoch_ms":
        return epoch_ms_cell(rnd)
    if fmt == "epoch":
        return rnd.choice([str(rnd.randrange(0, 4102444800)), f"{rnd.randrange(0, 2**33)}.{rnd.randrange(1000)}",
                           rnd.choice(EDGES), rnd.choice(CELLS)])
    if rnd.random() < 0.15:
        return rnd.choice(CELLS + EDGES)
    from datetime import UTC, datetime, timedelta
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=rnd.randrange(0, 32503680000 * 10**6))
    text = when.strftime(fmt)
    return text if rnd.random() < 0.9 else text.replace("0", "", 1)


CLEAN = {"STRING": ["", "x", "Ada", "a b", "zażółć", 'q"uote', "back\\slash", "2025-11-01"],
         "email": ["", "Ada@Example.com", "b@x.org"], "phone": ["", "+4930123456", "+48 22 123 45 67"],
         "INTEGER": ["", "7", "-3", "0", "2147483647"], "LONG": ["", "7", "-3", "9223372036854775807"],
         "FLOAT": ["", "1.5", "-0.25", "3", "0.1"], "BOOLEAN": ["", "true", "False", "yes", "0", "1"],
         "DATETIME": ["", "2025-11-01T10:00:00Z", "1761955200", "2025-11-01 10:00:00.5+01:00", "2025-11-01"]}


def random_rows(rnd: random.Random, raw: dict, count: int) -> list[list[str]]:
    """Rows whose cells are mostly clean for their field (its type, its check), else any cell."""
    fmt = raw.get("time", {}).get("format", "epoch")
    pools = []
    for col in COLUMNS:
        spec = raw["fields"].get(col)
        spec = {"target": spec} if isinstance(spec, str) else spec or {}
        pools.append(CLEAN[spec.get("validate") or spec.get("type", "STRING")])
    rows = []
    for i in range(count):
        rid = rnd.choice([f"r-{i}"] * 6 + [f" r-{i}", "", f"\u00e9-{i}", f"r-{i % 50}"])
        rows.append([rid, time_text(rnd, fmt), rnd.choice(["buy", "page-view", "buy", " buy ", "", "Sign_up"]),
                     rnd.choice(["", "s-1", "s-2"]),
                     *(rnd.choice(pool) if rnd.random() < 0.92 else rnd.choice(CELLS) for pool in pools),
                     rnd.choice(["", "e1", "x y"]), rnd.choice(["", "Q"])])
    return rows


@pytest.mark.parametrize("seed", range(int(os.environ.get("FUZZ_SEEDS", "24"))))
def test_random_mappings_match_the_row_path(tmp_path, monkeypatch, seed):
    rnd = random.Random(seed)
    kind = "event" if seed % 3 else "session"
    raw = random_mapping(rnd, kind)
    mapping = Mapping.from_dict(raw, name=f"fuzz{seed}")
    rows = random_rows(rnd, raw, 600)
    header = list(HEADER)
    if rnd.random() < 0.15:  # a column the mapping may name is not in the file (map_row reads it as empty)
        gone = header.index(rnd.choice(COLUMNS))
        header.pop(gone)
        rows = [r[:gone] + r[gone + 1:] for r in rows]
    tail = "r-x,1761955200,buy,s-1,too,many,cells,here,a,b,c,d,e\n" if rnd.random() < 0.2 else ""
    path = write(tmp_path / "f.csv", header, rows, tail)
    _, counts, _ = same(mapping, path, tmp_path, batch_rows=rnd.choice([7, 64, 600]))
    compiled = EventBatchMapper.compile(Mapper(mapping, unit_key="u1", now=NOW))
    if compiled is None or compiled._plan(tuple(header)) is None:
        return  # row by row both ways (the share is checked below)
    calls: list[int] = []
    real = Mapper.map_row
    monkeypatch.setattr(Mapper, "map_row", lambda self, row, ref: calls.append(ref) or real(self, row, ref))
    run(mapping, path, tmp_path, fast=True, batch_rows=600)
    assert len(calls) < counts[0] or counts[1] < 50  # some rows mapped columnar (unless nearly all rejected)


def test_most_random_mappings_take_the_columnar_path():
    taken = 0
    for seed in range(24):
        rnd = random.Random(seed)
        mapping = Mapping.from_dict(random_mapping(rnd, "event" if seed % 3 else "session"))
        compiled = EventBatchMapper.compile(Mapper(mapping, unit_key="u1", now=NOW))
        taken += compiled is not None and compiled._plan(tuple(HEADER)) is not None
    assert taken >= 12, taken




@pytest.mark.parametrize("seed", range(int(os.environ.get("FUZZ_SEEDS", "24"))))
def test_random_profile_mappings_match_the_row_path(tmp_path, seed):
    rnd = random.Random(1000 + seed)
    raw = random_mapping(rnd, "profile")
    rows = random_rows(rnd, raw, 400)
    path = write(tmp_path / "p.csv", HEADER, rows)
    accepted, rejected, columnar = compare(Mapping.from_dict(raw, name=f"p{seed}"), path, tmp_path,
                                           batch_rows=rnd.choice([7, 64, 400]))
    assert accepted + rejected == len(rows)
    fast = ProfileBatchMapper.compile(Mapper(Mapping.from_dict(raw), unit_key="u1", now=NOW))
    if fast is not None and fast._plan(tuple(HEADER)) is not None and accepted >= 50:
        assert columnar > 0
