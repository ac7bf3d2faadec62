"""SFTP manifests (SPEC §2, modelled on CleverTap's SFTP import): model, parser, per-row interpretation.

A client uploads a CSV data file and then a JSON manifest such as::

    {"fileName": "users-2026-11-23.csv", "type": "profile", "clientEmail": "ops@example.com",
     "columns": {"Customer ID": {"ctName": "identity"},
                 "Score": {"ctName": "score", "dataType": "INTEGER"}}}

``parse_manifest`` validates it into a ``Manifest`` (any problem is a ``ManifestError`` naming the key),
``check_header`` checks it against the CSV header once per file (``ManifestError``, code
``bad_manifest``), and ``interpret_row`` turns each CSV row into a ``RowResult`` or raises a ``RowError``
whose message becomes the row's ``Failure Description`` in the error CSV.

Decisions (where SPEC §2 and CleverTap leave room):

* **Unknown keys are rejected**, at the top level and inside a column mapping, with a "did you mean"
  hint for case slips (``filename`` -> ``fileName``). A misspelt optional key would otherwise be
  silently ignored and import data under the wrong names. Duplicate JSON keys are rejected too.
* Special targets (``identity``, ``objectId``, ``fbId``, ``gpId``, ``ts``, ``evtName``) and the
  ``MSG-*`` preferences are matched case-insensitively and stored under their canonical spelling, so an
  unmapped CSV column ``Identity`` is an identity column. Other targets are kept exactly as written.
* ``type`` and ``dataType`` are case-insensitive; ``columns`` may be absent or ``null``.
* ``fileName`` must be a bare name in the manifest's folder: no ``/`` or ``\\``, not absolute (also no
  ``C:`` drive prefix), not ``.``/``..``, not hidden, no control characters (NUL included), no
  surrounding whitespace, at most 255 UTF-8 bytes, and not itself a ``.manifest``.
* Cells are trimmed; an empty cell means "not given" (no property, no operation), except a ``$delete``
  operation, which needs no value. A row with more fields than the header is rejected; missing trailing
  fields (``None`` from ``csv.DictReader``) are empty cells.
* Identity and event-name values are always text (their ``dataType`` is ignored); identities may be up
  to ``MAX_IDENTITY_LEN`` characters inclusive. Phone targets (``phone``, any case) are validated and
  normalised to ``+<digits>`` whatever their ``dataType``.
* Profile files: ``<col>.operation`` (exact, lower-case suffix) gives the operation of ``<col>`` on that
  row; the value is trimmed and case-insensitive, empty means ``$set``. Operation columns may only
  refer to property columns present in the header (not identity/ts/MSG-*), and are not allowed in event
  files. ``RowResult.operations`` lists every operation (``$set`` included) in column order;
  ``RowResult.properties`` holds the ``$set`` values only, so applying both is harmless (``$set`` is
  idempotent and every target appears at most once per row).
* ``MSG-*`` preferences exist in profile files only (booleans; unknown ``MSG-`` names are refused); in an
  event file a ``MSG-*`` column is an ordinary event property. ``evtName`` is refused in profile files.
* Event files must have an ``evtName`` column (checked once on the header rather than failing every
  row); the event-property limit counts the properties a row actually carries.
* Reserved event names: see ``RESERVED_EVENT_NAMES``; comparison ignores case and repeated spaces.

Messages name keys, columns and expected types, never cell values (no PII). The event name is echoed
when it is reserved: it is one of our fixed list, not user data.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from cdp_ingest.coerce import coerce, parse_epoch_datetime, to_boolean
from cdp_ingest.errors import ManifestError, RowError, json_kind

MANIFEST_SUFFIX = ".manifest"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_NAME_BYTES = 255  # NAME_MAX on Linux filesystems
MAX_COLUMNS = 1024  # per manifest and per CSV header (SPEC §7 "column limits")
MAX_IDENTITY_LEN = 1023  # SPEC §2: identities are *under* 1024 characters
MAX_EVENT_PROPERTIES = 100
MAX_EVENT_NAME_LEN = 512
MAX_EMAIL_LEN = 254  # RFC 5321 path limit

TYPES = ("event", "profile")
DATA_TYPES = ("STRING", "INTEGER", "FLOAT", "BOOLEAN", "LONG")
DEFAULT_DATA_TYPE = "STRING"
MANIFEST_KEYS = ("fileName", "type", "clientEmail", "columns")
COLUMN_KEYS = ("ctName", "dataType")

IDENTITY_TARGETS = ("identity", "objectId", "fbId", "gpId")
TS_TARGET = "ts"
EVENT_NAME_TARGET = "evtName"
SPECIAL_TARGETS = (*IDENTITY_TARGETS, TS_TARGET, EVENT_NAME_TARGET)
PREFERENCE_TARGETS = ("MSG-sms", "MSG-email", "MSG-whatsapp", "MSG-push", "MSG-dndSMS", "MSG-dndEmail")
PREFERENCE_PREFIX = "msg-"  # lower-cased
PHONE_TARGET = "phone"  # lower-cased

OPERATION_SUFFIX = ".operation"
SET, ADD, REMOVE, DELETE = "$set", "$add", "$remove", "$delete"
OPERATIONS = (SET, ADD, REMOVE, DELETE)

# System events a client must not forge from a file: they are raised by the platform itself (SDK
# lifecycle, campaign delivery/engagement, attribution, geofencing, subscriptions). Modelled on
# CleverTap's documented system events; not exhaustive — add names here, display spelling, and they are
# compared case-insensitively with runs of whitespace collapsed.
RESERVED_EVENT_NAMES = frozenset(
    {
        "App Installed",
        "App Launched",
        "App Uninstalled",
        "App Version Changed",
        "Notification Sent",
        "Notification Delivered",
        "Notification Viewed",
        "Notification Clicked",
        "Notification Replied",
        "Push Impressions",
        "Reply Sent",
        "UTM Visited",
        "Stayed",
        "Geocluster Entered",
        "Geocluster Exited",
        "Channel Subscribed",
        "Channel Unsubscribed",
        "Identity Set",
        "Identity Reset",
    }
)

_PHONE_RE = re.compile(r"\+[0-9]{8,15}")
# Pragmatic address check: one "@", a local part without spaces, a dotted domain of LDH labels.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_CANONICAL = {t.lower(): t for t in (*SPECIAL_TARGETS, *PREFERENCE_TARGETS)}
_RESERVED_FOLDED = frozenset(" ".join(n.split()).casefold() for n in RESERVED_EVENT_NAMES)


@dataclass(frozen=True)
class Column:
    source: str  # CSV column
    target: str  # property it is imported as (special targets in canonical spelling)
    data_type: str = DEFAULT_DATA_TYPE


@dataclass(frozen=True)
class Manifest:
    name: str
    file_name: str
    type: str
    client_email: str
    columns: dict[str, Column] = field(default_factory=dict)

    def column_for(self, csv_column: str) -> Column:
        """The mapped column, or the CSV column imported under its own name as STRING."""
        mapped = self.columns.get(csv_column)
        return mapped if mapped is not None else _identity_column(csv_column)

    @property
    def is_event(self) -> bool:
        return self.type == "event"

    @property
    def is_profile(self) -> bool:
        return self.type == "profile"


@dataclass
class RowResult:
    identity: dict[str, str] = field(default_factory=dict)
    ts: datetime | None = None
    event_name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    operations: list[tuple[str, str, Any]] = field(default_factory=list)
    preferences: dict[str, bool] = field(default_factory=dict)


def canonical_target(name: str) -> str:
    """Special targets and MSG-* preferences in their canonical spelling; anything else unchanged."""
    return _CANONICAL.get(name.lower(), name)


def is_reserved_event_name(name: str) -> bool:
    return " ".join(name.split()).casefold() in _RESERVED_FOLDED


@lru_cache(maxsize=4096)
def _identity_column(csv_column: str) -> Column:
    return Column(csv_column, canonical_target(csv_column), DEFAULT_DATA_TYPE)


# ---------------------------------------------------------------------------------------------- parsing


def parse_manifest(raw: bytes, name: str, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """Validate a manifest's bytes; ``name`` is its file name (it must end in ``.manifest``)."""
    problem = _bare_name_problem(name)
    if problem:
        raise ManifestError(f"manifest name {name!r} {problem}")
    if not name.endswith(MANIFEST_SUFFIX) or name == MANIFEST_SUFFIX:
        raise ManifestError(f"manifest name {name!r} must end in '{MANIFEST_SUFFIX}'")
    if len(raw) > max_bytes:
        raise ManifestError(f"manifest {name} is too large ({len(raw)} bytes, limit {max_bytes})")
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {name} is not valid UTF-8 (bad byte at offset {e.start})") from None
    if not text.strip():
        raise ManifestError(f"manifest {name} is empty")
    doc = _load_json(text, name)
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {name} must be a JSON object, not {json_kind(doc)}")
    _reject_unknown_keys(doc, MANIFEST_KEYS, f"manifest {name}")

    file_name = _required_string(doc, "fileName", name)
    problem = _bare_name_problem(file_name)
    if problem is None and file_name.endswith(MANIFEST_SUFFIX):
        problem = f"must name the data file, not a manifest (ends in '{MANIFEST_SUFFIX}')"
    if problem:
        raise ManifestError(f"manifest {name}: 'fileName' {problem}")

    kind = _required_string(doc, "type", name).strip().lower()
    if kind not in TYPES:
        raise ManifestError(
            f"manifest {name}: 'type' must be 'event' or 'profile', got {_short(doc['type'])}"
        )

    email = _required_string(doc, "clientEmail", name).strip()
    if len(email) > MAX_EMAIL_LEN or not _EMAIL_RE.fullmatch(email):
        raise ManifestError(f"manifest {name}: 'clientEmail' is not a valid email address")

    columns = _parse_columns(doc.get("columns"), kind, name)
    return Manifest(name=name, file_name=file_name, type=kind, client_email=email, columns=columns)


