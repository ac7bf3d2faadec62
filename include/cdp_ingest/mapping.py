"""Mapping files (YAML): source columns → dotted paths of Tracardi documents (SPEC §6).

Example (``include/cdp_ingest/mappings/demo-events.yaml`` is a complete one)::

    kind: event                    # profile | session | event
    source_id: crm-export          # events: source.id
    id_column: insert_id           # events/sessions: natural key; default = hash(unit, row number)
    identity: [email]              # first non-empty column gives the profile id (profiles: required)
    identity_normalize: {email: [trim, lower], phone: [e164]}  # applied to identity values first
    session_column: session_id     # events: session.id
    time: {column: ts, format: epoch}     # epoch | epoch_ms | iso | a strftime pattern
    event_type: {column: event}           # or {value: purchase}
    fields:
      first name: data.pii.firstname                        # short form: "column: target"
      age: {target: data.pii.attributes.age, type: INTEGER}
      email: {target: data.contact.email, required: true, validate: email}
      plan: {target: traits.plan, default: free}
    defaults: {data.pii.language.native: en}                # constants set on every document
    derived: {data.pii.name: "{first name} {last name}"}    # templates over source columns
    unmapped: properties           # ignore | properties | traits (default: ignore)
    write_mode: create             # events/sessions: create (first write wins) | overwrite (see store.py)

A ``Mapper`` turns one source row (column → text) into a ``Mapped`` result or raises ``RowError``
with one failure description. It holds no per-file state, so rows can be mapped in any worker.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from cdp_ingest.coerce import COERCERS, DATE_PREFIX, MAX_TIME, MIN_TIME, parse_epoch_datetime
from cdp_ingest.documents import ID_NAMESPACE, KINDS, deterministic_id, iso, new_document
from cdp_ingest.errors import MappingError, RowError

TYPES = ("STRING", "INTEGER", "LONG", "FLOAT", "BOOLEAN", "DATETIME")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE_RE = re.compile(r"^\+[1-9]\d{7,14}$")
PHONE_STRIP_CHARS = " -()."  # dropped from a phone number before it is checked (and by e164)
_PHONE_STRIP = str.maketrans("", "", PHONE_STRIP_CHARS)
VALIDATORS = ("email", "phone")
# Steps applied, in order, to an identity value before the profile id is derived (identity_normalize).
IDENTITY_STEPS = ("trim", "lower", "e164")
TARGET_ROOTS = {
    "profile": {"data", "traits", "aux", "interests", "consents", "segments", "stats", "active"},
    "session": {"device", "os", "app", "utm", "context", "properties", "traits", "aux", "metadata"},
    "event": {"properties", "traits", "context", "device", "os", "app", "utm", "hit", "data", "aux", "request",
              "config", "tags", "metadata"},
}


_IDENTITY_PREFIX = ID_NAMESPACE.bytes + b"identity\x1f"  # deterministic_id("identity", v) = uuid5(ns, this + v)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant bits of byte 8


@functools.lru_cache(maxsize=65536)
def profile_id_for(identity: str) -> str:
    """The profile id every source derives from the same identity value: ``deterministic_id("identity",
    identity)``, made from the SHA-1 digest directly (uuid.uuid5's objects cost ~2.5 µs per value) and
    cached (identities repeat across the rows of a file)."""
    h = hashlib.sha1(_IDENTITY_PREFIX + identity.encode(), usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def normalize_identity(value: str, steps: tuple[str, ...], column: str) -> str:
    """``value`` after ``steps`` (IDENTITY_STEPS): ``trim`` strips surrounding whitespace, ``lower``
    lowercases, ``e164`` drops spaces, dashes, dots and brackets and turns a leading ``00`` into ``+``;
    a result that is not E.164 (``+`` and 8..15 digits) rejects the row."""
    for step in steps:
        if step == "trim":
            value = value.strip()
        elif step == "lower":
            value = value.lower()
        elif step == "e164":
            value = value.strip().translate(_PHONE_STRIP)
            if value.startswith("00"):
                value = "+" + value[2:]
            if value and not PHONE_RE.match(value):
                raise RowError(f"column '{column}' (identity): not an E.164 phone number (e.g. +4930123456)")
    return value


@dataclass(frozen=True)
class FieldRule:
    column: str
    target: str
    type: str = "STRING"
    required: bool = False
    default: Any = None
    validate: str | None = None


@dataclass
class Mapped:
    """One mapped row: a full document (events, sessions) or profile operations (profiles)."""

    kind: str
    doc_id: str
    document: dict | None = None
    operations: list[tuple[str, str, Any]] = field(default_factory=list)
    when: datetime | None = None


@dataclass
class Mapping:
    kind: str
    fields: list[FieldRule]
    source_id: str = "cdp-ingest"
    id_column: str | None = None
    identity: list[str] = field(default_factory=list)
    session_column: str | None = None
    time_column: str | None = None
    time_format: str = "epoch"
    event_type_column: str | None = None
    event_type_value: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    unmapped: str = "ignore"
    name: str = "mapping"
    write_mode: str = "create"
    identity_normalize: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> steps

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Mapping:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise MappingError(f"mapping {p.name}: cannot read YAML: {e}") from e
        return cls.from_dict(raw, name=p.stem)

    @classmethod
    def from_dict(cls, raw: Any, name: str = "mapping") -> Mapping:
        def fail(msg: str) -> MappingError:
            return MappingError(f"mapping {name}: {msg}")

        if not isinstance(raw, dict):
            raise fail("must be a YAML mapping at top level")
        known = {"kind", "fields", "source_id", "id_column", "identity", "session_column", "time", "event_type",
                 "defaults", "derived", "unmapped", "write_mode", "identity_normalize"}
        unknown = set(raw) - known
        if unknown:
            raise fail(f"unknown keys {sorted(map(str, unknown))}; allowed: {sorted(known)}")
        _check_shapes(raw, fail)
        kind = raw.get("kind")
        if kind not in KINDS:
            raise fail(f"kind must be one of {KINDS}, not {kind!r}")
        rules = []
        for column, spec in (raw.get("fields") or {}).items():
            if isinstance(spec, str):
                spec = {"target": spec}
            if not isinstance(spec, dict) or not isinstance(spec.get("target"), str):
                raise fail(f"field {column!r} needs a target path")
            extra = set(spec) - {"target", "type", "required", "default", "validate"}
            if extra:
                raise fail(f"field {column!r}: unknown options {sorted(map(str, extra))}")
            ftype = str(spec.get("type", "STRING")).upper()
            if ftype not in TYPES:
                raise fail(f"field {column!r}: type must be one of {TYPES}")
            if spec.get("validate") not in (None, *VALIDATORS):
                raise fail(f"field {column!r}: validate must be one of {VALIDATORS}")
            if spec.get("validate") and ftype != "STRING":  # the checks read text (an int or a date crashed them)
                raise fail(f"field {column!r}: validate applies to STRING fields, not {ftype}")
            _check_target(kind, spec["target"], fail)
            rules.append(FieldRule(str(column), spec["target"], ftype, bool(spec.get("required", False)),
                                   _as_json(spec.get("default"), f"field {column!r}: default", fail),
                                   spec.get("validate")))
        identity = raw.get("identity") or []
        identity = [identity] if isinstance(identity, str) else list(identity)
        if kind == "profile" and not identity:
            raise fail("a profile mapping needs identity: [column, ...]")
        normalize = raw.get("identity_normalize") or {}
        if not isinstance(normalize, dict):
            raise fail("identity_normalize must map identity columns to steps, e.g. {email: [trim, lower]}")
        steps_by_column: dict[str, tuple[str, ...]] = {}
        for column, steps in normalize.items():
            steps = [steps] if isinstance(steps, str) else steps
            if column not in identity:
                raise fail(f"identity_normalize: {column!r} is not an identity column ({identity})")
            if not isinstance(steps, list) or not all(st in IDENTITY_STEPS for st in steps):
                raise fail(f"identity_normalize {column!r}: steps must be a list of {IDENTITY_STEPS}")
            steps_by_column[str(column)] = tuple(steps)
        time_spec = raw.get("time") or {}
        if isinstance(time_spec, str):
            time_spec = {"column": time_spec}
        et = raw.get("event_type") or {}
        if isinstance(et, str):
            et = {"value": et}
        if kind == "event" and not (et.get("column") or et.get("value")):
            raise fail("an event mapping needs event_type: {column: ...} or {value: ...}")
        unmapped = raw.get("unmapped", "ignore")
        if unmapped not in ("ignore", "properties", "traits"):
            raise fail("unmapped must be ignore, properties or traits")
        if unmapped != "ignore" and unmapped not in TARGET_ROOTS[kind]:  # (a profile has traits, no properties)
            raise fail(f"unmapped: a {kind} has no {unmapped}; use ignore or traits")
        write_mode = raw.get("write_mode", "create")
        if write_mode not in ("create", "overwrite"):
            raise fail(f"write_mode must be create or overwrite, not {write_mode!r}")
        for target in (raw.get("defaults") or {}):
            _check_target(kind, target, fail)
        derived = raw.get("derived") or {}
        for target, template in derived.items():
            _check_target(kind, target, fail)
            try:
                list(string.Formatter().parse(template))
            except ValueError as e:
                raise fail(f"derived {target!r}: bad template: {e}") from e
        return cls(kind=kind, fields=rules, source_id=str(raw.get("source_id", "cdp-ingest")),
                   id_column=raw.get("id_column"), identity=identity, session_column=raw.get("session_column"),
                   time_column=time_spec.get("column"), time_format=time_spec.get("format", "epoch"),
                   event_type_column=et.get("column"), event_type_value=et.get("value"),
                   defaults={t: _as_json(v, f"defaults {t!r}", fail) for t, v in (raw.get("defaults") or {}).items()},
                   derived=dict(derived), unmapped=unmapped, name=name,
                   write_mode=write_mode, identity_normalize=steps_by_column)

    def source_columns(self) -> set[str]:
        cols = {r.column for r in self.fields} | set(self.identity)
        for c in (self.id_column, self.session_column, self.time_column, self.event_type_column):
            if c:
                cols.add(c)
        for template in self.derived.values():
            cols.update(f for _, f, _, _ in string.Formatter().parse(template) if f)
        return cols

    def check_header(self, header: list[str]) -> None:
        """Fail the whole file early when a column the mapping needs is not in the header."""
        required = {r.column for r in self.fields if r.required} | set(self.identity[:1])
        for c in (self.id_column, self.time_column, self.event_type_column):
            if c:
                required.add(c)
        missing = sorted(required - set(header))
        if missing:
            from cdp_ingest.errors import FileLevelError

            raise FileLevelError("bad_mapping", f"columns required by mapping {self.name} are not in the header: "
                                                f"{', '.join(missing)}")


def _check_shapes(raw: dict, fail) -> None:
    """The types of a mapping file's values, so that a malformed file fails with a message saying what is
    wrong (not a TypeError or AttributeError from deep inside, which the DAG or the datasets API shows as
    a traceback or a 500)."""
    def text(v: Any) -> bool:
        return isinstance(v, str)

    for key in ("id_column", "session_column", "source_id", "unmapped", "write_mode"):
        v = raw.get(key)
        if v is not None and not text(v) and not (key == "source_id" and type(v) in (int, float)):
            raise fail(f"{key} must be text, not {v!r}")
    fields = raw.get("fields")
    if fields is not None and not isinstance(fields, dict):
        raise fail(f"fields must map column names to targets (e.g. {{email: traits.email}}), not {fields!r}")
    examples = {"defaults": "{traits.plan: free}", "derived": '{data.pii.name: "{first} {last}"}',
                "identity_normalize": "{email: [trim, lower]}"}
    for key, example in examples.items():
        v = raw.get(key)
        if v is not None and not isinstance(v, dict):
            what = {"defaults": "targets to values", "derived": "targets to templates"}.get(
                key, "identity columns to steps")
            raise fail(f"{key} must map {what}, e.g. {example}, not {v!r}")
        for k, item in (v or {}).items():
            if not text(k):
                raise fail(f"{key}: {k!r} must be text (a {'column' if key == 'identity_normalize' else 'target'})")
            if key == "derived" and not text(item):
                raise fail(f"derived {k!r}: the template must be text, not {item!r}")
    identity = raw.get("identity")
    if identity is not None and not (text(identity) or isinstance(identity, list) and all(map(text, identity))):
        raise fail(f"identity must be a column name or a list of them, not {identity!r}")
    for key, parts in (("time", ("column", "format")), ("event_type", ("column", "value"))):
        v = raw.get(key)
        if v is None or text(v):
            continue
        if not isinstance(v, dict) or not set(v) <= set(parts) or not all(map(text, v.values())):
            raise fail(f"{key} must be text or {{{': ..., '.join(parts)}: ...}} with text values, not {v!r}")


def _check_target(kind: str, target: str, fail) -> None:
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", target):
        raise fail(f"target {target!r} is not a dotted path")
    if target.split(".")[0] not in TARGET_ROOTS[kind]:
        raise fail(f"target {target!r}: a {kind} can only be mapped under {sorted(TARGET_ROOTS[kind])}")


def parse_time(text: str, fmt: str, column: str) -> datetime:
    t = text.strip()
    if t.startswith(DATE_PREFIX) or fmt == "epoch":
        return parse_epoch_datetime(t, column)
    try:
        if fmt == "epoch_ms":
            return parse_epoch_datetime(str(float(t) / 1000), column)
        dt = datetime.fromisoformat(t.replace("Z", "+00:00")) if fmt == "iso" else datetime.strptime(t, fmt)
    except ValueError:
        raise RowError(f"column '{column}': not a datetime in format {fmt}") from None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    try:  # 9999-12-31T23:59:59-01:00 or 0001-01-01T00:00:00+01:00 have no UTC datetime
        return dt.astimezone(UTC)
    except OverflowError:
        raise RowError(f"column '{column}': datetime out of range (years 1..9999 in UTC)") from None


def _as_json(value: Any, what: str, fail: Callable[[str], MappingError]) -> Any:
    """A default as JSON reads it back: object keys as text (YAML reads ``{1: small}`` with a number as the
    key, which the documents' JSON cannot hold: it failed the whole import), dates as ISO text. A value JSON
    cannot hold (an integer past 64 bits) is a mapping error."""
    if value is None or isinstance(value, str | bool):
        return value
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except (TypeError, orjson.JSONEncodeError) as e:
        raise fail(f"{what} is not a JSON value: {e}") from None


class Mapper:
    """Applies a ``Mapping`` to rows. ``unit_key`` names the source unit for default ids."""

    def __init__(self, mapping: Mapping, *, unit_key: str, now: datetime):
        self.m = mapping
        self.unit_key = unit_key
        self.now = now
        self._now_iso = iso(now) or ""
        self._mapped_columns = mapping.source_columns()
        self._event_names: dict[str, str] = {}
        # Per-row work is the hot path: split every target path once, here.
        self._keys: dict[str, tuple[str, ...]] = {}
        self._unmapped: list[tuple[str, str]] = []  # (column, target) for the current header
        self._header: frozenset[str] = frozenset()

    def _split(self, target: str) -> tuple[str, ...]:
        keys = self._keys.get(target)
        if keys is None:
            keys = self._keys[target] = tuple(target.split("."))
        return keys

    def _unmapped_columns(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        """Unmapped columns of this row's header (rows of one file share it; recomputed if not)."""
        if row.keys() != self._header:  # a set comparison done in C
            self._header = frozenset(row)
            self._unmapped = [(c, f"{self.m.unmapped}.{_safe_key(c)}") for c in row if c not in self._mapped_columns]
        return self._unmapped

    def _value(self, rule: FieldRule, text: str | None) -> Any:
        if text is None or text == "":
            if rule.required and rule.default is None:
                raise RowError(f"column '{rule.column}' is required")
            return rule.default
        if rule.type == "DATETIME":  # epoch seconds or ISO 8601, whichever the cell holds
            fmt = "epoch" if text.strip().replace(".", "", 1).isdigit() else "iso"
            return parse_time(text, fmt, rule.column).isoformat()
        if text.startswith(DATE_PREFIX):
            return parse_epoch_datetime(text, rule.column).isoformat()
        value = COERCERS[rule.type](text, rule.column)
        if rule.validate == "email" and not EMAIL_RE.match(value):
            raise RowError(f"column '{rule.column}': not a valid email address")
        if rule.validate == "phone":
            value = value.translate(_PHONE_STRIP)
            if not PHONE_RE.match(value):
                raise RowError(f"column '{rule.column}': not a valid phone number (E.164, e.g. +4930123456)")
        return value

    def _identity(self, row: dict[str, str]) -> str | None:
        """The first identity column that is not empty once normalised (identity_normalize)."""
        for column in self.m.identity:
            value = row.get(column)
            if value:
                steps = self.m.identity_normalize.get(column)
                if steps:
                    value = normalize_identity(value, steps, column)
                if value:
                    return value
        return None

    def map_row(self, row: dict[str, str], ref: int) -> Mapped:
        m = self.m
        if not all(type(v) is str for v in row.values()):  # Parquet: typed values, nulls
            row = {k: as_text(v) for k, v in row.items()}
        values: list[tuple[str, Any]] = []
        for rule in m.fields:
            v = self._value(rule, row.get(rule.column))
            if v is not None:
                values.append((rule.target, v))
        if m.unmapped != "ignore":
            for col, target in self._unmapped_columns(row):
                text = row[col]
                if text != "" and text is not None:
                    values.append((target, text))
        for target, template in m.derived.items():
            try:
                values.append((target, template.format_map(_Blank(row)).strip()))
            except (ValueError, IndexError) as e:
                raise RowError(f"derived field {target}: {e}") from None
        values.extend(m.defaults.items())
        if m.identity_normalize:
            identity = self._identity(row)
        else:
            identity = next((row[c] for c in m.identity if row.get(c)), None)
        if identity is not None and len(identity) >= 1024:
            raise RowError("identity value must be shorter than 1024 characters")

        if m.kind == "profile":
            if identity is None:
                raise RowError(f"no identity: all of {', '.join(m.identity)} are empty")
            ops = [("$set", target, v) for target, v in values]
            return Mapped("profile", profile_id_for(identity), operations=ops)

        when = self.now
        if m.time_column:
            text = row.get(m.time_column) or ""
            if not text:
                raise RowError(f"column '{m.time_column}' (time) is empty")
            when = parse_time(text, m.time_format, m.time_column)
            if not MIN_TIME <= when <= MAX_TIME:  # the epoch path's window: event indices are per month
                raise RowError(f"column '{m.time_column}' (time) out of range (1970..3000)")
        if m.id_column:
            doc_id = (row.get(m.id_column) or "").strip()
            if not doc_id:
                raise RowError(f"column '{m.id_column}' (id) is empty")
            if len(doc_id) > 512:
                raise RowError(f"column '{m.id_column}' (id) is longer than 512 characters")
        else:
            doc_id = deterministic_id(self.unit_key, ref)
        doc = new_document(m.kind, doc_id, self._now_iso)
        for target, v in values:
            node = doc
            *parents, last = self._split(target)
            for key in parents:
                nxt = node.get(key)
                if not isinstance(nxt, dict):
                    nxt = node[key] = {}
                node = nxt
            node[last] = v
        profile = {"id": profile_id_for(identity)} if identity is not None else None
        if m.kind == "event":
            etype = row.get(m.event_type_column, "").strip() if m.event_type_column else m.event_type_value
            if not etype:
                raise RowError(f"column '{m.event_type_column}' (event type) is empty")
            doc["type"] = etype
            name = self._event_names.get(etype)
            if name is None:
                name = self._event_names[etype] = etype.replace("-", " ").replace("_", " ").capitalize()
            doc["name"] = name
            doc["metadata"]["time"]["create"] = when.replace(tzinfo=None).isoformat(timespec="microseconds")
            doc["source"] = {"id": m.source_id}
            doc["profile"] = profile
            doc["metadata"]["profile_less"] = profile is None
            sid = row.get(m.session_column) if m.session_column else None
            doc["session"] = {"id": sid, "start": None, "duration": 0, "tz": "utc"} if sid else None
        else:  # session
            doc["profile"] = profile or {"id": None}
            doc["metadata"]["time"]["timestamp"] = when.timestamp()
            doc["metadata"]["time"]["weekday"] = when.weekday()
            doc["metadata"]["time"]["insert"] = when.replace(tzinfo=None).isoformat(timespec="microseconds")
        return Mapped(m.kind, doc_id, document=doc, when=when)


def as_text(value: Any) -> str:
    """A Parquet value as the text a CSV cell would hold, so one mapping serves both formats."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=str).decode()
    return str(value)


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def _safe_key(column: str) -> str:
    key = re.sub(r"[^\w-]+", "_", column.strip().lower()).strip("_")
    return key or "column"
