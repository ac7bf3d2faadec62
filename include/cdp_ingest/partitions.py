"""Daily event partitions in an object store (SPEC §3, modelled on Hackle's data import).

Layout: ``<base>/dt=YYYY-MM-DD/*.parquet`` plus a ``_SUCCESS`` marker once the day is complete
(``cdp_ingest.partition_days``: the layout, the run's day, its deadline and summary, without Arrow).
This module turns those Parquet files into Tracardi event documents; it never touches Airflow or the
network (the DAG factory in ``plugins/cdp_ingest_airflow/partition_dags.py`` does).

The file schema (checked before any row is read; a mismatch fails the file, not its rows):

=======================  ==============================================================================
column                   type
=======================  ==============================================================================
``ts``                   timestamp, any unit; with a time zone or naive (= UTC). Truncated to ms.
``event_key``            string
``identifiers``          map<string,string>, or a string holding a JSON object. Required keys ``id``,
                         ``device_id``; optional ``user_id``, ``session_id``, ``ga_session_id``,
                         ``ga_device_id``.
``insert_id``            string UUID (also the Parquet UUID type); the dedup key
``metric_value``         decimal(24,6) (any decimal or integer type is accepted; 0 when unused)
``user_properties``      map<string,string>
``event_properties``     map<string,string>
``platform_properties``  map<string,string>; required keys ``osname``, ``appversion``
=======================  ==============================================================================

Map keys are lowercased. Two keys of one map that differ only in case reject the row when their
values differ (which one was meant cannot be told); equal values are merged. Null map values are
dropped. Other columns in the file are ignored.

Event document (Tracardi shape, ``documents.new_document("event", ...)``):

- ``id`` = ``_id`` = the canonical (lowercase, hyphenated) ``insert_id``. Events go to the monthly
  index of their own ``ts`` and are written in the source's write mode (``create`` by default), so a
  second copy of an insert_id — in the same file, another file or another day, with a ``ts`` in the
  same or another month — is counted as a duplicate: first write wins (the store claims every event id
  before writing it, also against file loads running at the same time, ``Store.bulk_load``).
- ``type`` = ``event_key``; ``name`` = its humanised form.
- ``metadata.time.create`` = ``ts`` (UTC, ISO 8601, milliseconds); ``metadata.time.insert`` = import time.
- ``profile.id`` = ``mapping.profile_id_for(user_id or id)``, the id every source derives from the same
  identity, so these events link to profiles imported from elsewhere.
- ``session`` = ``{"id": session_id, ...}`` when ``identifiers.session_id`` is set, else null.
- ``device.id`` = ``device_id``; ``os.name`` / ``os.version`` / ``app.version`` / ``device.model`` /
  ``device.brand`` from the platform keys ``osname`` / ``osversion`` / ``appversion`` / ``devicemodel`` /
  ``devicevendor``.
- ``properties`` = event_properties; ``context.identifiers`` / ``context.user_properties`` /
  ``context.platform`` = the three other maps (keys lowercased).
- ``data.metric_value`` = the metric as a **decimal string** with the column's scale (six places for
  decimal(24,6), e.g. ``"12.345600"``): exact, never rounded through a float. (A scaled integer would not
  survive either: the ``data`` bag is a ``flat_object`` field, which stores every value as a string.)
- ``source.id`` = the configured source id.

Every rejected row gets one failure description that names the column, never the value.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdp_ingest.arrow import pa
from cdp_ingest.documents import new_document
from cdp_ingest.errors import FileLevelError, RowError
from cdp_ingest.mapping import Mapped, profile_id_for
from cdp_ingest.partition_days import (  # noqa: F401 (re-exported: the pyarrow-free part of this module)
    MARKER,
    day_of_interval,
    is_data_file,
    local_deadline,
    parse_day,
    partition_prefix,
    summarize_day,
)
from cdp_ingest.readers import SourceBatch, read_batches

MAP_COLUMNS = ("identifiers", "user_properties", "event_properties", "platform_properties")
COLUMNS = ["ts", "event_key", "identifiers", "insert_id", "metric_value", "user_properties", "event_properties",
           "platform_properties"]
REQUIRED_IDENTIFIERS = ("id", "device_id")
OPTIONAL_IDENTIFIERS = ("user_id", "session_id", "ga_session_id", "ga_device_id")
REQUIRED_PLATFORM = ("osname", "appversion")
METRIC_SCALE = 6
MAX_EVENT_KEY = 255
MAX_IDENTITY = 1024
# The same window as coerce.parse_epoch_datetime: anything outside is almost always a unit mistake.
MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TS = datetime(3000, 1, 1, tzinfo=UTC)
# Rows become Python objects one batch at a time: this bounds the transform's memory (four maps per row:
# 10,000-row batches peaked ~80 MB higher than 2,000-row ones over a 25,000-row file, at the same CPU time).
BATCH_ROWS = 2_000

_STR_MAP = pa.map_(pa.string(), pa.string())
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The schema of SPEC §3, for writers (tests, the demo, the benchmark).
SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", tz="UTC")),
    ("event_key", pa.string()),
    ("identifiers", _STR_MAP),
    ("insert_id", pa.string()),
    ("metric_value", pa.decimal128(24, METRIC_SCALE)),
    ("user_properties", _STR_MAP),
    ("event_properties", _STR_MAP),
    ("platform_properties", _STR_MAP),
])


# ---- schema ---------------------------------------------------------------------------------------
def _is_string(t: pa.DataType) -> bool:
    """Text, also dictionary-encoded (pandas writes a ``category`` column so; the rows are decoded on read)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_str_map(t: pa.DataType) -> bool:
    return pa.types.is_map(t) and _is_string(t.key_type) and _is_string(t.item_type)


