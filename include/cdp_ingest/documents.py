"""Tracardi-shaped profile, session and event documents and dotted-path helpers.

The skeletons follow ``shared/reference/tracardi-*.json``: imports fill what the source gives and
leave the rest at Tracardi's defaults, so the documents are usable by Tracardi as they are.
Every imported document also carries ``metadata.aux.cdp`` = which import and which source row wrote
it; the store uses it to tell a retry of the same import from a real duplicate.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

KINDS = ("profile", "session", "event")
# Fixed namespace: the same identity / unit+row always gives the same id, on any machine.
ID_NAMESPACE = uuid.UUID("9b1f5a9e-3c3e-4a52-9a57-2b0c6d1f6c10")


def deterministic_id(*parts: object) -> str:
    """A stable UUID from natural-key parts (identity, unit fingerprint + row number, ...)."""
    return str(uuid.uuid5(ID_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def fingerprint_id(path: str, size: int, checksum: str) -> str:
    return hashlib.sha256(f"{path}\x1f{size}\x1f{checksum}".encode()).hexdigest()[:32]


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(timespec="microseconds")


# ---- dotted paths ---------------------------------------------------------------------------------
def get_path(doc: dict, path: str, default: Any = None) -> Any:
    node: Any = doc
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


_PARENTS: dict[str, tuple[tuple[str, ...], str]] = {}  # path -> (parent keys, last key); paths repeat per row


def _split(path: str) -> tuple[tuple[str, ...], str]:
    hit = _PARENTS.get(path)
    if hit is None:
        *parents, last = path.split(".")
        hit = (tuple(parents), last)
        if len(_PARENTS) < 100_000:
            _PARENTS[path] = hit
    return hit


def set_path(doc: dict, path: str, value: Any) -> None:
    parents, last = _split(path)
    node = doc
    for key in parents:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = node[key] = {}
        node = nxt
    node[last] = value


def delete_path(doc: dict, path: str) -> bool:
    keys = path.split(".")
    node: Any = doc
    for key in keys[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return False
    return node.pop(keys[-1], _MISSING) is not _MISSING


_MISSING = object()


def apply_operation(doc: dict, op: str, path: str, value: Any) -> None:
    """Profile operations (SPEC §2). Arrays behave as sets, which makes every operation idempotent:
    replaying a file after a failure leaves the same profile as one clean pass."""
    if op == "$set":
        set_path(doc, path, value)
    elif op == "$delete":
        delete_path(doc, path)
    elif op in ("$add", "$remove"):
        current = get_path(doc, path)
        items = [] if current is None else list(current) if isinstance(current, list) else [current]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if op == "$add" and v not in items:
                items.append(v)
            elif op == "$remove":
                items = [x for x in items if x != v]
        set_path(doc, path, items)
    else:
        raise ValueError(f"unknown profile operation {op!r}")


# ---- skeletons --------------------------------------------------------------------------------------
_PROFILE: dict[str, Any] = {
    "id": None, "ids": [],
    "metadata": {"time": {"insert": None, "create": None, "update": None, "segmentation": None,
                          "visit": {"last": None, "current": None, "count": 0, "tz": None}},
                 "aux": {}, "status": None},
    "stats": {"visits": 0, "views": 0, "counters": {}},
    "traits": {}, "segments": [], "interests": {}, "consents": {}, "active": True, "aux": {},
    "data": {"pii": {}, "contact": {}, "identifier": {}, "devices": {}, "media": {}, "preferences": {},
             "job": {}, "loyalty": {}},
}
_SESSION: dict[str, Any] = {
    "id": None,
    "metadata": {"time": {"insert": None, "update": None, "timestamp": None, "duration": 0, "weekday": None},
                 "channel": None, "aux": {}, "status": "completed"},
    "profile": {"id": None}, "device": {}, "os": {}, "app": {}, "utm": {}, "context": {}, "properties": {},
    "traits": {}, "aux": {},
}
_EVENT: dict[str, Any] = {
    "id": None, "name": None, "type": None,
    "metadata": {"aux": {}, "time": {"insert": None, "create": None, "update": None, "process_time": 0,
                                     "total_time": 0},
                 "ip": None, "status": "imported", "channel": None, "profile_less": False, "debug": False,
                 "valid": True, "error": False, "warning": False, "merge": False, "instance": None},
    "utm": {}, "properties": {}, "traits": {}, "source": {"id": None}, "session": None, "profile": None,
    "context": {}, "request": {}, "config": {}, "tags": {"values": [], "count": 0}, "aux": {}, "device": {},
    "os": {}, "app": {}, "hit": {}, "data": {}, "journey": {"state": None},
}
# A new profile's insert/update times in a document made before its merge (fastmap.ProfileBatchMapper);
# the merge puts its own time there (both come before any mapped value, as the first two occurrences).
NOW_MARK = b'"@@cdp-now@@"'
SKELETONS = {"profile": _PROFILE, "session": _SESSION, "event": _EVENT}
# orjson.loads of the serialised skeleton is ~10x faster than copy.deepcopy, and this runs per row.
_SKELETON_JSON = {kind: orjson.dumps(doc) for kind, doc in SKELETONS.items()}


def new_document(kind: str, doc_id: str, now: datetime | str) -> dict:
    """A fresh skeleton; ``now`` may be given already formatted (callers that make many documents
    with the same insert time format it once)."""
    doc = orjson.loads(_SKELETON_JSON[kind])
    doc["id"] = doc_id
    doc["metadata"]["time"]["insert"] = now if isinstance(now, str) else iso(now)
    if kind == "profile":
        doc["ids"] = [doc_id]
    return doc


def stamp(doc: dict, import_id: str, row: int) -> dict:
    """Record which import and source row wrote the document (see module doc)."""
    doc.setdefault("metadata", {}).setdefault("aux", {})["cdp"] = {"import_id": import_id, "row": row}
    return doc


def event_index(prefix: str, when: datetime) -> str:
    """Monthly event index chosen by the event's own time, never the import time."""
    return f"{prefix}event-{when.year:04d}-{when.month:02d}"


def index_for(prefix: str, kind: str, when: datetime | None = None) -> str:
    if kind == "event":
        if when is None:
            raise ValueError("an event needs its time to choose its monthly index")
        return event_index(prefix, when)
    return f"{prefix}{kind}"


def json_schema(kind: str) -> dict:
    """A JSON schema of the target object, derived from the skeleton (``cdp-ingest schema KIND``)."""

    def node(value: Any) -> dict:
        if isinstance(value, dict):
            return {"type": "object", "properties": {k: node(v) for k, v in value.items()},
                    "additionalProperties": True}
        if isinstance(value, list):
            return {"type": "array"}
        if isinstance(value, bool):
            return {"type": "boolean"}
        if isinstance(value, int | float):
            return {"type": "number"}
        return {"type": ["string", "null"]}

    schema = node(SKELETONS[kind])
    schema["properties"]["id"] = {"type": "string"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": f"Tracardi {kind}",
            "required": ["id", "metadata"], **schema}
