"""Segment-spec messages for historical replay (SPEC §5): the rules one message must pass, and its
rewrite for a replay.

``prepare_message`` turns one archived message into the bytes that are sent:

- its original ``timestamp`` is kept (a message without one is still sent, and counted: the receiver
  then stamps it with the time it received it, which is what ``missing_timestamp`` reports);
- archived ``sentAt``, ``messageId`` and ``projectId`` are removed, in any casing (``sent_at``,
  ``MessageID``, ...), at the top level, where Segment reads them;
- a new ``messageId`` is derived from the replay name, the source unit and the original id (or the
  line number when there was none), so a rerun of the same replay sends the same ids and the receiver
  drops what it already has;
- the configured ``integrations`` object replaces the archived one (e.g. ``{"All": false, "Mixpanel": true}``
  to feed one destination only);
- ``sentAt`` is left as a fixed-width placeholder, the message's last key: the sender writes the real
  send time into the pre-built batch with one ``bytes.replace`` (see ``replay.stamp_sent_at``).

Identity rules (Segment's spec): every message needs ``userId`` or ``anonymousId``; ``track`` needs
``event``; ``group`` needs ``groupId``; ``alias`` needs ``userId`` and ``previousId``. A message above
``max_bytes`` (32 KB by default) is refused with its size, never truncated.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cdp_ingest.coerce import MAX_TIME, MIN_TIME
from cdp_ingest.documents import deterministic_id
from cdp_ingest.errors import IngestError, RowError, json_kind

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
MAX_MESSAGE_BYTES = 32 * 1024
SENT_AT_PLACEHOLDER = "0000-00-00T00:00:00.000Z"  # same width as the real value
SENT_AT_FIELD = b'"sentAt":"' + SENT_AT_PLACEHOLDER.encode() + b'"'
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
DESTINATIONS = ("segment", "tracardi")
ARCHIVE_SUFFIXES = (".gz", ".json", ".jsonl", ".ndjson", ".csv")
_ENVELOPE_HEAD = b'{"batch":['
_ENVELOPE_TAIL = b"]," + SENT_AT_FIELD + b"}"
_STRIPPED = {"sentat", "messageid", "projectid"}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


def is_archive_name(name: str) -> bool:
    """Whether a file name (no folder) is an archive file to replay: ``ARCHIVE_SUFFIXES``, not hidden
    (``.``) and not a marker or temporary file (``_``)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES) and not name.startswith((".", "_"))


class ReplayError(IngestError):
    """The replay cannot go on (destination refused auth, retries exhausted, bad configuration)."""


class ReplayConfigError(ReplayError):
    """The replay is configured in a way that must not send anything."""


# ---- configuration --------------------------------------------------------------------------------
@dataclass
class ReplaySettings:
    name: str
    destination: str = "segment"
    historical: bool = True
    integrations: dict[str, Any] | None = None
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_batch_messages: int = MAX_BATCH_MESSAGES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    rate_limit: float = 0.0  # messages per second; 0 = as fast as the receiver answers
    concurrency: int = 2
    max_retries: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    dedup_window: int = 200_000
    workers: int = 1  # processes that parse and rewrite a big JSON-lines archive while planning; 1 = in-process

    def check(self) -> ReplaySettings:
        """Refuse, before anything is read or sent, what must not run."""
        if self.destination not in DESTINATIONS:
            raise ReplayConfigError(f"replay {self.name}: destination must be one of {DESTINATIONS}, "
                                    f"not {self.destination!r}")
        if not self.historical:
            raise ReplayConfigError(
                f"replay {self.name}: the destination is configured as not accepting historical timestamps "
                f"(historical: false); replaying would stamp old messages with today's time, so nothing is sent")
        if not 0 < self.max_batch_bytes <= MAX_BATCH_BYTES:
            raise ReplayConfigError(f"replay {self.name}: max_batch_bytes must be 1..{MAX_BATCH_BYTES}")
        if not 0 < self.max_batch_messages <= MAX_BATCH_MESSAGES:
            raise ReplayConfigError(f"replay {self.name}: max_batch_messages must be 1..{MAX_BATCH_MESSAGES}")
        if not 0 < self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ReplayConfigError(f"replay {self.name}: max_message_bytes must be 1..{MAX_MESSAGE_BYTES}")
        if self.max_message_bytes + len(_ENVELOPE_HEAD) + len(_ENVELOPE_TAIL) > self.max_batch_bytes:
            raise ReplayConfigError(f"replay {self.name}: max_batch_bytes must hold one message of "
                                    f"max_message_bytes")
        if not 1 <= self.workers <= 64:
            raise ReplayConfigError(f"replay {self.name}: workers must be 1..64")
        if self.rate_limit < 0 or self.concurrency < 1:
            raise ReplayConfigError(f"replay {self.name}: rate_limit must be >= 0 and concurrency >= 1")
        if self.integrations is not None and not isinstance(self.integrations, dict):
            raise ReplayConfigError(f"replay {self.name}: integrations must be a mapping")
        return self

    @classmethod
    def from_dict(cls, name: str, cfg: dict[str, Any]) -> ReplaySettings:
        known = {k for k in cls.__dataclass_fields__ if k != "name"}
        unknown = set(cfg) - known
        if unknown:
            raise ReplayConfigError(f"replay {name}: unknown settings {sorted(map(str, unknown))}")
        for key, value in cfg.items():  # the type of each setting's default (a float also takes a whole number)
            default = getattr(cls, key, None)
            want = {bool: (bool,), int: (int,), float: (int, float)}.get(type(default))
            if want and (not isinstance(value, want) or isinstance(value, bool) and default.__class__ is not bool):
                kind = {bool: "true or false", int: "a whole number", float: "a number"}[type(default)]
                raise ReplayConfigError(f"replay {name}: {key} must be {kind}, not {value!r}")
        return cls(name=name, **cfg).check()


