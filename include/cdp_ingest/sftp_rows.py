"""SFTP drop folders (SPEC §2): manifest rows → Tracardi documents, and the rules of a drop folder.

Rows. ``SftpRowMapper.map_row`` turns one CSV row, interpreted by ``manifest.interpret_row``, into a
``Mapped`` result for ``pipeline.transform_unit``:

* **Profiles** become profile *operations* (applied in file order by ``Store.merge_profiles``), on the
  profile whose id ``mapping.profile_id_for`` derives from the row's identity, so the CSV/dataset
  sources that see the same identity value update the same profile. The identity wins over the other
  identity fields; ``objectId``/``fbId``/``gpId`` alone give a namespaced key (``"objectId:<value>"``)
  so that they never collide with an identity value.

  CleverTap's standard profile properties go where Tracardi keeps them (``PROFILE_FIELDS``, matched
  case-insensitively: ``Email`` → ``data.contact.email``, ``Name`` → ``data.pii.name``...); every other
  property goes under ``traits.<name>`` (a ``.`` in the name becomes ``_``: dots are paths here).
  ``$add``/``$remove`` treat the property as a set, ``$delete`` removes it, ``$set`` replaces it.
  Identity fields are kept under ``data.identifier.id`` (identity) and ``aux.identities.<field>``.
  An ``Email`` that is not an email address rejects the row (like an invalid phone number does).

  ``MSG-*`` communication preferences are written twice, the way Tracardi reads them:
  ``data.preferences.messaging.{sms,email,whatsapp,push,dnd_sms,dnd_email}`` holds the flags as
  given, and the four subscription channels also become consents ``consents.messaging-<channel>``
  = ``{"revoke": null}`` (subscribed) or ``{"revoke": <time>}`` (unsubscribed at the row's ``ts``,
  default the processing time). The DND flags are not consents: they stay preferences only.

* **Events** become full Tracardi event documents with a deterministic id (unit fingerprint + row
  number, so reloading the same file never duplicates), ``type`` = the slug of ``evtName``, the
  properties under ``properties``, ``metadata.time.create`` = the row's ``ts`` and the monthly index
  chosen by that time. A row without ``ts`` gets the **processing time given by the caller** (the
  DAG run's logical date, never the wall clock) so a rerun lands in the same index.

Folder rules. Files are handled in upload order (modification time, then name); ``next_manifest``
decides whether the oldest manifest can be processed now or must wait (its data file still arriving,
or not there yet within the grace period); ``waiting_for_manifest`` lists data files no manifest has
claimed; ``archive_folder``/``error_file_name`` name where files go afterwards; ``check_size`` enforces
the file-size limit. Everything here is pure: the SFTP adapters feed it listings.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cdp_ingest.documents import deterministic_id, iso, new_document
from cdp_ingest.errors import FileLevelError, RowError
from cdp_ingest.manifest import (
    IDENTITY_TARGETS,
    MANIFEST_SUFFIX,
    Manifest,
    interpret_row,
)
from cdp_ingest.mapping import Mapped, profile_id_for

DEFAULT_MAX_FILE_BYTES = 5 * 1024**3  # SPEC §2: 5 GB
READ_BATCH_ROWS = 10_000
DEFAULT_SETTLE_SECONDS = 30.0
DEFAULT_DATA_FILE_GRACE_SECONDS = 15 * 60.0

# CleverTap's standard profile properties → Tracardi profile paths (keys lower-cased).
PROFILE_FIELDS = {
    "name": "data.pii.name",
    "first name": "data.pii.firstname",
    "last name": "data.pii.lastname",
    "email": "data.contact.email",
    "phone": "data.contact.phone",
    "gender": "data.pii.gender",
    "dob": "data.pii.birthday",
    "photo": "data.media.image",
    "education": "data.pii.education.level",
    "married": "data.pii.civil.status",
}
CUSTOM_ROOT = "traits"
IDENTIFIER_PATH = "data.identifier.id"
OTHER_IDENTITIES_PATH = "aux.identities"
MESSAGING_PATH = "data.preferences.messaging"
PREFERENCE_KEYS = {
    "MSG-sms": "sms",
    "MSG-email": "email",
    "MSG-whatsapp": "whatsapp",
    "MSG-push": "push",
    "MSG-dndSMS": "dnd_sms",
    "MSG-dndEmail": "dnd_email",
}
CONSENT_CHANNELS = ("sms", "email", "whatsapp", "push")
CONSENT_PREFIX = "messaging-"

_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SLUG_RE = re.compile(r"[^0-9a-z]+")

# Folder states for the oldest manifest (see ``next_manifest``).
READY = "ready"
WAIT_SETTLE = "wait_settle"  # the manifest or its data file was written moments ago: may still be growing
WAIT_DATA = "wait_data"  # the data file is not there yet, still within the grace period
HIDDEN_PREFIXES = (".",)
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".filepart")


# ------------------------------------------------------------------------------------------------ rows


def profile_key(identity: Mapping[str, str]) -> str:
    """The natural key of a row's profile: the identity value, else a namespaced other identity."""
    if identity.get("identity"):
        return identity["identity"]
    for target in IDENTITY_TARGETS[1:]:
        if identity.get(target):
            return f"{target}:{identity[target]}"
    raise RowError(f"no identity: at least one of {', '.join(IDENTITY_TARGETS)} must have a value")


