"""The ledger of source units and the per-import accounting (SPEC §7).

A *source unit* is one input file (or object, or query result) identified by its fingerprint:
path, size and SHA-256 checksum. The ledger lives in the store itself (``<prefix>import-ledger``),
so every worker of a scaled-out deployment sees the same entries, and it doubles as the activity log.

Entry life cycle: ``loading`` → ``committed`` (accounting checked) or ``failed``. A committed unit
is skipped when it shows up again; ``force=True`` re-imports it under a new generation, whose writes
then count as duplicates of the first. The ``import_id`` stays the same across retries of one
generation, which is how the store recognises a retry's own earlier writes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from cdp_ingest.documents import fingerprint_id, iso
from cdp_ingest.errors import AccountingError, FileLevelError, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceUnit:
    path: str
    size: int
    checksum: str

    @property
    def unit_id(self) -> str:
        return fingerprint_id(self.path, self.size, self.checksum)

    @classmethod
    def from_stream(cls, path: str, fh: IO[bytes], block: int = 1 << 20) -> SourceUnit:
        digest = hashlib.sha256()
        size = 0
        while chunk := fh.read(block):
            digest.update(chunk)
            size += len(chunk)
        return cls(path, size, "sha256:" + digest.hexdigest())

    @classmethod
    def from_file(cls, path: str, opener=open) -> SourceUnit:
        try:
            fh = opener(path, "rb")
        except FileNotFoundError as e:  # listed, then gone before it was opened
            raise FileLevelError("no_data_file", f"data file not found: {path}") from e
        with fh:
            return cls.from_stream(str(path), fh)


@dataclass
class Accounting:
    """rows_in = loaded + updated + rejected + duplicates (``updated``: rows that replaced a stored
    document, only in the ``overwrite`` write mode; 0 everywhere else)."""

    rows_in: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    updated: int = 0

    def check(self) -> None:
        total = self.loaded + self.updated + self.rejected + self.duplicates
        if self.rows_in != total:
            updated = f" + updated={self.updated}" if self.updated else ""
            raise AccountingError(
                f"accounting mismatch: rows_in={self.rows_in} but loaded={self.loaded}{updated} + "
                f"rejected={self.rejected} + duplicates={self.duplicates} = {total}")

    def __add__(self, other: Accounting) -> Accounting:
        return Accounting(self.rows_in + other.rows_in, self.loaded + other.loaded,
                          self.rejected + other.rejected, self.duplicates + other.duplicates,
                          self.updated + other.updated)


@dataclass
class LedgerEntry:
    unit_id: str
    import_id: str
    path: str
    size: int
    checksum: str
    kind: str
    source: str
    status: str = "loading"
    generation: int = 0
    account: str | None = None
    started: str | None = None
    finished: str | None = None
    rows_in: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    error_file: str | None = None
    message: str | None = None
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    updated: int = 0

    @property
    def committed(self) -> bool:
        return self.status == "committed"

    @property
    def accounting(self) -> Accounting:
        return Accounting(self.rows_in, self.loaded, self.rejected, self.duplicates, self.updated)


class Ledger:
    def __init__(self, store):
        self.store = store
        self.index = store.index("ledger")

    def get(self, unit_id: str) -> LedgerEntry | None:
        doc = self.store.get(self.index, unit_id)
        return _entry(doc["_source"]) if doc else None

    def begin(self, unit: SourceUnit, *, kind: str, source: str, account: str | None = None,
              force: bool = False, now: datetime | None = None) -> LedgerEntry:
        """Start (or resume) the import of ``unit``. Returns the entry; when ``entry.committed``
        is true the unit was already imported and the caller must skip it."""
        now = now or datetime.now(UTC)
        uid = unit.unit_id
        current = self.get(uid)
        if current is not None and current.committed and not force:
            log.info("unit %s (%s) already committed by import %s: skipped", uid, unit.path, current.import_id)
            return current
        if current is None:
            generation, attempts = 0, 1
        elif current.committed:
            generation, attempts = current.generation + 1, 1
        else:
            generation, attempts = current.generation, current.attempts + 1
        entry = LedgerEntry(unit_id=uid, import_id=f"{uid}-{generation}", path=unit.path, size=unit.size,
                            checksum=unit.checksum, kind=kind, source=source, account=account,
                            generation=generation, attempts=attempts, started=iso(now))
        self._write(entry)
        return entry

    def commit(self, entry: LedgerEntry, acc: Accounting, *, error_file: str | None = None,
               now: datetime | None = None, **extra: Any) -> LedgerEntry:
        """Check the accounting, then mark the unit committed. Raises ``AccountingError`` instead."""
        acc.check()
        entry.status = "committed"
        entry.rows_in, entry.loaded, entry.rejected, entry.duplicates = (acc.rows_in, acc.loaded, acc.rejected,
                                                                         acc.duplicates)
        entry.updated = acc.updated
        entry.error_file = error_file
        entry.finished = iso(now or datetime.now(UTC))
        entry.extra.update(extra)
        self._write(entry, refresh=True)
        return entry

    def fail(self, entry: LedgerEntry, message: str, *, now: datetime | None = None) -> LedgerEntry:
        entry.status = "failed"
        entry.message = message[:2000]
        entry.finished = iso(now or datetime.now(UTC))
        self._write(entry, refresh=True)
        return entry

    def list(self, *, limit: int = 100, status: str | None = None, account: str | None = None) -> list[LedgerEntry]:
        must: list[dict] = []
        if status:
            must.append({"term": {"status": status}})
        if account:
            must.append({"term": {"account": account}})
        body = {"size": limit, "query": {"bool": {"filter": must}}, "sort": [{"started": "desc"}]}
        try:
            resp = self.store._request("POST", f"/{self.index}/_search", body=body, ok_statuses=(404,))
        except StoreError:
            raise
        return [_entry(h["_source"]) for h in (resp or {}).get("hits", {}).get("hits", [])]

    def _write(self, entry: LedgerEntry, refresh: bool = False) -> None:
        self.store._request("PUT", f"/{self.index}/_doc/{entry.unit_id}", body=asdict(entry),
                            params={"refresh": "true"} if refresh else {})


def _entry(src: dict) -> LedgerEntry:
    known = LedgerEntry.__dataclass_fields__
    return LedgerEntry(**{k: v for k, v in src.items() if k in known})