_PLAIN_KEYS = {"type", "event", "userId", "anonymousId", "timestamp", "properties", "traits", "context",
               "integrations", "name", "groupId", "previousId", "receivedAt", "originalTimestamp", "version",
               "channel", "category"}
_KEY_ROLE: dict[str, str] = {}  # archived key -> "" (kept) or its normalised name (stripped); keys repeat


def _role(key: str) -> str:
    role = _KEY_ROLE.get(key)
    if role is None:
        norm = key.replace("_", "").replace("-", "").lower()
        role = norm if norm in _STRIPPED else ""
        if len(_KEY_ROLE) < 10_000:  # bounded: a hostile archive's random keys cannot grow it
            _KEY_ROLE[key] = role
    return role


def parse_timestamp(value: Any) -> datetime:
    """An archived ``timestamp`` (ISO-8601 string; naive means UTC). Raises RowError when invalid."""
    if not isinstance(value, str) or not _ISO.match(value.strip()):
        raise RowError(f"timestamp {str(value)[:40]!r} is not an ISO-8601 date-time")
    text = value.strip().replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise RowError(f"timestamp {value[:40]!r} is not a valid date-time: {e}") from e
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    try:
        in_range = MIN_TIME <= dt <= MAX_TIME
    except OverflowError:
        in_range = False
    if not in_range:
        raise RowError(f"timestamp {value[:40]!r} is out of range (1970..3000)")
    return dt


def check_identity(msg: dict[str, Any]) -> None:
    kind = msg.get("type")
    if kind not in MESSAGE_TYPES:
        raise RowError(f"type {str(kind)[:40]!r} is not one of {', '.join(MESSAGE_TYPES)}")
    user, anon = msg.get("userId"), msg.get("anonymousId")
    if user in (None, "") and anon in (None, ""):
        raise RowError(f"{kind}: userId or anonymousId is required")
    if kind == "track" and not msg.get("event"):
        raise RowError("track: event is required")
    if kind == "group" and msg.get("groupId") in (None, ""):
        raise RowError("group: groupId is required")
    if kind == "alias" and (user in (None, "") or msg.get("previousId") in (None, "")):
        raise RowError("alias: userId and previousId are required")
    for key in _OBJECT_KEYS:  # objects in the Segment spec (Tracardi's payload reads them as such)
        value = msg.get(key)
        if value is not None and not isinstance(value, dict):
            raise RowError(f"{kind}: {key} must be an object, not {json_kind(value)}")


_OBJECT_KEYS = ("context", "properties", "traits")


_FAST_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|\+00:00)")