def _is_uuid(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        return t.extension_name in ("arrow.uuid",)
    return pa.types.is_fixed_size_binary(t) and t.byte_width == 16


def check_schema(schema: pa.Schema) -> None:
    """Raise ``FileLevelError("bad_schema")`` listing every column that is missing or mistyped."""
    problems: list[str] = []
    names = set(schema.names)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")

    def typ(name: str) -> pa.DataType | None:
        return schema.field(name).type if name in names else None

    checks = {
        "ts": (pa.types.is_timestamp, "a timestamp"),
        "event_key": (_is_string, "a string"),
        "identifiers": (lambda t: _is_str_map(t) or _is_string(t), "map<string,string> or a JSON string"),
        "insert_id": (lambda t: _is_string(t) or _is_uuid(t), "a string (UUID)"),
        "metric_value": (lambda t: pa.types.is_decimal(t) or pa.types.is_integer(t),
                         "decimal(24,6) (floats cannot be kept exact)"),
        **{c: (_is_str_map, "map<string,string>") for c in ("user_properties", "event_properties",
                                                               "platform_properties")},
    }
    for name, (ok, expected) in checks.items():
        t = typ(name)
        if t is not None and not ok(t):
            problems.append(f"column {name} must be {expected}, not {t}")
    if problems:
        raise FileLevelError("bad_schema", "Parquet schema does not match SPEC §3: " + "; ".join(problems))


# ---- reading --------------------------------------------------------------------------------------
def _metric_as_string(arr: pa.Array) -> pa.Array:
    """Decimal/integer → exact decimal text, with ``METRIC_SCALE`` places when that loses nothing."""
    t = arr.type
    if pa.types.is_integer(t):
        arr = pc.cast(arr, pa.decimal128(20, 0))  # every 64-bit integer fits
        t = arr.type
    if t.scale < METRIC_SCALE:
        wide, limit = (pa.decimal128, 38) if isinstance(t, pa.Decimal128Type) else (pa.decimal256, 76)
        try:  # checked cast: a value that would not fit leaves the column at its own scale
            arr = pc.cast(arr, wide(min(limit, t.precision + METRIC_SCALE - t.scale), METRIC_SCALE))
        except pa.ArrowInvalid:
            pass
    return pc.cast(arr, pa.string())


def normalize_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Vectorised per-column work before rows become Python objects: ``ts`` → UTC milliseconds (sub-ms
    truncated; naive = UTC), ``metric_value`` → exact decimal text, dictionary-encoded text decoded."""
    cols = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_dictionary(col.type):  # (a pandas category column) its values, as plain text
            col = col.dictionary_decode()
        if name == "ts":
            if col.type.tz is None:
                col = pc.cast(col, pa.timestamp(col.type.unit, tz="UTC"))  # naive values are UTC wall times
            if col.type.unit in ("us", "ns"):
                col = pc.floor_temporal(col, unit="millisecond")
            col = pc.cast(col, pa.timestamp("ms", tz="UTC"))
        elif name == "metric_value":
            col = _metric_as_string(col)
        cols[name] = col
    return pa.RecordBatch.from_pydict(cols)


def normalize_batches(batches: Iterable[SourceBatch]) -> Iterator[SourceBatch]:
    for sb in batches:
        yield SourceBatch(normalize_batch(sb.batch), sb.first_row, sb.bad_rows)


def read_partition_file(source: Any, *, batch_rows: int = BATCH_ROWS) -> Iterator[SourceBatch]:
    """Check the schema of one partition file (footer only), then stream its rows normalised.

    ``source``: a local path or a seekable binary file object (left open)."""
    try:
        schema = pq.read_schema(source)
    except (pa.ArrowException, OSError) as e:
        raise FileLevelError("unreadable", f"not a readable Parquet file: {e}") from e
    check_schema(schema)
    if hasattr(source, "seek"):
        source.seek(0)
    return normalize_batches(read_batches(source, "parquet", batch_rows=batch_rows, columns=COLUMNS))


# ---- rows → documents -----------------------------------------------------------------------------
def _pairs(value: Any, column: str) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return value.items()
    raise RowError(f"{column}: not a map")


def lower_keys(value: Any, column: str) -> dict[str, Any]:
    """A map (list of pairs or dict) with keys lowercased; null values dropped."""
    if value is None:
        return {}
    pairs = _pairs(value, column)
    out = {k.lower(): v for k, v in pairs if v is not None and k is not None}
    if len(out) == sum(1 for k, v in pairs if v is not None and k is not None):
        return out  # no two keys folded into one: the common case, without per-key checks
    out = {}
    for k, v in pairs:
        if v is None or k is None:
            continue
        key = k.lower()
        if key in out and out[key] != v:
            raise RowError(f"{column}: keys differing only in case ({key!r}) have different values")
        out[key] = v
    return out


def parse_identifiers(value: Any) -> dict[str, str]:
    """``identifiers`` as a map or as a JSON object in a string; keys lowercased, values strings."""
    if isinstance(value, str | bytes):
        text = value.strip()
        if not text:
            raise RowError("identifiers: missing")
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise RowError("identifiers: not a JSON object") from None
        if not isinstance(value, dict):
            raise RowError("identifiers: not a JSON object")
        for k, v in value.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, str | int)):
                raise RowError(f"identifiers: value of key {k.lower()!r} is not a string")
        value = {k: (v if isinstance(v, str) or v is None else str(v)) for k, v in value.items()}
    elif value is None:
        raise RowError("identifiers: missing")
    ids = lower_keys(value, "identifiers")
    for key in REQUIRED_IDENTIFIERS:
        if not str(ids.get(key) or "").strip():
            raise RowError(f"identifiers: required key '{key}' is missing or empty")
    return ids


def canonical_uuid(value: Any) -> str:
    if value is None or value == "":
        raise RowError("insert_id: missing")
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value  # already canonical: skip the parse (most files)
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        if isinstance(value, bytes):
            return str(uuid.UUID(bytes=value))
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError, TypeError):
        raise RowError("insert_id: not a UUID") from None


@functools.lru_cache(maxsize=4096)
def event_name(event_key: str) -> str:
    return event_key.replace("-", " ").replace("_", " ").strip().capitalize()


def display_row(row: dict[str, Any]) -> dict[str, Any]:
    """Values as an error CSV shows them: maps as JSON objects (original keys), ts in ISO 8601."""
    out = {}
    for k, v in row.items():
        if isinstance(v, list):
            v = orjson.dumps({str(a): b for a, b in v}, default=str).decode()
        elif isinstance(v, dict):
            v = orjson.dumps(v, default=str).decode()
        elif isinstance(v, datetime):
            v = v.isoformat(timespec="milliseconds")
        elif isinstance(v, bytes | uuid.UUID):
            v = str(uuid.UUID(bytes=v)) if isinstance(v, bytes) and len(v) == 16 else str(v)
        out[k] = v
    return out


class PartitionMapper:
    """Maps one partition row (Parquet values as Python objects) to a Tracardi event, or raises
    ``RowError`` with one failure description. Holds no per-file state."""

    def __init__(self, *, source_id: str, now: datetime):
        self.source_id = source_id
        self.now = now
        # the event skeleton with the import time filled in, parsed per row (cheaper than building it)
        self._skeleton = orjson.dumps(new_document("event", "", now))

    def map_row(self, row: dict[str, Any], ref: int) -> Mapped:
        try:
            return self._map(row)
        except RowError:
            row.update(display_row(row))  # the same dict goes into the error CSV: show it readably
            raise

    def _map(self, row: dict[str, Any]) -> Mapped:
        ts = row.get("ts")
        if ts is None:
            raise RowError("ts: missing")
        if not MIN_TS <= ts < MAX_TS:
            raise RowError("ts: out of range (1970..3000)")
        key = row.get("event_key")
        key = key.strip() if isinstance(key, str) else ""
        if not key:
            raise RowError("event_key: missing or empty")
        if len(key) > MAX_EVENT_KEY:
            raise RowError(f"event_key: longer than {MAX_EVENT_KEY} characters")
        ids = parse_identifiers(row.get("identifiers"))
        event_id = canonical_uuid(row.get("insert_id"))
        platform = lower_keys(row.get("platform_properties"), "platform_properties")
        for k in REQUIRED_PLATFORM:
            if not str(platform.get(k) or "").strip():
                raise RowError(f"platform_properties: required key '{k}' is missing or empty")
        user_props = lower_keys(row.get("user_properties"), "user_properties")
        event_props = lower_keys(row.get("event_properties"), "event_properties")
        identity = (ids.get("user_id") or "").strip() or ids["id"].strip()
        if len(identity) >= MAX_IDENTITY:
            raise RowError(f"identifiers: identity (user_id or id) must be shorter than {MAX_IDENTITY} characters")
        metric = row.get("metric_value")

        doc = orjson.loads(self._skeleton)
        doc["id"] = event_id
        doc["type"] = key
        doc["name"] = event_name(key)
        doc["metadata"]["time"]["create"] = ts.isoformat(timespec="milliseconds")[:23]  # UTC, offset dropped
        doc["source"] = {"id": self.source_id}
        doc["profile"] = {"id": profile_id_for(identity)}
        sid = (ids.get("session_id") or "").strip()
        doc["session"] = {"id": sid, "start": None, "duration": 0, "tz": "utc"} if sid else None
        doc["device"] = {"id": ids["device_id"]}
        if "devicemodel" in platform:
            doc["device"]["model"] = platform["devicemodel"]
        if "devicevendor" in platform:
            doc["device"]["brand"] = platform["devicevendor"]
        doc["os"] = {"name": platform["osname"]}
        if "osversion" in platform:
            doc["os"]["version"] = platform["osversion"]
        doc["app"] = {"version": platform["appversion"]}
        doc["properties"] = event_props
        doc["context"] = {"identifiers": ids, "user_properties": user_props, "platform": platform}
        doc["data"] = {"metric_value": metric if metric is not None else "0." + "0" * METRIC_SCALE}
        return Mapped("event", event_id, document=doc, when=ts)