@lru_cache(maxsize=8192)
def profile_path(target: str) -> str:
    """Where a profile property lives in the Tracardi profile."""
    known = PROFILE_FIELDS.get(target.lower())
    if known:
        return known
    key = target.strip().replace(".", "_") or "_"
    return f"{CUSTOM_ROOT}.{key}"


@lru_cache(maxsize=4096)
def event_type(name: str) -> str:
    """Tracardi's machine event type from a display name: ``"Product Viewed"`` → ``"product-viewed"``."""
    return _SLUG_RE.sub("-", name.casefold()).strip("-") or "event"


def _as_utc(dt: datetime) -> datetime:
    """A stdlib aware UTC datetime (Airflow hands out pendulum ones)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return datetime.fromtimestamp(dt.timestamp(), tz=UTC)


class SftpRowMapper:
    """Maps rows of one manifest's data file. ``unit_key`` is the source-unit fingerprint (stable across
    retries and forced re-imports), ``now`` the processing time (the run's logical date)."""

    def __init__(self, manifest: Manifest, *, unit_key: str, now: datetime, source_id: str = "sftp"):
        self.manifest = manifest
        self.unit_key = unit_key
        self.now = _as_utc(now)
        self.source_id = source_id

    def map_row(self, row: dict[str, str], ref: int) -> Mapped:
        result = interpret_row(self.manifest, row)
        pid = profile_id_for(profile_key(result.identity))
        if self.manifest.is_profile:
            return self._profile(result, pid, row)
        return self._event(result, pid, ref)

    # ---- profiles ------------------------------------------------------------------------------------
    def _profile(self, result: Any, pid: str, row: Mapping[str, str]) -> Mapped:
        ops: list[tuple[str, str, Any]] = []
        if result.identity.get("identity"):
            ops.append(("$set", IDENTIFIER_PATH, result.identity["identity"]))
        for target in IDENTITY_TARGETS[1:]:
            if result.identity.get(target):
                ops.append(("$set", f"{OTHER_IDENTITIES_PATH}.{target}", result.identity[target]))
        for op, target, value in result.operations:
            path = profile_path(target)
            if path == PROFILE_FIELDS["email"] and op != "$delete":
                self._check_email(value, target)
            ops.append((op, path, value))
        when = iso(result.ts or self.now)
        for target, flag in result.preferences.items():
            key = PREFERENCE_KEYS[target]
            ops.append(("$set", f"{MESSAGING_PATH}.{key}", flag))
            if key in CONSENT_CHANNELS:
                ops.append(("$set", f"consents.{CONSENT_PREFIX}{key}", {"revoke": None if flag else when}))
        return Mapped("profile", pid, operations=ops, when=result.ts or self.now)

    def _check_email(self, value: Any, target: str) -> None:
        if not isinstance(value, str) or not _EMAIL_RE.fullmatch(value):
            column = next((c.source for c in self.manifest.columns.values() if c.target == target), target)
            raise RowError(f"column '{column}': invalid email address")

    # ---- events --------------------------------------------------------------------------------------
    def _event(self, result: Any, pid: str, ref: int) -> Mapped:
        doc_id = deterministic_id(self.unit_key, ref)
        when = result.ts or self.now
        doc = new_document("event", doc_id, self.now)
        name = result.event_name
        doc["name"] = name
        doc["type"] = event_type(name)
        doc["properties"] = result.properties
        doc["metadata"]["time"]["create"] = iso(when)
        doc["metadata"]["status"] = "imported"
        doc["source"] = {"id": self.source_id}
        doc["profile"] = {"id": pid}
        doc["metadata"]["profile_less"] = False
        return Mapped("event", doc_id, document=doc, when=when)


# ---------------------------------------------------------------------------------------------- folder


@dataclass(frozen=True)
class RemoteFile:
    """One entry of a drop-folder listing (regular files only)."""

    name: str
    size: int
    mtime: float  # seconds since the epoch, as the server reports it

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "mtime": self.mtime}


def is_manifest(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIX) and name != MANIFEST_SUFFIX and not name.startswith(HIDDEN_PREFIXES)


def is_data_candidate(name: str) -> bool:
    """A file that may be a data file: not a manifest, not hidden, not an upload in progress."""
    return not (name.endswith(MANIFEST_SUFFIX) or name.startswith(HIDDEN_PREFIXES)
                or name.lower().endswith(PARTIAL_SUFFIXES))


def upload_order(files: Iterable[RemoteFile]) -> list[RemoteFile]:
    """Oldest first; the name breaks ties (SFTP times have one-second resolution)."""
    return sorted(files, key=lambda f: (f.mtime, f.name))