class Preparer:
    """``prepare_message`` for one (replay, source unit), with what every message shares computed once:
    the id digest's prefix state, the integrations, the limits. The replay's hot path (it runs in the
    planning worker processes too, so it holds only picklable state)."""

    def __init__(self, replay: str, unit: str, *, integrations: dict[str, Any] | None = None,
                 max_bytes: int = MAX_MESSAGE_BYTES):
        self.replay, self.unit, self.integrations, self.max_bytes = replay, unit, integrations, max_bytes
        self._prefix = f"replay\x1f{replay}\x1f{unit}\x1f".encode()

    def message_id(self, original_id: Any, line: int) -> str:
        """Deterministic: the same replay of the same archived message always gets the same id (a
        UUID-shaped BLAKE2b digest of replay name, source unit and original id or line)."""
        key = f"id:{original_id}" if original_id not in (None, "") else f"line:{line}"
        h = hashlib.blake2b(self._prefix + key.encode(), digest_size=16).hexdigest()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def prepare(self, record: dict[str, Any], line: int) -> tuple[str, bytes, bool]:
        """``(messageId, body, has_timestamp)`` for one archived message; RowError when it cannot be sent."""
        original_id = None
        msg = dict(record)
        for key in msg.keys() - _PLAIN_KEYS:  # one set operation for the usual keys; the rest are looked at
            role = _role(key)
            if not role:
                if len(_PLAIN_KEYS) < 10_000:
                    _PLAIN_KEYS.add(key)
                continue
            value = msg.pop(key)
            if role == "messageid":
                original_id = value
        check_identity(msg)
        ts = msg.get("timestamp")
        has_ts = ts not in (None, "")
        if not has_ts:
            msg.pop("timestamp", None)
        elif not (isinstance(ts, str) and _FAST_TS.fullmatch(ts) and "1970" <= ts[:4] <= "2999"
                  and _valid_utc(ts)):
            parse_timestamp(ts)  # the general rules (offsets, naive, spaces) and their error messages
        if self.integrations is not None:
            msg["integrations"] = self.integrations
        elif msg.get("integrations") is not None and not isinstance(msg["integrations"], dict):
            raise RowError(f"{msg['type']}: integrations must be an object, not {json_kind(msg['integrations'])}")
        mid = self.message_id(original_id, line)
        msg["messageId"] = mid
        msg["sentAt"] = SENT_AT_PLACEHOLDER
        try:
            body = orjson.dumps(msg, default=str)
        except orjson.JSONEncodeError as e:  # nested deeper than orjson writes (254 levels; it reads 1024)
            raise RowError(f"message cannot be written as JSON: {e}") from None
        if len(body) > self.max_bytes:
            raise RowError(f"message is {len(body)} bytes, above the {self.max_bytes}-byte limit per message")
        return mid, body, has_ts


def _valid_utc(ts: str) -> bool:
    """A UTC ISO time of years 1970..2999 whose date and time exist (the fast path of parse_timestamp)."""
    try:
        datetime.fromisoformat(ts)
    except ValueError:
        return False
    return True


def prepare_message(record: dict[str, Any], *, replay: str, unit: str, line: int,
                    integrations: dict[str, Any] | None = None,
                    max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[str, bytes, bool]:
    """``(messageId, body, has_timestamp)`` for one archived message; RowError when it cannot be sent."""
    return Preparer(replay, unit, integrations=integrations, max_bytes=max_bytes).prepare(record, line)


# ---- Tracardi's /track ----------------------------------------------------------------------------
_TRACARDI_TYPES = {"page": "page-view", "screen": "screen-view"}


def tracardi_event(msg: dict[str, Any]) -> dict[str, Any]:
    """One Segment message as a Tracardi tracker event; its original time in ``time.create/insert``."""
    kind = msg["type"]
    ts = msg.get("timestamp")
    when = parse_timestamp(ts).astimezone(UTC).isoformat() if ts else None
    if kind == "track":
        etype, props = str(msg["event"]), msg.get("properties") or {}
    elif kind == "identify":
        etype, props = "identify", {"traits": msg.get("traits") or {}}
    elif kind == "group":
        etype, props = "group", {"groupId": msg.get("groupId"), "traits": msg.get("traits") or {}}
    elif kind == "alias":
        etype, props = "alias", {"previousId": msg.get("previousId")}
    else:
        etype, props = _TRACARDI_TYPES[kind], {"name": msg.get("name"), **(msg.get("properties") or {})}
    return {"id": msg["messageId"], "type": etype.strip().lower().replace(" ", "-"), "properties": props,
            "context": msg.get("context") or {}, "time": {"create": when, "insert": when}, "options": {}}


def tracardi_keys(msg: dict[str, Any]) -> tuple[str, str]:
    """(profile id, session id) of a message: userId (else anonymousId); the session the archive names
    (``context.sessionId`` / ``properties.session_id``) or one per profile and day."""
    profile = str(msg.get("userId") or msg.get("anonymousId"))
    ctx = msg.get("context") or {}
    props = msg.get("properties") or {}
    session = ctx.get("sessionId") or ctx.get("session_id") or props.get("session_id")
    if not session:
        ts = msg.get("timestamp")
        day = parse_timestamp(ts).date().isoformat() if ts else "no-time"
        session = deterministic_id("replay-session", profile, day)
    return profile, str(session)


def tracardi_payloads(messages: list[dict[str, Any]], source_id: str) -> list[dict[str, Any]]:
    """Tracker payloads for a batch: one per (profile, session), events in archive order, with the
    session/profile ``metadata.time`` taken from the earliest event."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for msg in messages:
        groups.setdefault(tracardi_keys(msg), []).append(tracardi_event(msg))
    payloads = []
    for (profile, session), events in groups.items():
        times = [e["time"]["create"] for e in events if e["time"]["create"]]
        first = min(times) if times else None
        meta = {"time": {"insert": first, "create": first}}
        payloads.append({"source": {"id": source_id}, "session": {"id": session, "metadata": meta},
                         "profile": {"id": profile, "metadata": meta}, "events": events, "context": {},
                         "properties": {}, "options": {"saveSession": True, "saveEvents": True}})
    return payloads