def _load_json(text: str, name: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise ManifestError(f"manifest {name} has duplicate key {_short(key)}")
            obj[key] = value
        return obj

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"manifest {name} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise ManifestError(f"manifest {name} is not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits (int_max_str_digits)
        raise ManifestError(f"manifest {name} is not valid JSON: {str(e)[:120]}") from None


def _parse_columns(spec: Any, kind: str, name: str) -> dict[str, Column]:
    if spec is None:
        return {}
    where = f"manifest {name}"
    if not isinstance(spec, dict):
        raise ManifestError(
            f"{where}: 'columns' must be an object mapping CSV column names to "
            f'{{"ctName": ..., "dataType": ...}}, not {json_kind(spec)}'
        )
    if len(spec) > MAX_COLUMNS:
        raise ManifestError(f"{where}: 'columns' maps {len(spec)} columns, limit {MAX_COLUMNS}")
    columns: dict[str, Column] = {}
    by_target: dict[str, str] = {}
    for source, mapping in spec.items():
        if not source.strip():
            raise ManifestError(f"{where}: 'columns' has an empty CSV column name")
        col = f"{where}: column {_short(source)}"
        if source.endswith(OPERATION_SUFFIX):
            raise ManifestError(f"{col} is an operation column and cannot be mapped")
        if not isinstance(mapping, dict):
            raise ManifestError(f"{col} must map to an object with 'ctName', not {json_kind(mapping)}")
        _reject_unknown_keys(mapping, COLUMN_KEYS, col)
        if "ctName" not in mapping:
            raise ManifestError(f"{col}: 'ctName' is missing")
        ct_name = mapping["ctName"]
        if not isinstance(ct_name, str):
            raise ManifestError(f"{col}: 'ctName' must be a string, not {json_kind(ct_name)}")
        if not ct_name.strip():
            raise ManifestError(f"{col}: 'ctName' is empty")
        target = canonical_target(ct_name.strip())
        data_type = mapping.get("dataType")
        if data_type is None:
            data_type = DEFAULT_DATA_TYPE
        elif not isinstance(data_type, str) or data_type.strip().upper() not in DATA_TYPES:
            raise ManifestError(
                f"{col}: unknown dataType {_short(data_type)} (expected one of {', '.join(DATA_TYPES)})"
            )
        else:
            data_type = data_type.strip().upper()
        target_problem = _target_problem(target, kind)
        if target_problem:
            raise ManifestError(f"{col}: {target_problem}")
        if target in by_target:
            raise ManifestError(
                f"{where}: columns {_short(by_target[target])} and {_short(source)} "
                f"both map to target {_short(target)}"
            )
        by_target[target] = source
        columns[source] = Column(source, target, data_type)
    return columns


def _target_problem(target: str, kind: str) -> str | None:
    if kind != "profile":
        return None
    if target == EVENT_NAME_TARGET:
        return f"target '{EVENT_NAME_TARGET}' is only allowed in event files"
    if target.lower().startswith(PREFERENCE_PREFIX) and target not in PREFERENCE_TARGETS:
        return (
            f"unknown communication preference {_short(target)} "
            f"(expected one of {', '.join(PREFERENCE_TARGETS)})"
        )
    return None


def _bare_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name in the current folder, or None."""
    if not name:
        return "is empty"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "must not contain NUL or other control characters"
    if name != name.strip():
        return "must not start or end with whitespace"
    if name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        return "must be a bare file name, not an absolute path"
    if "/" in name or "\\" in name:
        return "must be a bare file name in the manifest's folder (no '/' or '\\')"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if name.startswith("."):
        return "must not name a hidden file (leading '.')"
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        return f"is longer than {MAX_FILE_NAME_BYTES} bytes"
    return None


def _required_string(doc: Mapping[str, Any], key: str, name: str) -> str:
    if key not in doc or doc[key] is None:
        raise ManifestError(f"manifest {name}: '{key}' is missing")
    value = doc[key]
    if not isinstance(value, str):
        raise ManifestError(f"manifest {name}: '{key}' must be a string, not {json_kind(value)}")
    if not value.strip():
        raise ManifestError(f"manifest {name}: '{key}' is empty")
    return value


def _reject_unknown_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if not unknown:
        return
    by_lower = {a.lower(): a for a in allowed}
    hints = [
        f"{_short(k)} (did you mean '{by_lower[k.lower()]}'?)" if k.lower() in by_lower else _short(k)
        for k in unknown
    ]
    noun = "key" if len(unknown) == 1 else "keys"
    raise ManifestError(f"{where}: unknown {noun} {', '.join(hints)} (allowed: {', '.join(allowed)})")


def _short(value: Any, limit: int = 60) -> str:
    """repr of manifest content (never row data) for messages, bounded in length."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------- header


def check_header(manifest: Manifest, header: list[str]) -> None:
    """Fail the file (``bad_manifest``) when its header cannot be imported with this manifest."""
    where = f"manifest {manifest.name} does not fit the header of {manifest.file_name}"
    if not header:
        raise ManifestError(f"{where}: the header row is empty")
    if len(header) > MAX_COLUMNS:
        raise ManifestError(f"{where}: {len(header)} columns, limit {MAX_COLUMNS}")
    seen: set[str] = set()
    for position, column in enumerate(header, start=1):
        if not column.strip():
            raise ManifestError(f"{where}: column {position} has no name")
        if column in seen:
            raise ManifestError(f"{where}: column {_short(column)} appears more than once")
        seen.add(column)

    missing = [c for c in manifest.columns if c not in seen]
    if missing:
        raise ManifestError(f"{where}: mapped columns missing from the header: {_names(missing)}")

    data_columns = header
    if manifest.is_profile:
        data_columns = [c for c in header if not c.endswith(OPERATION_SUFFIX)]
        for op_column in header:
            if not op_column.endswith(OPERATION_SUFFIX):
                continue
            base = op_column[: -len(OPERATION_SUFFIX)]
            if base not in seen:
                raise ManifestError(
                    f"{where}: operation column {_short(op_column)} has no column {_short(base)}"
                )
            target = manifest.column_for(base).target
            if target in SPECIAL_TARGETS or target in PREFERENCE_TARGETS:
                raise ManifestError(
                    f"{where}: operation column {_short(op_column)} refers to {_short(target)}; "
                    "operations apply to profile properties only"
                )
    else:
        op_columns = [c for c in header if c.endswith(OPERATION_SUFFIX)]
        if op_columns:
            raise ManifestError(
                f"{where}: operation columns are only allowed in profile files: {_names(op_columns)}"
            )

    by_target: dict[str, str] = {}
    for column in data_columns:
        target = manifest.column_for(column).target
        if target in by_target:
            raise ManifestError(
                f"{where}: columns {_short(by_target[target])} and {_short(column)} "
                f"both import as {_short(target)}"
            )
        by_target[target] = column
        problem = _target_problem(target, manifest.type)
        if problem:
            raise ManifestError(f"{where}: column {_short(column)}: {problem}")

    if not any(t in by_target for t in IDENTITY_TARGETS):
        raise ManifestError(
            f"{where}: no identity column (a column named or mapped to one of {', '.join(IDENTITY_TARGETS)})"
        )
    if manifest.is_event and EVENT_NAME_TARGET not in by_target:
        raise ManifestError(
            f"{where}: no event name column (a column named or mapped to '{EVENT_NAME_TARGET}')"
        )


def _names(columns: list[str]) -> str:
    return ", ".join(_short(c) for c in columns)


# -------------------------------------------------------------------------------------------------- rows


def interpret_row(manifest: Manifest, row: Mapping[str, str | None]) -> RowResult:
    """One CSV row (``csv.DictReader`` shape) → ``RowResult``; ``RowError`` describes the one failure."""
    if None in row:  # csv.DictReader's restkey: the row has more fields than the header
        extra = cast(Mapping[Any, Any], row)[None]
        count = len(extra) if isinstance(extra, list) else 1
        raise RowError(f"row has {count} more field(s) than the header")
    profile = manifest.is_profile
    result = RowResult()
    for source, raw in row.items():
        if source is None or (profile and source.endswith(OPERATION_SUFFIX)):
            continue  # operation columns are read together with their base column
        column = manifest.column_for(source)
        target = column.target
        cell = raw.strip() if isinstance(raw, str) else ""
        if target in SPECIAL_TARGETS:
            if cell:
                _special(result, target, cell, source)
            continue
        if profile and target in PREFERENCE_TARGETS:
            if cell:
                result.preferences[target] = to_boolean(cell, source)
            continue
        op = _operation(row, source) if profile else SET
        if op == DELETE:
            result.operations.append((DELETE, target, None))
            continue
        if not cell:
            continue
        if target.lower() == PHONE_TARGET:
            value: Any = _phone(cell, source)
        else:
            value = coerce(cell, column.data_type, source)
        if profile:
            result.operations.append((op, target, value))
            if op == SET:
                result.properties[target] = value
        else:
            result.properties[target] = value

    if not result.identity:
        raise RowError(f"no identity: at least one of {', '.join(IDENTITY_TARGETS)} must have a value")
    if manifest.is_event:
        if result.event_name is None:
            raise RowError(f"event name ('{EVENT_NAME_TARGET}') is missing")
        if is_reserved_event_name(result.event_name):
            raise RowError(
                f"event name '{result.event_name}' is a reserved system event and cannot be imported"
            )
        if len(result.properties) > MAX_EVENT_PROPERTIES:
            raise RowError(
                f"event has {len(result.properties)} properties; at most {MAX_EVENT_PROPERTIES} are allowed"
            )
    return result


def _special(result: RowResult, target: str, cell: str, source: str) -> None:
    if target == TS_TARGET:
        result.ts = parse_epoch_datetime(cell, source)
    elif target == EVENT_NAME_TARGET:
        if len(cell) > MAX_EVENT_NAME_LEN:
            raise RowError(f"column '{source}': event name longer than {MAX_EVENT_NAME_LEN} characters")
        result.event_name = cell
    else:
        if len(cell) > MAX_IDENTITY_LEN:
            raise RowError(f"column '{source}': {target} must be shorter than {MAX_IDENTITY_LEN + 1} characters")
        result.identity[target] = cell


def _operation(row: Mapping[str, str | None], source: str) -> str:
    op_column = source + OPERATION_SUFFIX
    raw = row.get(op_column)
    op = raw.strip().lower() if isinstance(raw, str) else ""
    if not op:
        return SET
    if op not in OPERATIONS:
        raise RowError(f"column '{op_column}': invalid operation; expected one of {', '.join(OPERATIONS)}")
    return op


def _phone(cell: str, source: str) -> str:
    number = cell.replace(" ", "").replace("-", "")
    if not _PHONE_RE.fullmatch(number):
        raise RowError(
            f"column '{source}': invalid phone number; expected E.164 ('+' then 8 to 15 digits, "
            "spaces and dashes allowed)"
        )
    return number