def peek_file_name(raw: bytes) -> str | None:
    """The manifest's ``fileName`` if it can be read at all, else None (``parse_manifest`` will say why)."""
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    name = doc.get("fileName") if isinstance(doc, dict) else None
    return name if isinstance(name, str) and name and "/" not in name and "\\" not in name else None


def readiness(manifest: RemoteFile, data: RemoteFile | None, *, now: float, settle_seconds: float,
              data_file_grace_seconds: float) -> str:
    """Whether ``manifest`` can be processed now (``READY``), or why it waits.

    A manifest uploaded moments ago may still be being written; a data file uploaded *after* its
    manifest (not the documented order) may still be growing, so it must have been quiet for
    ``settle_seconds`` too. A missing data file is waited for ``data_file_grace_seconds`` after the
    manifest arrived; after that the manifest is processed and fails with "no data file found".
    """
    if now - manifest.mtime < settle_seconds:
        return WAIT_SETTLE
    if data is None:
        return WAIT_DATA if now - manifest.mtime < data_file_grace_seconds else READY
    if data.mtime >= manifest.mtime and now - data.mtime < settle_seconds:
        return WAIT_SETTLE
    return READY


@dataclass(frozen=True)
class FolderPlan:
    """What a look at the drop folder found."""

    manifest: RemoteFile | None  # the oldest manifest, if any
    state: str | None  # its readiness
    data_file: str | None  # the data file it names (None when unreadable)
    waiting: list[RemoteFile]  # data files no manifest names yet ("waiting for manifest")
    pending: int  # manifests in the folder


def plan_folder(files: Iterable[RemoteFile], file_names: Mapping[str, str | None], *, now: float,
                settle_seconds: float = DEFAULT_SETTLE_SECONDS,
                data_file_grace_seconds: float = DEFAULT_DATA_FILE_GRACE_SECONDS) -> FolderPlan:
    """Decide about the oldest manifest of a folder listing.

    ``file_names`` maps manifest names to the data file each names (``peek_file_name``); manifests not
    in it are treated as unreadable. Only the oldest manifest is considered: files are processed in
    upload order, so a younger manifest never overtakes an older one that is still waiting.
    """
    files = list(files)
    by_name = {f.name: f for f in files}
    manifests = upload_order(f for f in files if is_manifest(f.name))
    referenced = {n for n in file_names.values() if n}
    waiting = upload_order(f for f in files if is_data_candidate(f.name) and f.name not in referenced)
    if not manifests:
        return FolderPlan(None, None, None, waiting, 0)
    first = manifests[0]
    data_name = file_names.get(first.name)
    data = by_name.get(data_name) if data_name else None
    if data_name is None:
        state = READY if now - first.mtime >= settle_seconds else WAIT_SETTLE
    else:
        state = readiness(first, data, now=now, settle_seconds=settle_seconds,
                          data_file_grace_seconds=data_file_grace_seconds)
    return FolderPlan(first, state, data_name, waiting, len(manifests))


def check_size(size: int, limit: int, name: str) -> None:
    """File-level ``too_large`` when ``size`` exceeds ``limit`` bytes."""
    if limit > 0 and size > limit:
        raise FileLevelError("too_large", f"file too large: {name} is {_human(size)}, the limit is {_human(limit)}")


def _human(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def manifest_stem(manifest_name: str) -> str:
    return manifest_name[: -len(MANIFEST_SUFFIX)] if manifest_name.endswith(MANIFEST_SUFFIX) else manifest_name


def archive_folder(outcome: str, manifest_name: str, when: datetime, tag: str) -> str:
    """Folder (relative to the account folder) that receives a manifest and its data file.

    Done: ``processed/<YYYY-MM-DD>/<manifest stem>/`` (manifest names are unique once imported, so
    this never collides). Failed: ``failed/<YYYY-MM-DD>/<manifest stem>.<tag>/`` (a failed name may be
    used again, so ``tag`` — from the activity id — keeps attempts apart).
    """
    day = _as_utc(when).strftime("%Y-%m-%d")
    stem = manifest_stem(manifest_name)
    if outcome == "done":
        return f"processed/{day}/{stem}"
    if outcome == "failed":
        return f"failed/{day}/{stem}.{tag}"
    raise ValueError(f"outcome must be 'done' or 'failed', not {outcome!r}")


def error_file_name(manifest_name: str) -> str:
    """Name of the error CSV in the account's ``errors/`` folder."""
    return f"{manifest_stem(manifest_name)}.errors.csv"


def stable_id(*parts: object) -> str:
    """A short stable id for activity-log entries (account, manifest, upload time...)."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def activity_id(account: str, manifest_name: str, mtime: float) -> str:
    """One activity entry per uploaded manifest (a re-upload under the same name is a new entry)."""
    return stable_id("manifest", account, manifest_name, int(mtime))


def waiting_id(account: str, f: RemoteFile) -> str:
    return stable_id("data", account, f.name, int(f.mtime), f.size)
