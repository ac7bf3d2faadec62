"""The OpenSearch / Elasticsearch store: templates, streamed bulk loads, profile merges.

Design (measured in benchmarks/bulk_import.py):
- Documents arrive pre-serialised (orjson, in the transform step), so a load only concatenates
  bytes; the client's stdlib JSON serializer, which halves bulk throughput, is never used for bodies.
  A bulk body goes out as blocks of 64 documents (``Blocks``), not one multi-MB buffer: those were a
  fresh mapping per request, and their page faults cost the load ~1.5 µs of CPU per document.
- A create load of events can take its documents as ``ItemBatch``es (Arrow columns, as the columnar
  mapping and a staged file hold them): the id window (one id array per chunk), the claims' and the
  events' bulk bodies are then built by Arrow kernels and set operations per chunk (the bodies kept as
  slices until that join copies them once), and a chunk the store takes whole comes
  back as one ``final`` outcome with its count — no Python object per row. Anything else (a claim or
  document refused, a lapse) turns the chunk into ``BulkItem``s and carries on row by row from the
  answers in hand, so the outcomes are those of the row-by-row path.
- Bulk requests are cut by count *and* bytes and sent by a small thread pool (HTTP waits release
  the GIL); at most ``concurrency + 1`` chunks exist at once, so memory is bounded.
- Responses are trimmed with ``filter_path`` to statuses and errors: parsing 5,000 full item
  results would cost more than building the request. A create load's columnar chunks ask for
  ``errors`` alone (``TERSE_FILTER_PATH``, as the benchmark's ceilings do: no item result to parse,
  ~0.6 µs of client CPU less per event; the node's saving was not measurable); a chunk answered
  ``"errors": true`` gets its statuses otherwise (its claims are sent again — this row's own claims
  are written —, its events' read back), and the store's next chunks ask for statuses for a while
  (``_Terse``).
- Events and sessions use ``create``: a second copy of an id is refused by the server (409) and
  counted as a duplicate. A 409 whose stored copy carries the same ``import_id`` and row was written
  by an earlier attempt of this very import (a retry after a crash) and counts as loaded.
- One document per event id across all monthly indices, also between loads running at the same time:
  before a chunk of events is written, every id in it is claimed with a ``create`` in one index,
  ``<prefix>import-event-ids`` (``{"m": month, "i": import_id, "r": row, "t": time, "l": load}``),
  which the server makes atomic per id whatever the month. A claim held by another row makes the row a
  duplicate once that row's document is stored; until then the row is tried again after its chunk's
  other rows (``claim_wait`` seconds at most, then it fails with the reason: a duplicate of a document
  that never comes would lose the row). This row's own claim (an earlier attempt of a retried import)
  lets it be written, and the ``create`` then finds or writes its copy. An ``ids`` query over the
  months that were stored when the load started (not the chunk's own month, which answers the
  ``create`` itself) finds copies written without a claim (before claims existed, or by a live
  collector). Within a load, an id window holds the ids of the chunks in flight, so the first row in
  file order wins. A claim whose document does not exist is taken over, conditionally on its
  ``_seq_no``, once its load is gone: each load keeps a beat (``_Beat``, named in its claims as
  ``"l"``) that a killed load stops rewriting (stale after ``LOAD_STALE``) and a load that ended
  removed; a claim without a beat (made before beats) after ``CLAIM_LEASE``. A load whose own beats
  lapsed claims again what it claimed before the lapse, before it writes it; one whose request was
  answered only after such a lapse reads its claims again and removes a copy it wrote beside the load
  that took the claim over (``_taken_meanwhile``). Claims cost the node
  ~10-12 µs per event (an ~80-byte document); they replace the search of the months the load itself
  writes, which grew with them (at 1M events ~7 µs per event and rising).
- Overwrite mode holds each event's claim (``"w": 1``, taken conditionally on its ``_seq_no``) while
  it writes the event and deletes its old copies, found in the month the claim named and by a search
  of every month (it remembers the ids it sent until a refresh has made them searchable:
  ``id_window``; past that many, it refreshes what it wrote and forgets what is visible). An id another
  load is writing (its hold, or a create load's claim whose document is not stored yet) is tried
  again once the chunk's other ids are written and their holds given back, so loads take turns and
  never wait for each other; a hold of a load that is gone is taken over as a claim is (above).
- Every month index a load writes to first is created (PUT) before its first chunk is sent: left to
  the bulk request, a new month answered another chunk's id search made meanwhile with 503 until its
  shard had started. In an overwrite load (``pause_refresh`` None; True: every load), one that is a
  past month (not the current UTC month or one within two days of now, which live collectors write to)
  is created with its automatic refresh off for the length of the load: the ids check's searches
  otherwise keep the shard active, so it refreshes every second into small segments to merge. The
  load refreshes what it wrote itself (overwrite's id window above, and at its end), then restores the
  setting. The index carries a lease in its mapping's ``_meta`` (renewed while the load runs);
  a load that starts after a lease ran out (its load was killed) refreshes that month and restores it.
  A create load searches none of the months it creates (claims answer for them), so by default it
  leaves their setting alone: paused, a shard's indexing buffer filled and the node wrote it whole
  while holding the bulk requests (~1 s, twice per million events; without: +2-12 % rows/s, five pairs).
  It refreshes the months it writes itself every ``REFRESH_EVERY`` seconds instead, on its refresh
  thread: nobody searches them, so the node skips their scheduled refreshes (search idle) and the
  load's final refresh had everything since to write, on the node's one refresh thread while both
  cores waited (1.3-2.1 s per million events; 0.03-0.4 s so, +2-6 % rows/s in two ABBA rounds).
- Write modes: ``create`` (above: the first write wins) or ``overwrite``: documents are written with
  ``index``, an event stored in another month is deleted there once its replacement is written, and a
  row that replaced a stored document counts as ``updated`` (HTTP 200 instead of 201, or a copy found).
- Profiles are merged client-side (read, apply operations, write with ``if_seq_no`` /
  ``if_primary_term``, retry on conflict): no server-side scripts, which the integ-test
  distribution does not have.
- Whole requests are retried on connection errors, 429 and 5xx (500, 502-504) with exponential backoff; items
  rejected with 429 are retried alone; any other item failure is reported with its reason.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import orjson

from cdp_ingest.documents import NOW_MARK, apply_operation, get_path, new_document, set_path, stamp
from cdp_ingest.errors import StoreError

log = logging.getLogger(__name__)

# Whole requests: 429, 500 and 502-504 (a plain 500 is often a node restarting or short of heap for a moment).
REQUEST_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Single bulk items: a 500 on one item is usually that document's own failure, so it is reported, not retried.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Well under OpenSearch's default http.max_content_length (100 MB): one huge document, even alone in a
# bulk request, can run a small-heap node out of memory. Larger documents are rejected with a reason.
MAX_DOCUMENT_BYTES = 4 << 20
# The transform rejects rows with a larger cell before mapping them (pipeline.RowMapper); it lives here
# so that one connection configures both limits (extras ``max_cell_bytes`` / ``max_document_bytes``).
MAX_CELL_BYTES = 1 << 20
# A create load refreshes the months it writes this often (seconds), as the node does every second on its own
# for a shard searched in the last 30 s; not searched, a shard skips its refreshes and the load's final
# refresh wrote all that had piled up (1.3-2.1 s on the node's one refresh thread at 1M events; 0.03-0.4 s).
REFRESH_EVERY = 2.0
FILTER_PATH = "errors,items.*.status,items.*.error.type,items.*.error.reason"
WRITE_MODES = ("create", "overwrite")
_INDEX_NAMES = {"ledger": "import-ledger", "claims": "import-event-ids",  # kinds not named as themselves
                "loads": "import-loads"}
# A claim whose event does not exist is left to its load this long at most (seconds; a chunk writes within
# a few minutes even through the retries' backoff); past it, another load may take it over (Store._claim_ids).
# Sooner once its load's beat is gone or stale (LOAD_STALE, below); this bound is for claims without one.
CLAIM_LEASE = 900.0
# An id another load claimed and has not stored yet (or an overwrite holds) is tried again after the
# chunk's other rows, waiting 0.2 s doubling to 5 s, CLAIM_WAIT seconds at most: then the row fails with
# the reason (error file) rather than count as a duplicate of a document that may never come.
HOLD_WAIT = (0.2, 5.0)
CLAIM_WAIT = 180.0
# A load's beat (``_Beat``): rewritten every LOAD_BEAT seconds while it runs, removed when it ends. Another
# load's claim without its event is taken over once that load's beat is gone (it ended) or LOAD_STALE
# seconds old (it was killed), not only after CLAIM_LEASE; a load whose own beats lapsed for
# LOAD_STALE / 2 checks its claims again before it writes what it claimed.
LOAD_BEAT = 15.0
LOAD_STALE = 120.0
BEAT_KEPT = 86400.0  # a beat a killed load left behind is deleted by the first load to start a day later
# An overwrite that takes over a claim younger than this reads the event where it names (a month a long
# load paused the refresh of may not show it to a search yet), so its row counts as updated if it was there.
RECENT = 3600.0
# The happy path's answer: no item results (see the module doc and _Terse).
TERSE_FILTER_PATH = "errors"
CLAIM_FILTER_PATH = FILTER_PATH + ",items.*._seq_no,items.*._primary_term"
_CONTROL = re.compile(r"[\x00-\x1f]")  # an id with one needs a JSON escape Arrow does not write
PAYLOAD_BLOCK = 64  # documents per block of a bulk body (~50 KB: below glibc's mmap threshold)


class Blocks(list):
    """A request body as a list of byte blocks, sent one after the other (urllib3 writes each block; the
    length is given in ``Content-Length``): no one large buffer per bulk request (see ``_payload``)."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return sum(map(len, self))


class OrjsonSerializer:
    """opensearch-py serializer backed by orjson (2x faster than the stdlib default)."""

    mimetype = "application/json"

    def dumps(self, data: Any) -> str:
        if isinstance(data, str | bytes | Blocks):
            return data  # type: ignore[return-value]
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s: str | bytes) -> Any:
        return orjson.loads(s)


def make_client(hosts: list[str] | str, *, http_auth: tuple[str, str] | None = None, verify_certs: bool = True,
                timeout: float = 60, pool_maxsize: int = 8):
    """An opensearch-py client tuned for bulk loads (works against Elasticsearch 7 too)."""
    from opensearchpy import OpenSearch

    return OpenSearch(hosts=[hosts] if isinstance(hosts, str) else hosts, http_auth=http_auth,
                      verify_certs=verify_certs, timeout=timeout, max_retries=0, retry_on_timeout=False,
                      serializer=OrjsonSerializer(), pool_maxsize=pool_maxsize, http_compress=False)


@dataclass(slots=True)
class BulkItem:
    """One document to write. ``source`` is the serialised JSON body."""

    index: str
    id: str
    source: bytes
    ref: int  # source row number (1-based), echoed back in outcomes
    op: str = "create"


class ItemBatch:
    """Documents of source rows in file order as Arrow columns — ``refs`` (int64), ``indices``, ``ids``
    (string) and ``bodies`` (binary; after ``filter`` or ``concat`` a chunked array of slices) — as the
    columnar mapping and a staged file's record batches hold them. ``bulk_load`` writes them (create mode,
    events) without a Python object per row while nothing goes wrong; a chunk that meets anything else (a
    claim conflict, a refused document, a lapse) is turned into ``BulkItem``s and goes the row-by-row way
    from there."""

    __slots__ = ("refs", "indices", "ids", "bodies")

    def __init__(self, refs: Any, indices: Any, ids: Any, bodies: Any):
        self.refs, self.indices, self.ids, self.bodies = refs, indices, ids, bodies

    def __len__(self) -> int:
        return len(self.refs)

    def items(self) -> list[BulkItem]:
        return [BulkItem(ix, doc_id, body, ref) for ix, doc_id, body, ref in zip(
            self.indices.to_pylist(), self.ids.to_pylist(), self.bodies.to_pylist(), self.refs.to_pylist(),
            strict=True)]

    def slice(self, start: int, n: int) -> ItemBatch:
        return ItemBatch(self.refs.slice(start, n), self.indices.slice(start, n), self.ids.slice(start, n),
                         self.bodies.slice(start, n))

    def filter(self, keep: Any) -> ItemBatch:
        """The rows where ``keep`` (a boolean NumPy or Arrow array, no nulls) is true. With a few rows left out,
        the bodies are the runs between them as one chunked array (slices, no copy: the bulk body's join
        copies them anyway; ``pc.filter`` copied them value by value, ~2 ms per 8,192 events)."""
        import numpy as np
        import pyarrow.compute as pc

        from cdp_ingest.arrow import pa

        if not isinstance(keep, np.ndarray):
            keep = keep.to_numpy(zero_copy_only=False)
        mask = pa.array(keep)
        out = np.flatnonzero(~keep)
        if len(out) * 16 > len(keep):
            bodies = pc.filter(self.bodies, mask)
        else:
            runs = [self.bodies.slice(a, b - a) for a, b in zip([0, *(out + 1).tolist()], [*out.tolist(), len(keep)],
                                                                 strict=True) if b > a]
            bodies = pa.chunked_array(_chunks_of(runs), pa.binary())
        return ItemBatch(pc.filter(self.refs, mask), pc.filter(self.indices, mask), pc.filter(self.ids, mask), bodies)

    @staticmethod
    def of(items: list[BulkItem]) -> ItemBatch:
        from cdp_ingest.arrow import pa

        return ItemBatch(pa.array([it.ref for it in items], pa.int64()),
                         pa.array([it.index for it in items], pa.string()),
                         pa.array([it.id for it in items], pa.string()),
                         pa.array([it.source for it in items], pa.binary()))

    @staticmethod
    def concat(parts: list[ItemBatch]) -> ItemBatch:
        if len(parts) == 1:
            return parts[0]
        from cdp_ingest.arrow import pa

        refs, indices, ids = (pa.concat_arrays([getattr(p, n) for p in parts]) for n in ("refs", "indices", "ids"))
        # the bodies as one chunked array of the parts' (no copy: the bulk body's join copies them anyway)
        return ItemBatch(refs, indices, ids, pa.chunked_array(_chunks_of([p.bodies for p in parts]), pa.binary()))


def _chunks_of(arrays: list[Any]) -> list[Any]:
    """The arrays and chunked arrays' chunks, in order, as one list of arrays (empty ones left out)."""
    return [c for a in arrays for c in (a.chunks if hasattr(a, "chunks") else [a]) if len(c)]


@dataclass(slots=True)
class Outcome:
    ref: int
    status: str  # "loaded" | "updated" | "duplicate" | "failed"
    reason: str | None = None
    id: str | None = None
    # An ``ItemBatch`` chunk's rows written without an outcome each: ``count`` of them (may be 0), and
    # ``final``: every row up to ``ref`` has had its outcome (the chunk's last row; chunks come back in order).
    count: int = 1
    final: bool = False


@dataclass
class LoadStats:
    loaded: int = 0
    duplicates: int = 0
    failed: int = 0
    requests: int = 0
    retries: int = 0
    indices: set[str] = field(default_factory=set)
    updated: int = 0  # overwrite mode: rows that replaced a stored document

    def add_counts(self, counts: dict[str, int]) -> None:
        """Outcomes counted by status (Counter of ``Outcome.status``)."""
        self.loaded += counts.get("loaded", 0)
        self.updated += counts.get("updated", 0)
        self.duplicates += counts.get("duplicate", 0)
        self.failed += sum(n for st, n in counts.items() if st not in ("loaded", "updated", "duplicate"))

    def add(self, o: Outcome) -> None:
        if o.status == "loaded":
            self.loaded += o.count
        elif o.status == "updated":
            self.updated += o.count
        elif o.status == "duplicate":
            self.duplicates += o.count
        else:
            self.failed += o.count


def _mappings(flavor: str) -> dict[str, dict]:
    # Free-form bags (properties, traits, context...) would explode the mapping and conflict on
    # types between events: OpenSearch's flat_object indexes them without either problem.
    bag = {"type": "flat_object"} if flavor == "opensearch" else {"type": "object", "enabled": False}
    date = {"type": "date", "format": "strict_date_optional_time||epoch_second"}
    kw = {"type": "keyword"}
    cdp = {"properties": {"cdp": {"properties": {"import_id": kw, "row": {"type": "long"}}}}}
    common_meta = {"properties": {"time": {"properties": {"insert": date, "create": date, "update": date}},
                                  "aux": cdp, "status": kw, "channel": kw}}
    return {
        "profile": {"dynamic": True, "properties": {
            "id": kw, "ids": kw, "metadata": common_meta, "traits": bag, "aux": bag, "interests": bag,
            "segments": kw, "active": {"type": "boolean"},
            "data": {"properties": {"contact": {"properties": {"email": kw, "phone": kw}},
                                    "preferences": bag, "pii": {"dynamic": True, "properties": {}}}},
        }},
        "session": {"dynamic": True, "properties": {
            "id": kw, "profile": {"properties": {"id": kw}}, "metadata": common_meta,
            "context": bag, "properties": bag, "traits": bag, "aux": bag, "device": bag, "os": bag,
            "app": bag, "utm": bag,
        }},
        "event": {"dynamic": True, "properties": {
            "id": kw, "name": kw, "type": kw, "metadata": common_meta,
            "profile": {"properties": {"id": kw}}, "session": {"properties": {"id": kw}},
            "source": {"properties": {"id": kw}}, "properties": bag, "traits": bag, "context": bag,
            "aux": bag, "device": bag, "os": bag, "app": bag, "utm": bag, "hit": bag, "data": bag,
            "request": bag, "config": bag,
        }},
        # One claim per event id (see Store._claim_ids): nothing indexed but the _id, the source read back.
        "claims": {"dynamic": False, "properties": {}},
        # One beat per running load (see _Beat), read by _id; its time indexed to clear killed loads' beats.
        "loads": {"dynamic": False, "properties": {"t": {"type": "double"}}},
        "ledger": {"dynamic": False, "properties": {
            "unit_id": kw, "import_id": kw, "source": kw, "path": kw, "kind": kw, "status": kw,
            "size": {"type": "long"}, "checksum": kw, "started": date, "finished": date,
            "rows_in": {"type": "long"}, "loaded": {"type": "long"}, "rejected": {"type": "long"},
            "duplicates": {"type": "long"}, "updated": {"type": "long"}, "error_file": kw, "account": kw,
        }},
    }


# A bulk request's documents stop at 5,000 or at this many bytes. 4 MiB: every chunk in flight is held
# twice (items + the joined body) by up to concurrency + 1 chunks, so wide rows (1.1 KB partition events)
# cost a load ~25 MB less than at 8 MiB (625k rows: peak +111 → +85 MB), at the same rate; ~800-byte CSV
# events still go 5,000 at a time.
CHUNK_BYTES = 4 << 20


class Store:
    """Bulk access to one OpenSearch/Elasticsearch cluster under an index ``prefix``."""

    def __init__(self, client, *, prefix: str = "cdp-", flavor: str = "opensearch", chunk_docs: int = 5000,
                 chunk_bytes: int = CHUNK_BYTES, concurrency: int = 2, max_retries: int = 6,
                 backoff: float = 0.5, max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 max_document_bytes: int = MAX_DOCUMENT_BYTES, max_cell_bytes: int = MAX_CELL_BYTES,
                 id_window: int = 50_000, pause_refresh: bool | None = None, clock: Callable[[], float] = time.time,
                 claim_wait: float = CLAIM_WAIT, refresh_every: float | None = REFRESH_EVERY):
        if flavor not in ("opensearch", "elasticsearch"):
            raise ValueError(f"flavor must be opensearch or elasticsearch, not {flavor!r}")
        if chunk_docs < 1 or chunk_bytes < 1024 or concurrency < 1 or max_document_bytes < 1024:
            raise ValueError("chunk_docs >= 1, chunk_bytes >= 1024, concurrency >= 1 and max_document_bytes >= 1024 "
                             "are required")
        self.client = client
        self.prefix = prefix
        self.flavor = flavor
        self.chunk_docs = chunk_docs
        self.chunk_bytes = chunk_bytes
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_document_bytes = max_document_bytes
        self.max_cell_bytes = max_cell_bytes
        self.id_window = id_window  # overwrite: event ids a load remembers before it refreshes (module doc)
        # months the load creates: automatic refresh off while it runs (None: in overwrite loads only)
        self.pause_refresh = pause_refresh
        self.refresh_every = refresh_every  # create loads: seconds between refreshes of what they wrote (None: never)
        self.claim_wait = claim_wait  # seconds a row waits for an id another load claimed and has not stored
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._event_indices: set[str] = set()  # event indices that exist (created before the first write)
        self._stored_months: frozenset[str] = frozenset()  # the ones at the load's start (create mode's search)
        self._retries = 0  # cumulative retries (requests and items), read into LoadStats
        self._beat: _Beat | None = None  # the running load's (bulk_load)
        self._blind_creates = True  # profiles: create a row's new profile unread (_merge_chunk)
        self._terse = _Terse()  # create loads' columnar chunks: whether to ask for item statuses

    # ---- names and templates ---------------------------------------------------------------------
    def index(self, kind: str) -> str:
        return f"{self.prefix}{_INDEX_NAMES.get(kind, kind)}"

    def ensure_templates(self, shards: int = 1, replicas: int = 0) -> None:
        """Create/refresh composable index templates for every index family (idempotent)."""
        patterns = {"profile": self.index("profile"), "session": self.index("session"),
                    "event": f"{self.prefix}event-*", "ledger": self.index("ledger"),
                    "claims": self.index("claims"), "loads": self.index("loads")}
        for kind, mapping in _mappings(self.flavor).items():
            body = {"index_patterns": [patterns[kind]], "priority": 200,
                    "template": {"settings": {"number_of_shards": shards, "number_of_replicas": replicas,
                                              "index.mapping.total_fields.limit": 2000},
                                 "mappings": mapping},
                    "_meta": {"managed_by": "cdp-ingest"}}
            self._request("PUT", f"/_index_template/{self.prefix}{kind}", body=body)

    # ---- low level ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                 headers: dict | None = None, ok_statuses: tuple[int, ...] = (),
                 check: Callable[[], None] | None = None) -> Any:
        """One request with retries on connection errors, 429 and 5xx (``check()`` runs before each
        attempt: an exception it raises ends the retries). A status in ``ok_statuses`` returns its body
        (the client does not log it as a failed request: a missing ledger entry is no warning)."""
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import ConnectionTimeout, TransportError

        attempt = 0
        while True:
            if check is not None:
                check()
            try:
                return self.client.transport.perform_request(method, path, body=body, params=params or {},
                                                             headers=headers, ignore=ok_statuses)
            except (OSConnectionError, ConnectionTimeout) as e:
                status, reason = None, f"connection error: {e.__class__.__name__}"
            except TransportError as e:
                status = e.status_code if isinstance(e.status_code, int) else None
                if status in ok_statuses:
                    return e.info
                if status not in REQUEST_RETRY_STATUSES:
                    raise StoreError(f"{method} {path} failed with HTTP {status}: {_short(e.info)}") from e
                reason = f"HTTP {status}"
            attempt += 1
            if attempt > self.max_retries:
                raise StoreError(f"{method} {path} still failing after {self.max_retries} retries ({reason})")
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            log.warning("%s %s: %s, retry %s/%s in %.1f s", method, path, reason, attempt, self.max_retries, delay)
            with self._lock:
                self._retries += 1
            self._sleep(delay)

    def refresh(self, indices: Iterable[str]) -> None:
        names = ",".join(sorted(set(indices)))
        if names:
            self._request("POST", f"/{names}/_refresh", params={"ignore_unavailable": "true"})

    def _refresh_meanwhile(self, indices: set[str]) -> None:
        """A create load's refresh while it runs: it only keeps the final one short, so a failure is logged
        and the load goes on (its own requests meet the same trouble and are retried or fail themselves)."""
        try:
            self.refresh(indices)
        except StoreError as e:
            log.warning("refresh of %s during the load failed (%s); the load goes on", ", ".join(sorted(indices)), e)

    def _send_bulk(self, payload: bytes | Blocks, filter_path: str = FILTER_PATH,
                   check: Callable[[], None] | None = None) -> dict:
        headers = {"content-type": "application/x-ndjson"}
        if isinstance(payload, Blocks):
            headers["content-length"] = str(payload.size)
        return self._request("POST", "/_bulk", body=payload, params={"filter_path": filter_path}, headers=headers,
                             check=check)

    # ---- bulk load of documents ----------------------------------------------------------------------
    def bulk_load(self, items: Iterable[BulkItem | ItemBatch], import_id: str | None = None,
                  stats: LoadStats | None = None, write_mode: str = "create") -> Iterator[Outcome]:
        """Write ``items`` in bounded chunks; yield one ``Outcome`` per item (order not guaranteed) — per
        row of an ``ItemBatch``, except the rows of a chunk the store took whole: once ``items`` held an
        ``ItemBatch``, every chunk's outcomes end with a ``final`` one counting them (see ``Outcome``).

        ``import_id`` lets a retried import recognise its own earlier writes; ``write_mode`` is
        ``create`` or ``overwrite`` (see module doc).
        """
        if write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {WRITE_MODES}, not {write_mode!r}")
        stats = stats if stats is not None else LoadStats()
        retries_before = self._retries
        window = _IdWindow()
        listed = self._request("GET", f"/_cat/indices/{self._event_prefix}*", ok_statuses=(404,),
                               params={"h": "index", "format": "json", "expand_wildcards": "open,closed"})
        with self._lock:  # the months stored when the load starts; _check_window adds the ones it writes to
            self._event_indices = {row["index"] for row in listed or [] if isinstance(row, dict)}
        claimed = _Paused.recover(self) if self._event_indices else set()
        with self._lock:  # searched for copies written without a claim (create mode)
            self._stored_months = frozenset(self._event_indices - claimed)
        pause = self.pause_refresh if self.pause_refresh is not None else write_mode == "overwrite"
        paused = _Paused(self, pause=pause)
        beat = self._beat = _Beat(self, import_id)
        beat.start()  # before the first claim, which names it
        try:
            try:
                yield from self._bulk_load(items, import_id, stats, write_mode, window, paused)
            except BaseException:  # the load's own error wins; the lease lets a later load restore the months
                try:
                    paused.resume()
                except Exception as e:
                    log.warning("could not restore the refresh of %s: %s", ", ".join(sorted(paused.indices)), e)
                raise
            paused.resume()
        finally:  # every chunk is back: a claim of this load without its event is nobody's now
            beat.stop()
            self._beat = None
        stats.retries += self._retries - retries_before

    def _bulk_load(self, items: Iterable[BulkItem | ItemBatch], import_id: str | None, stats: LoadStats,
                   write_mode: str, window: _IdWindow, paused: _Paused) -> Iterator[Outcome]:
        pending: deque[tuple[int, Future]] = deque()
        too_big: list[Outcome] = []
        kept = 0  # ids still in the window after the last expiry (chunks in flight)
        # The refresh runs in its own thread, so chunks keep being mapped and sent meanwhile (done in the
        # main loop it stalled the load ~0.3 s per refresh); once it is back, the ids of the chunks that
        # had finished when it started are searchable and are forgotten. A create load refreshes what it
        # wrote every ``refresh_every`` seconds the same way (see the module doc).
        refreshing: tuple[Future, int] | None = None
        overwrite = write_mode == "overwrite"
        last_refresh = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bulk") as pool, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh") as refresher:
            fed = [False]  # ItemBatches met: every chunk's outcomes end with a final one (see _load_chunk)
            for seq, chunk in enumerate(self._chunks(items, too_big, columnar=not overwrite, fed=fed), 1):
                for o in too_big:
                    stats.add(o)
                    yield o
                too_big.clear()
                if isinstance(chunk, ItemBatch):
                    chunk, early, replaces, after = self._check_window_columns(chunk, window, seq, paused)
                else:
                    chunk, early, replaces, after = self._check_window(chunk, window, seq, write_mode, paused)
                for o in early:
                    stats.add(o)
                    yield o
                if not chunk:
                    continue
                while pending and pending[0][0] <= after:  # a copy this chunk replaces is still being written
                    window.done, fut = pending.popleft()
                    yield from self._collect(fut, stats)
                stats.indices.update(self._months_of(chunk) if isinstance(chunk, ItemBatch)
                                     else (i.index for i in chunk))
                pending.append((seq, pool.submit(self._load_chunk, chunk, import_id, write_mode, replaces, fed[0])))
                while len(pending) > self.concurrency:
                    window.done, fut = pending.popleft()
                    yield from self._collect(fut, stats)
                    if not overwrite:  # its ids are claimed: a later copy is refused by the claim
                        window.expire()
                if refreshing is not None and refreshing[0].done():
                    refreshing[0].result()
                    window.expire(refreshing[1])
                    kept, refreshing = len(window), None
                if overwrite and refreshing is None and len(window) > kept + self.id_window:
                    # what finished is made searchable, then forgotten
                    refreshing = (refresher.submit(self.refresh, set(window.indices)), window.done)
                if (not overwrite and self.refresh_every and refreshing is None
                        and time.monotonic() - last_refresh >= self.refresh_every):
                    months = window.indices - paused.indices  # a paused month is refreshed when it resumes
                    if months:
                        last_refresh = time.monotonic()
                        refreshing = (refresher.submit(self._refresh_meanwhile, months), window.done)
                paused.renew()
            while pending:
                yield from self._collect(pending.popleft()[1], stats)
            if refreshing is not None:
                refreshing[0].result()

    def _check_window(self, chunk: list[BulkItem], window: _IdWindow, seq: int, write_mode: str,
               paused: _Paused | None = None) -> tuple[list[BulkItem], list[Outcome], dict[int, set[str]], int]:
        """Events whose id this load already sent (any month): in ``create`` mode duplicates, not sent
        (so the first row in file order wins, even with chunks in flight); in ``overwrite`` mode they are
        sent once chunk ``after`` (the earlier copy's) has come back, and an earlier copy in another
        month is to be deleted (``replaces``: ref → indices). The chunk's event ids join the window."""
        events = self._event_prefix
        overwrite = write_mode == "overwrite"
        send: list[BulkItem] = []
        early: list[Outcome] = []
        replaces: dict[int, set[str]] = {}
        after = 0
        window.unpack()
        seen, order = window._ids, window._order  # window.get / window.add, inlined (once per row)
        for it in chunk:
            if overwrite:
                it.op = "index"
            if it.index.startswith(events):
                prev = seen.get(it.id)
                if prev is not None:
                    if not overwrite:
                        early.append(Outcome(it.ref, "duplicate", id=it.id))
                        continue
                    if prev[0] != it.index:
                        replaces.setdefault(it.ref, set()).add(prev[0])
                    if prev[1] != seq:  # in this very chunk the bulk request keeps the order itself
                        after = max(after, prev[1])
                seen[it.id] = (it.index, seq)
                order.append((seq, it.id))
            send.append(it)
        months = {it.index for it in send if it.index.startswith(events)}
        self._months_written(months, window, paused)
        return send, early, replaces, after

    def _check_window_columns(self, chunk: ItemBatch, window: _IdWindow, seq: int, paused: _Paused | None = None
                              ) -> tuple[ItemBatch, list[Outcome], dict[int, set[str]], int]:
        """``_check_window`` of a create load's ``ItemBatch`` chunk: an id this load sent already, or met
        earlier in the chunk, is a duplicate (the first row in file order wins); the others join the window."""
        import numpy as np
        import pyarrow.compute as pc

        from cdp_ingest.arrow import pa

        ids = chunk.ids
        recent = window.recent()
        in_window = pc.is_in(ids, value_set=recent) if recent is not None else None
        again = (set(pc.filter(ids, in_window).to_pylist())
                 if in_window is not None and pc.any(in_window).as_py() else set())
        early: list[Outcome] = []
        counts = pc.value_counts(ids)
        twice = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if again or len(twice):
            suspects = pa.array(sorted(again | set(twice.to_pylist())), pa.string())
            keep = np.ones(len(ids), dtype=bool)
            met = set(again)
            refs = chunk.refs
            for i in np.flatnonzero(pc.is_in(ids, value_set=suspects).to_numpy(zero_copy_only=False)):
                doc_id = ids[int(i)].as_py()
                if doc_id in met:
                    keep[i] = False
                    early.append(Outcome(refs[int(i)].as_py(), "duplicate", id=doc_id))
                else:
                    met.add(doc_id)
            chunk = chunk.filter(keep)
        window.add_ids(chunk.ids, seq)  # (a create load does not look at the month)
        if not len(chunk):
            return chunk, early, {}, 0
        months = set(self._months_of(chunk))
        self._months_written(months, window, paused)
        return chunk, early, {}, 0

    def _months_written(self, months: set[str], window: _IdWindow, paused: _Paused | None) -> None:
        """A chunk about to be sent writes to ``months``: each new one is created first (see ``_Paused``)."""
        window.indices.update(months)
        if not months <= self._event_indices:
            if paused is not None:
                for ix in sorted(months - self._event_indices):
                    paused.create(ix)
            with self._lock:
                self._event_indices = self._event_indices | months

    @staticmethod
    def _months_of(chunk: ItemBatch) -> list[str]:
        import pyarrow.compute as pc

        return pc.unique(chunk.indices).to_pylist()

    @property
    def _event_prefix(self) -> str:
        return f"{self.prefix}event-"

    def _find_events(self, ids: list[str], months: Iterable[str] | None = None) -> dict[str, list[tuple[str, dict]]]:
        """id → [(index, metadata.aux.cdp)] of the stored events with these ids, in any month (or in
        ``months``)."""
        found: dict[str, list[tuple[str, dict]]] = {}
        unique = list(dict.fromkeys(ids))
        target = f"{self._event_prefix}*" if months is None else ",".join(sorted(months))
        for start in range(0, len(unique), 4000):
            part = unique[start:start + 4000]
            body = {"size": 2 * len(part), "track_total_hits": False, "query": {"ids": {"values": part}},
                    "_source": ["metadata.aux.cdp"]}
            resp = self._request("POST", f"/{target}/_search", body=body,
                                 params={"filter_path": "hits.hits._index,hits.hits._id,hits.hits._source",
                                         "ignore_unavailable": "true", "allow_no_indices": "true"})
            for h in ((resp or {}).get("hits") or {}).get("hits") or []:
                cdp = get_path(h, "_source.metadata.aux.cdp") or {}
                found.setdefault(h["_id"], []).append((h["_index"], cdp))
        return found

    def _collect(self, fut: Future, stats: LoadStats) -> Iterator[Outcome]:
        outcomes, requests = fut.result()
        stats.requests += requests
        counts: Counter[str] = Counter()
        for o in outcomes:
            counts[o.status] += o.count
        stats.add_counts(counts)
        yield from outcomes

    def _oversized(self, size: int, what: str) -> str | None:
        if size <= self.max_document_bytes:
            return None
        return f"{what} is {size:,} bytes, over the store limit of {self.max_document_bytes:,}"

    def _chunks(self, items: Iterable[BulkItem | ItemBatch], too_big: list[Outcome], columnar: bool = True,
                fed: list[bool] | None = None) -> Iterator[list[BulkItem] | ItemBatch]:
        """Chunks of at most ``chunk_docs`` items / ``chunk_bytes``; items over the document limit are
        not sent but appended to ``too_big`` as failed outcomes (an empty chunk hands them over).
        ``ItemBatch``es are cut into ``ItemBatch`` chunks (with any ``BulkItem`` met among them, in order)
        when ``columnar`` and they hold events only, no document over the limit and only ids whose JSON
        needs no control escape; otherwise they are taken row by row. ``fed[0]`` is set once one is met."""
        parts: list[BulkItem | ItemBatch] = []
        rows = size = 0
        limit, chunk_docs, chunk_bytes = self.max_document_bytes, self.chunk_docs, self.chunk_bytes
        events = self._event_prefix

        def cut() -> list[BulkItem] | ItemBatch:
            if not any(isinstance(p, ItemBatch) for p in parts):
                return parts  # type: ignore[return-value]
            if not all(isinstance(p, ItemBatch) or (p.op == "create" and p.index.startswith(events)
                                                    and not _CONTROL.search(p.id)) for p in parts):
                return [it for p in parts for it in (p.items() if isinstance(p, ItemBatch) else (p,))]
            runs: list[ItemBatch] = []
            loose: list[BulkItem] = []
            for p in parts:
                if isinstance(p, ItemBatch):
                    if loose:
                        runs.append(ItemBatch.of(loose))
                        loose = []
                    runs.append(p)
                else:
                    loose.append(p)
            if loose:
                runs.append(ItemBatch.of(loose))
            return ItemBatch.concat(runs)

        for item in items:
            one_by_one: Iterable[BulkItem] = (item,) if isinstance(item, BulkItem) else ()
            if isinstance(item, ItemBatch):
                if fed is not None:
                    fed[0] = True
                sizes = self._columnar_sizes(item) if columnar else None
                if sizes is None:
                    one_by_one = item.items()
                start, n = 0, len(item)
                while sizes is not None and start < n:
                    take = min(n - start, chunk_docs - rows)
                    over = sizes[start:start + take].cumsum().searchsorted(chunk_bytes - size)  # first ≥ room
                    if over < take:
                        take = int(over) + 1
                        full = True
                    else:
                        full = rows + take >= chunk_docs
                    parts.append(item.slice(start, take) if take < n else item)
                    rows += take
                    size += int(sizes[start:start + take].sum())
                    start += take
                    if full:
                        yield cut()
                        parts, rows, size = [], 0, 0
            for it in one_by_one:
                n = len(it.source)
                if n > limit:
                    too_big.append(Outcome(it.ref, "failed", self._oversized(n, "the document"), id=it.id))
                    if len(too_big) >= chunk_docs:
                        yield []
                    continue
                parts.append(it)
                rows += 1
                size += n + len(it.index) + len(it.id) + 48
                if rows >= chunk_docs or size >= chunk_bytes:
                    yield cut()
                    parts, rows, size = [], 0, 0
        if parts or too_big:
            yield cut()

    def _columnar_sizes(self, batch: ItemBatch) -> Any:
        """Each row's share of a bulk body (as ``_chunks`` counts it, a NumPy array), or None when ``batch``
        is to go row by row: not all events, a document over the limit, an id needing a control escape."""
        import pyarrow.compute as pc

        from cdp_ingest.fastmap import value_bytes

        if (not len(batch) or batch.ids.null_count or batch.indices.null_count or batch.bodies.null_count
                or not self._event_prefix.isascii()):
            return None
        body = pc.binary_length(batch.bodies).to_numpy(zero_copy_only=False)
        if int(body.max()) > self.max_document_bytes:
            return None
        if not pc.all(pc.starts_with(batch.indices, self._event_prefix)).as_py():
            return None
        data, offsets = value_bytes(batch.ids)
        if (data[offsets[0]:offsets[-1]] < 0x20).any():
            return None
        return (body + pc.binary_length(batch.indices).to_numpy(zero_copy_only=False)
                + pc.binary_length(batch.ids).to_numpy(zero_copy_only=False) + 48)

    @staticmethod
    def _payload(chunk: list[BulkItem]) -> Blocks:
        """The bulk body of ``chunk`` as blocks of ``PAYLOAD_BLOCK`` items. (Joined into one buffer, a 5,000
        document body is a fresh multi-MB allocation per request: glibc maps it and gives it back each
        time, and the page faults cost more than building the body, most in the bulk threads' arena.)"""
        blocks = Blocks()
        heads: dict[tuple[str, str], bytes] = {}
        dumps = orjson.dumps
        for start in range(0, len(chunk), PAYLOAD_BLOCK):
            parts: list[bytes] = []
            for it in chunk[start:start + PAYLOAD_BLOCK]:
                head = heads.get((it.op, it.index))
                if head is None:
                    head = heads[(it.op, it.index)] = b'{"%s":{"_index":"%s","_id":' % (it.op.encode(),
                                                                                        it.index.encode())
                parts += (head, dumps(it.id), b"}}\n", it.source, b"\n")
            blocks.append(b"".join(parts))
        return blocks

    def _load_chunk(self, chunk: list[BulkItem] | ItemBatch, import_id: str | None, write_mode: str = "create",
                    replaces: dict[int, set[str]] | None = None, final: bool = False) -> tuple[list[Outcome], int]:
        """Write one chunk; returns its outcomes and the requests made. An event id another load is writing
        right now (claimed, not stored yet; in ``overwrite`` mode also held) waits for it: it is tried
        again once this chunk's other ids are written (and their holds given back, so two loads never
        wait for each other). An ``ItemBatch`` chunk's outcomes (any chunk's with ``final``: a load fed with
        ``ItemBatch``es) end with one ``final`` outcome at its last row, counting the rows written without an
        outcome each."""
        replaces = replaces if replaces is not None else {}
        outcomes: list[Outcome] = []
        requests = 0
        wait, most = HOLD_WAIT
        waited = 0.0
        if isinstance(chunk, ItemBatch):
            import pyarrow.compute as pc

            last = pc.max(chunk.refs).as_py()
        else:
            last = max(it.ref for it in chunk) if final and chunk else None
        written = 0
        while True:
            if isinstance(chunk, ItemBatch):
                out, n, waiting, written = self._write_columns(chunk, import_id)
            else:
                out, n, waiting = self._write_chunk(chunk, import_id, write_mode, replaces)
            outcomes += out
            requests += n
            if waiting and waited >= self.claim_wait:
                reason = (f"another load claimed this event id and had not stored it after {waited:.0f} s (that load "
                          f"is still running, or its claim has no load beat and lapses {CLAIM_LEASE / 60:.0f} min "
                          f"after it was made): import the row again later")
                outcomes += [Outcome(it.ref, "failed", reason, id=it.id) for it in waiting]
                waiting = []
            if not waiting:
                if last is not None:
                    outcomes.append(Outcome(last, "loaded", count=written, final=True))
                return outcomes, requests
            log.info("%d event id(s) another load is writing (claimed, not stored yet); trying again in %.1f s",
                     len(waiting), wait)
            self._sleep(wait)
            waited += wait
            chunk, wait = waiting, min(most, wait * 2)

    def _write_columns(self, chunk: ItemBatch, import_id: str | None
                       ) -> tuple[list[Outcome], int, list[BulkItem], int]:
        """Create mode, an ``ItemBatch`` of events: the search of ``_write_chunk``, the claims and the events
        as bulk bodies joined by Arrow. When every claim and every document is accepted (and the load's
        beats did not lapse), that is all: returns the outcomes (duplicates the search found), the
        requests, no rows to try again, and the count of rows written. Anything else is carried on row by
        row from the answers in hand (``_write_chunk`` with ``pre``): the same outcomes as if the chunk had
        been ``BulkItem``s from the start."""
        import pyarrow.compute as pc

        from cdp_ingest.arrow import pa
        from cdp_ingest.fastmap import json_strings

        beat = self._beat
        epoch = beat.epoch if beat is not None else 0  # before the claims: see _Beat
        outcomes: list[Outcome] = []
        requests = 0
        if self._stored_months:  # a copy written without a claim in another month stored at the start
            found: set[str] = set()
            for ix in self._months_of(chunk):
                months = self._stored_months - {ix}
                if months:
                    found.update(self._find_events(pc.filter(chunk.ids, pc.equal(chunk.indices, ix)).to_pylist(),
                                                   months))
                    requests += 1
            if found:
                stored = pc.is_in(chunk.ids, value_set=pa.array(sorted(found), pa.string()))
                dup = chunk.filter(stored)
                outcomes += [Outcome(ref, "duplicate", id=doc_id)
                             for ref, doc_id in zip(dup.refs.to_pylist(), dup.ids.to_pylist(), strict=True)]
                chunk = chunk.filter(pc.invert(stored))
                if not len(chunk):
                    return outcomes, requests, [], 0
        id_json = json_strings(chunk.ids)[0].cast(pa.binary())
        # without item results unless a recent chunk had errors; an import id tells this row's writes
        terse = import_id is not None and self._terse.ask()
        filter_path = TERSE_FILTER_PATH if terse else FILTER_PATH
        claims = self._send_bulk(self._claim_columns(chunk, id_json, import_id), filter_path)
        requests += 1
        events = None
        if not claims.get("errors"):
            try:
                events = self._send_bulk(self._payload_columns(chunk, id_json), filter_path,
                                         check=None if beat is None else partial(beat.check, epoch))
            except _Lapsed:
                pass  # _write_chunk takes the claims again
            else:
                requests += 1
                if not events.get("errors") and (beat is None or (beat.epoch == epoch and not beat.lapsed())):
                    if terse:
                        self._terse.clean()
                    return outcomes, requests, [], len(chunk)
        sent = _Sent(epoch, claims, events)
        if terse and (claims.get("errors") or (events is not None and events.get("errors"))):
            self._terse.missed()
            if claims.get("errors"):  # no events sent: _claim_ids claims them again, with statuses
                sent.claims = None
            elif events is not None and events.get("errors"):
                sent.events = self._event_statuses(chunk, import_id)
                requests += 1
        out, n, waiting = self._write_chunk(chunk.items(), import_id, "create", {}, sent)
        return outcomes + out, requests + n, waiting, 0

    def _event_statuses(self, chunk: ItemBatch, import_id: str | None) -> dict:
        """The item statuses of a create chunk whose events were answered only ``"errors": true``
        (``TERSE_FILTER_PATH``), read back in real time: a copy of this row (this import's) is 201 — written
        by this request or an earlier attempt, as a 409 on it would count —, another's 409, and no copy 503,
        so that the row is sent again (after the retries' backoff) and its own answer tells why it was
        refused. Its claims were all accepted, so a copy here is this load's or a duplicate."""
        stamps = self._stamps(list(zip(chunk.indices.to_pylist(), chunk.ids.to_pylist(), strict=True)))
        return {"errors": True, "items": [
            {"create": {"status": 503 if cdp is None else 201 if _is_own(cdp, import_id, ref) else 409}}
            for ref, cdp in zip(chunk.refs.to_pylist(), stamps, strict=True)]}

    def _claim_columns(self, chunk: ItemBatch, id_json: Any, import_id: str | None) -> Blocks:
        """``_claim_body(chunk.items(), import_id)``, joined by Arrow (``id_json``: the ids as JSON strings)."""
        import pyarrow.compute as pc

        from cdp_ingest.arrow import pa

        load = b',"l":"%s"' % self._beat.token.encode() if self._beat is not None else b""
        tail = b',"i":%s,"t":%d%s}\n' % (orjson.dumps(import_id), int(self._clock()), load)
        month = pc.utf8_slice_codeunits(chunk.indices, len(self._event_prefix)).cast(pa.binary())
        body = pc.binary_join_element_wise(b'{"create":{"_index":"%s","_id":' % self.index("claims").encode(),
                                           id_json, b'}}\n{"m":"', month, b'","r":',
                                           pc.cast(chunk.refs, pa.string()).cast(pa.binary()), tail, b"")
        return _arrow_blocks(body)

    @staticmethod
    def _payload_columns(chunk: ItemBatch, id_json: Any) -> Blocks:
        """``_payload(chunk.items())`` (create), joined by Arrow."""
        import pyarrow.compute as pc

        from cdp_ingest.arrow import pa

        return _arrow_blocks(pc.binary_join_element_wise(
            b'{"create":{"_index":"', chunk.indices.cast(pa.binary()), b'","_id":', id_json, b"}}\n",
            chunk.bodies, b"\n", b""))

    def _write_chunk(self, chunk: list[BulkItem], import_id: str | None, write_mode: str,
                     replaces: dict[int, set[str]], pre: _Sent | None = None
                     ) -> tuple[list[Outcome], int, list[BulkItem]]:
        """Write one chunk (one attempt at its ids another load is writing: see ``_load_chunk``). ``pre``: a
        create chunk ``_write_columns`` searched and sent already — its claims' answer and, unless the
        send was stopped by a lapse, its events' — to be carried on from there."""
        outcomes: list[Outcome] = []
        conflicts: list[BulkItem] = []
        requests = 0
        attempt = 0
        events = self._event_prefix
        overwrite = write_mode == "overwrite"
        own: set[int] = set()  # overwrite: stored by this import's earlier attempt from the same row
        existed: set[int] = set()  # overwrite: a stored copy (another import's or row's) is replaced
        waiting: list[BulkItem] = []
        holds = _Holds()
        beat = self._beat
        # taken before the claims or holds are (by _write_columns, with pre): see _Beat
        epoch = pre.epoch if pre is not None else beat.epoch if beat is not None else 0
        if overwrite:  # hold each id's claim while it is written and its old copies deleted
            holds = self._hold_ids(chunk, import_id)
            requests += holds.requests
            outcomes += holds.failed
            existed |= holds.existed
            waiting = [it for it in chunk if it.id in holds.waiting and it.index.startswith(events)]
            chunk = [it for it in chunk if it.id in holds.held or not it.index.startswith(events)]
            # every stored copy counts (updated or this import's own): search all months
            event_ids = [it.id for it in chunk if it.index.startswith(events)]
            found = self._find_events(event_ids) if event_ids else {}
            requests += bool(event_ids)
        else:  # create: the id's claim finds what loads wrote (below); the search finds a copy written
            # otherwise (before claims, or by a live collector) in the months stored when the load started.
            # A copy in the chunk's own month answers the write itself (409), so only the other months.
            by_index: dict[str, list[str]] = {}
            for it in chunk:
                if it.index.startswith(events):
                    by_index.setdefault(it.index, []).append(it.id)
            found = {}
            for ix, ids in by_index.items():
                months = self._stored_months - {ix}
                if months and pre is None:
                    found.update(self._find_events(ids, months))
                    requests += 1
        if found:  # stored already (any month): this import's own earlier write, or a duplicate
            unsent: list[BulkItem] = []
            for it in chunk:
                copies = found.get(it.id) if it.index.startswith(events) else None
                if copies is None:
                    unsent.append(it)
                elif overwrite:  # written again (last write wins); copies in other months go once it is
                    (own if any(_is_own(cdp, import_id, it.ref) for _, cdp in copies) else existed).add(it.ref)
                    moved = {ix for ix, _ in copies if ix != it.index}
                    if moved:
                        replaces.setdefault(it.ref, set()).update(moved)
                    unsent.append(it)
                else:  # create searched other months only: a copy there is another row's
                    outcomes.append(Outcome(it.ref, "duplicate", id=it.id))
            chunk = unsent
        if overwrite:
            claimed: list[BulkItem] = []
        else:
            chunk, refused, n, waiting = self._claim_ids(chunk, import_id, pre.claims if pre is not None else None)
            outcomes += refused
            requests += n
            claimed = [it for it in chunk if it.index.startswith(events)]  # released if the store refuses one

        def written(it: BulkItem, st: int) -> Outcome:
            if overwrite and it.ref not in own and (st == 200 or it.ref in existed or it.ref in replaces):
                return Outcome(it.ref, "updated", id=it.id)
            return Outcome(it.ref, "loaded", id=it.id)

        sent_late: list[BulkItem] = []  # sent while this load's beats had lapsed: see _taken_meanwhile
        answered = pre.events if pre is not None else None
        while chunk:
            if answered is not None:  # sent (and counted) by _write_columns
                resp, answered = answered, None
            else:
                try:
                    resp = self._send_bulk(self._payload(chunk),
                                           check=None if beat is None else partial(beat.check, epoch))
                except _Lapsed as e:  # another load may have taken this chunk's claims over meanwhile
                    assert beat is not None
                    log.warning("%s: taking them again before they are written", e)
                    beat.beat()
                    epoch = beat.epoch
                    before = {id(it) for it in chunk}
                    if overwrite:
                        chunk, later, refused, n = self._hold_again(chunk, holds, import_id)
                        existed |= holds.existed
                    else:
                        chunk, refused, n, later = self._claim_ids(chunk, import_id)
                    outcomes += refused
                    waiting += later
                    requests += n
                    gone = before - {id(it) for it in chunk}
                    claimed = [it for it in claimed if id(it) not in gone]
                    continue
                requests += 1
            if beat is not None and (beat.epoch != epoch or beat.lapsed()):
                # checked before it was sent, but it may have reached the store only after the lapse
                sent_late += [it for it in chunk if it.index.startswith(events)]
            if not resp.get("errors") and not overwrite:
                outcomes.extend(Outcome(it.ref, "loaded", id=it.id) for it in chunk)
                break
            again: list[BulkItem] = []
            for it, result in zip(chunk, resp["items"], strict=True):
                r = next(iter(result.values()))
                st = r.get("status", 500)
                if st < 300:
                    outcomes.append(written(it, st))
                elif st == 409 and it.op == "create":
                    conflicts.append(it)
                elif st in RETRY_STATUSES:
                    again.append(it)
                else:
                    err = r.get("error") or {}
                    outcomes.append(Outcome(it.ref, "failed", f"store rejected the document: {err.get('type')}: "
                                                               f"{_short(err.get('reason'))}", id=it.id))
            attempt += 1
            if again and attempt > self.max_retries:
                outcomes.extend(Outcome(it.ref, "failed", "store kept rejecting the document (HTTP 429/5xx)",
                                        id=it.id) for it in again)
                break
            if again:
                with self._lock:
                    self._retries += 1
                self._sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            chunk = again
        if sent_late:
            outcomes, n = self._taken_meanwhile(sent_late, outcomes, waiting, holds)
            requests += n
            claimed = [it for it in claimed if it.id not in holds.taken]  # not this load's to release
        if conflicts:
            outcomes.extend(self._resolve_conflicts(conflicts, import_id))
            requests += 1
        if claimed:  # an event the store refused gives its claim back (a corrected row may come)
            failed = {(o.ref, o.id) for o in outcomes if o.status == "failed"}
            requests += self._release_claims([it for it in claimed if (it.ref, it.id) in failed])
        if replaces or holds.moved:  # (a month a taken claim named is no sign of "updated" by itself)
            stale = [(ix, o.id) for o in outcomes if o.status in ("loaded", "updated")
                     for ix in sorted(replaces.get(o.ref, set()) | holds.moved.get(o.ref, set()))]
            requests += self._delete_copies(stale)
        if overwrite and holds.held:
            requests += self._give_back(holds.held, outcomes, import_id)
        return outcomes, requests, waiting

    def _taken_meanwhile(self, items: list[BulkItem], outcomes: list[Outcome], waiting: list[BulkItem],
                         holds: _Holds) -> tuple[list[Outcome], int]:
        """``items`` were written by a request checked before it was sent (``_Beat.check``) whose answer came
        after this load's beats had lapsed: it may have reached the store after another load took their
        claims (or holds) over — the process was frozen, or cut off, between the check and the send. The
        claims are read again (in real time); an id another load claims now whose claim names another
        month had its copy written beside that load's: this load's copy is deleted and its row goes to
        ``waiting`` (claimed again later: a duplicate once the other load's copy is stored; an overwrite
        replaces it), as does one whose claim is gone (that load gave it back: its row was refused), so
        that no copy is left without a claim. In the same month there is one document (the other
        load's write meets it). Such ids are put in ``holds.taken``: neither released nor given back
        by this load. Returns the outcomes left and the requests made."""
        beat = self._beat
        assert beat is not None
        ids = sorted({it.id for it in items})
        read = {i: (d.get("_source") or {}) if d.get("found") else {}
                for i, d in zip(ids, self._read_claims(ids), strict=True)}
        taken = {i: src.get("m") for i, src in read.items() if src.get("l") != beat.token}  # month; None: given back
        if not taken:
            return outcomes, 1
        holds.taken |= set(taken)
        for doc_id in taken:
            holds.held.pop(doc_id, None)
        cut = len(self._event_prefix)
        beside = {(it.ref, it.id): it for it in items if it.id in taken and it.index[cut:] != taken[it.id]}
        kept: list[Outcome] = []
        copies: list[tuple[str, str | None]] = []
        for o in outcomes:
            it = beside.get((o.ref, o.id or ""))
            if it is None or o.status not in ("loaded", "updated"):
                kept.append(o)
                continue
            copies.append((it.index, it.id))
            waiting.append(it)
        log.warning("%d event id(s) of this load were taken over (or taken and given back) by another load while "
                    "its beats had lapsed; %d copy(ies) it wrote are deleted and tried again", len(taken), len(copies))
        return kept, 1 + (self._delete_copies(copies, what="a copy written after its claim was taken over")
                          if copies else 0)

    def _claim_body(self, items: list[BulkItem], import_id: str | None,
                    cas: dict[int, tuple[int, int]] | None = None, writing: bool = False) -> Blocks:
        """Bulk lines claiming ``items``' ids: ``{"m": month, "i": import, "r": row, "t": epoch s, "l": the
        load's beat}``, with ``"w": 1`` while an overwrite writes the id (``writing``); a ``create``, or, for
        the positions in ``cas`` (→ seq_no, primary_term), an ``index`` conditional on the claim read."""
        claims = self.index("claims").encode()
        head = b'{"create":{"_index":"%s","_id":' % claims
        cas_head = b'{"index":{"_index":"%s","_id":' % claims
        load = b',"l":"%s"' % self._beat.token.encode() if self._beat is not None else b""
        tail = b',"i":%s,"t":%d%s%s}\n' % (orjson.dumps(import_id), int(self._clock()), load,
                                           b',"w":1' if writing else b"")
        months: dict[str, bytes] = {}
        cut, dumps, parts = len(self._event_prefix), orjson.dumps, []
        for k, it in enumerate(items):
            m = months.get(it.index)
            if m is None:
                m = months[it.index] = b'}}\n{"m":"%s","r":' % it.index[cut:].encode()
            if cas and k in cas:
                parts.append(b'%s%s,"if_seq_no":%d,"if_primary_term":%d%s%d%s' % (cas_head, dumps(it.id), *cas[k], m,
                                                                                  it.ref, tail))
            else:
                parts.append(b"%s%s%s%d%s" % (head, dumps(it.id), m, it.ref, tail))
        return Blocks(b"".join(parts[k:k + PAYLOAD_BLOCK]) for k in range(0, len(parts), PAYLOAD_BLOCK))

    def _claim_ids(self, chunk: list[BulkItem], import_id: str | None, first: dict | None = None
                   ) -> tuple[list[BulkItem], list[Outcome], int, list[BulkItem]]:
        """Create mode: claim every event id of ``chunk`` before its document is written (``create`` in
        ``<prefix>import-event-ids``, atomic per id whatever the month): a claim made by another row is
        a duplicate, even by a load running at the same time, once its document is stored; until then
        the row waits (its load may die before writing it, or the store may refuse it). Returns what to
        write, the outcomes of the rest, the requests made and the rows to try again later.

        An id claimed already is written only when the claim is this import's own from the same row (an
        earlier attempt: the create then finds its copy or writes it). A claim older than
        ``CLAIM_LEASE`` whose document does not exist (its load died between claim and write and was
        not retried) is taken over, conditionally on its sequence number, so only one load takes it.
        ``first``: the store's answer to the chunk's claims when they were sent already (not counted here)."""
        events = self._event_prefix
        todo = [it for it in chunk if it.index.startswith(events)]
        if not todo:
            return chunk, [], 0, []
        drop: set[int] = set()  # id() of the items not to write
        outcomes: list[Outcome] = []
        waiting: list[BulkItem] = []
        requests = attempt = 0
        takeover: dict[int, tuple[int, int]] = {}
        while todo:
            if first is not None:  # the answer to these claims, sent already (``_write_columns``)
                resp, first = first, None
            else:
                resp = self._send_bulk(self._claim_body(todo, import_id, takeover))
                requests += 1
            if not resp.get("errors"):
                break
            again: list[BulkItem] = []
            taken: list[BulkItem] = []
            for it, result in zip(todo, resp["items"], strict=True):
                r = next(iter(result.values()))
                st = r.get("status", 500)
                if st < 300:
                    continue
                if st == 409:
                    taken.append(it)
                elif st in RETRY_STATUSES:
                    again.append(it)
                else:
                    err = r.get("error") or {}
                    drop.add(id(it))
                    outcomes.append(Outcome(it.ref, "failed", f"store refused the event id's claim: {err.get('type')}: "
                                                              f"{_short(err.get('reason'))}", id=it.id))
            if taken and not takeover:  # claimed already: by whom?
                retake, vanished, n = self._settle_claims(taken, import_id, drop, outcomes, waiting)
                again += vanished  # given back meanwhile (its event was refused): claimed afresh
                requests += n
            else:  # a takeover lost to another one (or nothing taken): settled as duplicates below
                retake = {}
                for it in taken:
                    drop.add(id(it))
                    outcomes.append(Outcome(it.ref, "duplicate", id=it.id))
            attempt += 1
            if again and attempt > self.max_retries:
                for it in again:
                    drop.add(id(it))
                    outcomes.append(Outcome(it.ref, "failed", "store kept rejecting the event id's claim "
                                                              "(HTTP 429/5xx)", id=it.id))
                again = []
            if again:  # (ids to take over are claimed afresh with them: a create re-reads who holds them)
                with self._lock:
                    self._retries += 1
                self._sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
                todo, takeover = again + [it for it, _ in retake.values()], {}
            elif retake:
                todo = [it for it, _ in retake.values()]
                takeover = {k: cas for k, (_, cas) in enumerate(retake.values())}
            else:
                todo = []
        if not drop:
            return chunk, outcomes, requests, waiting
        return [it for it in chunk if id(it) not in drop], outcomes, requests, waiting

    def _settle_claims(self, items: list[BulkItem], import_id: str | None, drop: set[int],
                       outcomes: list[Outcome], waiting: list[BulkItem]
                       ) -> tuple[dict[int, tuple[BulkItem, tuple[int, int]]], list[BulkItem], int]:
        """Ids whose claim exists: this row's own claim is written; another's is a duplicate once its
        document is stored where the claim says (read in real time). Another's claim without its
        document: while its load runs it may still write it, so the row goes to ``waiting`` (tried again
        after the chunk); once its load is gone (``_claim_states``: beat removed or stale, or the claim
        older than ``CLAIM_LEASE``), or naming a month deleted since, it is returned to be taken over
        (with the claim's seq_no / primary_term) unless a search finds a copy elsewhere (an overwrite
        that died between its claim and its write left the copy in the old month). A claim gone by now
        (released: its event was refused) is returned to be claimed again."""
        other: list[tuple[BulkItem, dict, tuple[int, int]]] = []
        vanished: list[BulkItem] = []
        for it, d in zip(items, self._read_claims([it.id for it in items]), strict=True):
            if d.get("found") is False:
                vanished.append(it)
                continue
            src = d.get("_source") or {}
            if self._is_mine(src, import_id, {it.ref}):
                continue  # this row's claim (an earlier attempt): written, a stored copy answers 409
            other.append((it, src, (d["_seq_no"], d["_primary_term"])))
        if not other:
            return {}, vanished, 1
        where, n = self._claim_states([(it.id, src) for it, src, _ in other])
        requests = 1 + n
        stale: list[tuple[BulkItem, tuple[int, int]]] = []
        for (it, _, cas), state in zip(other, where, strict=True):
            if state == "stored":
                drop.add(id(it))
                outcomes.append(Outcome(it.ref, "duplicate", id=it.id))
            elif state != "absent":  # its load is gone (lease, beat) or so is its month
                stale.append((it, cas))
            else:  # claimed by a load that has not written it yet
                drop.add(id(it))
                waiting.append(it)
        if not stale:
            return {}, vanished, requests
        elsewhere = self._find_events([it.id for it, _ in stale])
        retake: dict[int, tuple[BulkItem, tuple[int, int]]] = {}
        for it, cas in stale:
            if it.id in elsewhere:
                drop.add(id(it))
                outcomes.append(Outcome(it.ref, "duplicate", id=it.id))
            else:
                retake[id(it)] = (it, cas)
        return retake, vanished, requests + 1

    def _claim_states(self, claims: list[tuple[str, dict]]) -> tuple[list[str], int]:
        """For (event id, another load's claim) pairs: ``stored`` (the event is where the claim says),
        ``absent`` (its load may still write it), ``no month`` (the month was deleted since), ``lapsed``
        (older than ``CLAIM_LEASE``) or ``dead`` (its load ended or stopped beating: ``_dead_loads``).
        A dead load's event is read again after its beat, so one that wrote it and then ended is seen.
        Returns the states and the requests made."""
        where, requests = self._claimed_docs(claims), 1
        now = self._clock()
        for k, ((_, src), state) in enumerate(zip(claims, where, strict=True)):
            if state == "absent" and now - float(src.get("t") or 0) > CLAIM_LEASE:
                where[k] = "lapsed"
        absent = [k for k, state in enumerate(where) if state == "absent"]
        dead = self._dead_loads([claims[k][1] for k in absent]) if absent else set()
        requests += bool(absent)
        again = [k for k in absent if claims[k][1].get("l") in dead]
        if again:
            requests += 1
            for k, state in zip(again, self._claimed_docs([claims[k] for k in again]), strict=True):
                where[k] = "dead" if state == "absent" else state
        return where, requests

    def _dead_loads(self, claims: list[dict]) -> set[str]:
        """The beat tokens (``"l"``) of these claims whose load ended (beat gone) or stopped beating
        ``LOAD_STALE`` s ago (killed). A claim without a token (made before beats), or an unreadable beat,
        is left to ``CLAIM_LEASE``."""
        tokens = sorted({src["l"] for src in claims if isinstance(src.get("l"), str)})
        if not tokens:  # (counted as a request by the callers all the same)
            return set()
        loads = self.index("loads")
        resp = self._request("POST", "/_mget", body={"docs": [{"_index": loads, "_id": t} for t in tokens]})
        now = self._clock()
        return {t for t, d in zip(tokens, resp["docs"], strict=True) if not d.get("error") and (
            not d.get("found") or now - float((d.get("_source") or {}).get("t") or 0) > LOAD_STALE)}

    def _is_mine(self, src: dict, import_id: str | None, refs: set[int]) -> bool:
        """A claim one of these rows made: in an earlier attempt of its import, or in this load; or a hold
        this load has (one at a time per id: it may name another row of the id's group)."""
        this_load = self._beat is not None and src.get("l") == self._beat.token
        if src.get("r") not in refs:
            return this_load and bool(src.get("w"))
        return this_load or (import_id is not None and src.get("i") == import_id)

    def _read_claims(self, ids: list[str]) -> list[dict]:
        """The claims of these event ids, read in real time (``_mget`` docs, in order)."""
        return self._request("POST", "/_mget", body={"docs": [{"_index": self.index("claims"), "_id": i}
                                                               for i in ids]})["docs"]

    def _load_mark(self) -> dict[str, str]:
        return {"l": self._beat.token} if self._beat is not None else {}

    def _claimed_docs(self, claims: list[tuple[str, dict]]) -> list[str]:
        """For (event id, claim) pairs, the event where its claim says, read in real time: ``stored``,
        ``absent``, or ``no month`` (the month index is gone: deleted since, as a load creates a month
        before it claims ids in it)."""
        docs = [{"_index": f"{self._event_prefix}{src.get('m')}", "_id": doc_id, "_source": False}
                for doc_id, src in claims]
        return ["stored" if d.get("found") else
                "no month" if (d.get("error") or {}).get("type") == "index_not_found_exception" else "absent"
                for d in self._request("POST", "/_mget", body={"docs": docs})["docs"]]

    def _hold_ids(self, chunk: list[BulkItem], import_id: str | None) -> _Holds:
        """Overwrite mode: take the claim of every event id of ``chunk`` for the time it is written and its
        old copies deleted (``"w": 1``; ``_give_back`` ends it), so loads writing one id at the same time
        take turns and leave one copy. A missing claim is created; a claim is taken over (conditionally on
        its seq_no) when it is this row's own (an earlier attempt), older than ``CLAIM_LEASE``, another
        load's finished one whose document is stored (its month is then to be deleted), or one whose load
        is gone (``_dead_loads``). Ids another load is writing (its hold, or its claim whose document is
        not stored yet) are returned as waiting.
        Several rows of the chunk with one id share one hold; the claim names the last of them."""
        events = self._event_prefix
        groups: dict[str, list[BulkItem]] = {}
        for it in chunk:
            if it.index.startswith(events):
                groups.setdefault(it.id, []).append(it)
        holds = _Holds()
        todo = list(groups)
        for attempt in range(self.max_retries + 1):
            if not todo:
                break
            read = self._read_claims(todo)
            now = self._clock()
            take: list[tuple[str, dict | None, tuple[int, int] | None]] = []  # id, claim read, its seq_no/term
            gone: set[str] = set()  # ids whose claim names a month deleted since: no old copy to delete
            held: list[tuple[str, dict, tuple[int, int]]] = []  # another load's hold
            unread: list[tuple[str, dict]] = []  # another load's claim taken as its load is gone
            check: list[tuple[str, dict, tuple[int, int]]] = []  # another load's finished claim: stored yet?
            for doc_id, d in zip(todo, read, strict=True):
                if not d.get("found"):
                    take.append((doc_id, None, None))
                    continue
                src, cas = d.get("_source") or {}, (d["_seq_no"], d["_primary_term"])
                age = now - float(src.get("t") or 0)
                if self._is_mine(src, import_id, {it.ref for it in groups[doc_id]}):
                    take.append((doc_id, src, cas))
                elif age > CLAIM_LEASE:
                    take.append((doc_id, src, cas))
                    if age < RECENT:
                        unread.append((doc_id, src))
                elif src.get("w"):
                    held.append((doc_id, src, cas))
                else:
                    check.append((doc_id, src, cas))
            holds.requests += 1
            if held:  # another load's hold: taken if that load ended or was killed (its old copy is deleted)
                dead = self._dead_loads([src for _, src, _ in held])
                holds.requests += 1
                for doc_id, src, cas in held:
                    if src.get("l") in dead:
                        take.append((doc_id, src, cas))
                        unread.append((doc_id, src))
                    else:
                        holds.waiting.add(doc_id)
            if unread:  # a load gone lately may have left its copy where no search sees it yet: replaced?
                holds.requests += 1
                for (doc_id, _), state in zip(unread, self._claimed_docs(unread), strict=True):
                    if state == "stored":
                        holds.existed.update(it.ref for it in groups[doc_id])
                    elif state == "no month":
                        gone.add(doc_id)
            if check:
                states, n = self._claim_states([(i, src) for i, src, _ in check])
                holds.requests += n
                for (doc_id, src, cas), state in zip(check, states, strict=True):
                    if state == "absent":  # claimed by a create load that has not written it yet
                        holds.waiting.add(doc_id)
                        continue
                    take.append((doc_id, src, cas))
                    if state == "stored":
                        holds.existed.update(it.ref for it in groups[doc_id])
                    elif state == "no month":
                        gone.add(doc_id)
            if not take:
                break
            resp = self._send_bulk(self._claim_body([groups[doc_id][-1] for doc_id, _, _ in take], import_id,
                                                    {k: cas for k, (_, _, cas) in enumerate(take) if cas},
                                                    writing=True), CLAIM_FILTER_PATH)
            holds.requests += 1
            todo = []
            for (doc_id, src, _), result in zip(take, resp["items"], strict=True):
                r = next(iter(result.values()))
                st = r.get("status", 500)
                if st < 300:
                    group = groups[doc_id]
                    holds.held[doc_id] = (group, src, (r["_seq_no"], r["_primary_term"]))
                    old = f"{events}{src['m']}" if src and src.get("m") and doc_id not in gone else None
                    for it in group:
                        if old and it.index != old:
                            holds.moved[it.ref] = {old}
                elif st == 409 or st in RETRY_STATUSES:  # lost a race for it: read it again
                    todo.append(doc_id)
                else:
                    err = r.get("error") or {}
                    holds.failed.extend(Outcome(it.ref, "failed", f"store refused the event id's claim: "
                                                f"{err.get('type')}: {_short(err.get('reason'))}", id=it.id)
                                        for it in groups[doc_id])
            if todo and attempt < self.max_retries:
                self._sleep(min(self.max_backoff, self.backoff * 2 ** attempt))
        holds.waiting.update(todo)  # still contended: tried again after this chunk
        holds.existed.difference_update(it.ref for doc_id in holds.waiting for it in groups[doc_id])
        return holds

    def _hold_again(self, chunk: list[BulkItem], holds: _Holds, import_id: str | None
                    ) -> tuple[list[BulkItem], list[BulkItem], list[Outcome], int]:
        """Overwrite, after this load's beats lapsed: the holds of ``chunk``'s event ids taken again (another
        load may have taken some over meanwhile). One still this load's is renewed and keeps the claim it
        replaced (for the give-back); the others are waited for, or taken, as ``_hold_ids`` does. Returns
        what to write, the rows to try again after the chunk, failed outcomes and the requests made."""
        events = self._event_prefix
        again = self._hold_ids(chunk, import_id)
        for doc_id, (group, src, cas) in again.held.items():
            old = holds.held.get(doc_id)
            if old is not None and src is not None and self._is_mine(src, import_id, {it.ref for it in group}):
                holds.held[doc_id] = (old[0], old[1], cas)
            else:
                holds.held[doc_id] = (group, src, cas)
        for lost in again.waiting | {o.id for o in again.failed if o.id is not None}:
            holds.held.pop(lost, None)  # another load's now (or refused): not this load's to give back
        holds.existed |= again.existed
        for ref, months in again.moved.items():
            holds.moved.setdefault(ref, set()).update(months)
        keep = [it for it in chunk if not it.index.startswith(events) or it.id in again.held]
        later = [it for it in chunk if it.index.startswith(events) and it.id in again.waiting]
        return keep, later, again.failed, again.requests

    def _give_back(self, held: dict[str, tuple[list[BulkItem], dict | None, tuple[int, int]]],
                   outcomes: list[Outcome], import_id: str | None) -> int:
        """Overwrite mode: end this chunk's holds (conditionally on the hold's seq_no: a hold that outlived
        its lease may be someone else's now). An id written names its last written row's month; one
        whose rows the store all refused gets its previous claim back (or none, if it had none)."""
        written = {o.ref for o in outcomes if o.status in ("loaded", "updated")}
        claims, cut, now = self.index("claims").encode(), len(self._event_prefix), int(self._clock())
        lines: list[bytes] = []
        for doc_id, (group, prev, (seq, term)) in held.items():
            cas = b'"_index":"%s","_id":%s,"if_seq_no":%d,"if_primary_term":%d' % (
                claims, orjson.dumps(doc_id), seq, term)
            done = [it for it in group if it.ref in written]
            if done:
                src = {"m": done[-1].index[cut:], "i": import_id, "r": done[-1].ref, "t": now, **self._load_mark()}
                lines.append(b'{"index":{%s}}\n%s\n' % (cas, orjson.dumps(src)))
            elif prev is not None:
                lines.append(b'{"index":{%s}}\n%s\n' % (cas, orjson.dumps(prev)))
            else:
                lines.append(b'{"delete":{%s}}\n' % cas)
        return self._bulk_retried(lambda part: b"".join(part), lines, "overwrite: the claim it held")

    def _release_claims(self, items: list[BulkItem]) -> int:
        """Delete this chunk's claims of events the store refused."""
        head = b'{"delete":{"_index":"%s","_id":' % self.index("claims").encode()
        return self._bulk_retried(lambda part: b"".join(b"%s%s}}\n" % (head, orjson.dumps(it.id)) for it in part),
                                  items, "the claim of a refused event")

    def _delete_copies(self, targets: list[tuple[str, str | None]], what: str = "overwrite: the old copy") -> int:
        """Delete these (index, id) documents: the copies an overwrite replaced in other months, or old
        load beats (a missing one is fine)."""
        return self._bulk_retried(lambda part: b"".join(b'{"delete":{"_index":"%s","_id":%s}}\n' % (
            ix.encode(), orjson.dumps(doc_id)) for ix, doc_id in part), targets, what)

    def _bulk_retried(self, body: Callable[[list], bytes | Blocks], items: list, what: str) -> int:
        """Send ``body(items)``; items answered 429/5xx are sent again (backoff), other failures are
        logged (a 404, nothing to delete, is fine). Returns the requests made."""
        requests = 0
        for attempt in range(self.max_retries + 1):
            if not items:
                break
            resp = self._send_bulk(body(items))
            requests += 1
            if not resp.get("errors"):
                return requests
            again = []
            for item, result in zip(items, resp["items"], strict=True):
                st = next(iter(result.values())).get("status", 500)
                if st in RETRY_STATUSES:
                    again.append(item)
                elif st >= 300 and st != 404:
                    log.warning("%s could not be written (HTTP %s): %s", what, st, getattr(item, "id", item))
            items = again
            if items and attempt < self.max_retries:
                self._sleep(min(self.max_backoff, self.backoff * 2 ** attempt))
        if items:
            log.warning("%s: %s still refused (HTTP 429/5xx)", what, len(items))
        return requests

    def _resolve_conflicts(self, items: list[BulkItem], import_id: str | None) -> list[Outcome]:
        """A 409 on create: ours from an earlier attempt (same import and row) or a real duplicate."""
        if import_id is None:
            return [Outcome(it.ref, "duplicate", id=it.id) for it in items]
        stamps = self._stamps([(it.index, it.id) for it in items])
        return [Outcome(it.ref, "loaded" if _is_own(cdp or {}, import_id, it.ref) else "duplicate", id=it.id)
                for it, cdp in zip(items, stamps, strict=True)]

    def _stamps(self, docs: list[tuple[str, str]]) -> list[dict | None]:
        """The import stamp (``metadata.aux.cdp``) of each (index, id)'s stored copy, read in real time;
        None: no copy."""
        resp = self._request("POST", "/_mget", body={"docs": [{"_index": ix, "_id": i} for ix, i in docs]},
                             params={"_source_includes": "metadata.aux.cdp"})
        return [(get_path(d, "_source.metadata.aux.cdp") or {}) if d.get("found") else None for d in resp["docs"]]

    # ---- profile merges -------------------------------------------------------------------------------
    def merge_profiles(self, rows: Iterable[ProfileRow], import_id: str, now: datetime,
                       stats: LoadStats | None = None, chunk_rows: int = 2000) -> Iterator[Outcome]:
        """Apply profile operations row by row, in order, without server-side scripts.

        Rows are cut into chunks and each chunk into ``concurrency`` lanes by profile id, so every
        profile stays in one lane. Each lane is one thread that takes its parts of the chunks in
        order, so a profile's rows keep their order while the lanes run in parallel, and the next
        chunk is mapped (by the caller's iterator) while the lanes write the previous one.
        Within a lane, rows that touch the same profile are folded in memory, then each profile is
        written once with optimistic concurrency; a conflict re-reads and re-applies that profile.
        (A lane's next read is a real-time ``_mget``, so it sees the lane's previous write.)
        A stored profile that its rows in a chunk leave exactly as it was is not written: those rows are
        ``duplicate``s (``loaded`` if this import wrote the profile before; ``_unchanged_status``).
        """
        stats = stats if stats is not None else LoadStats()
        index = self.index("profile")
        stats.indices.add(index)
        lanes = self.concurrency
        now_iso = now.replace(tzinfo=None).isoformat(timespec="microseconds")
        pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"merge-{i}") for i in range(lanes)]
        in_flight: deque[list[Future]] = deque()  # at most two chunks: one written, one queued

        def collect(futures: list[Future]) -> Iterator[Outcome]:
            for fut in futures:
                outcomes, requests = fut.result()
                stats.requests += requests
                for o in outcomes:
                    stats.add(o)
                    yield o

        try:
            chunk: list[ProfileRow] = []
            for row in itertools.chain(rows, [None]):
                if row is not None:
                    reason = self._oversized(row.ops_size(), "the row's profile data")
                    if reason:
                        o = Outcome(row.ref, "failed", reason, id=row.profile_id)
                        stats.add(o)
                        yield o
                        continue
                    chunk.append(row)
                    if len(chunk) < chunk_rows * lanes:
                        continue
                if not chunk:
                    break
                parts: list[list[ProfileRow]] = [[] for _ in range(lanes)]
                for r in chunk:
                    parts[zlib.crc32(r.profile_id.encode()) % lanes].append(r)
                in_flight.append([pools[i].submit(self._merge_chunk, index, p, import_id, now_iso)
                                  for i, p in enumerate(parts) if p])
                chunk = []
                while len(in_flight) > 1:
                    yield from collect(in_flight.popleft())
            while in_flight:
                yield from collect(in_flight.popleft())
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)

    def _merge_chunk(self, index: str, rows: list[ProfileRow], import_id: str,
                     now_iso: str) -> tuple[list[Outcome], int]:
        out: list[Outcome] = []
        requests = 0
        todo = rows
        now_mark = orjson.dumps(now_iso)
        for attempt in range(self.max_retries + 1):
            # a profile that only this row of the part touches, with the whole document the columnar mapping
            # made for it: while most such profiles are new, it is created without being read first (a
            # stored one answers 409 and goes the read-and-merge way on the next attempt)
            alone: set[str] = set()
            if any(r.new is not None for r in todo):
                rows_of = Counter(r.profile_id for r in todo)
                alone = {r.profile_id for r in todo if r.new is not None and not r.ids and rows_of[r.profile_id] == 1}
            blind = alone if attempt == 0 and self._blind_creates else set()
            ids = [i for i in dict.fromkeys(r.profile_id for r in todo) if i not in blind]
            current: dict[str, dict] = {}
            if ids:
                resp = self._request("POST", "/_mget", body={"docs": [{"_index": index, "_id": i} for i in ids]})
                current = {d["_id"]: d for d in resp["docs"] if d.get("found")}
                requests += 1
                if attempt == 0 and not blind and len(alone) >= 100:  # most of them new again: create unread
                    self._blind_creates = len(alone & current.keys()) <= len(alone) // 10
            merged: dict[str, dict] = {}
            bodies: dict[str, bytes] = {}  # in the order the profiles come, written as they are
            as_read: dict[str, bytes] = {}  # a stored profile as it was read (to tell a merge that changes nothing)
            last: dict[str, int] = {}  # the latest row of each merged profile (its stamp)
            for r in todo:
                if r.new is not None and r.profile_id in alone and r.profile_id not in current:
                    # a new profile, only this row: the document the columnar mapping made for it
                    bodies[r.profile_id] = r.new.replace(NOW_MARK, now_mark, 2)
                    continue
                doc = merged.get(r.profile_id)
                if doc is None:
                    found = current.get(r.profile_id)
                    if found:
                        doc = found["_source"]
                        as_read[r.profile_id] = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
                    else:
                        doc = new_document("profile", r.profile_id, now_iso)
                    merged[r.profile_id] = doc
                    bodies[r.profile_id] = b""
                for op, path, value in r.ops():
                    if op == "$set":  # most operations: skip the dispatch
                        set_path(doc, path, value)
                    else:
                        apply_operation(doc, op, path, value)
                for extra_id in r.ids:
                    if extra_id not in doc["ids"]:
                        doc["ids"].append(extra_id)
                last[r.profile_id] = r.ref
            same: dict[str, str] = {}  # stored profiles these rows leave as they were: not written (see below)
            for pid, doc in merged.items():
                if pid in as_read and orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) == as_read[pid]:
                    same[pid] = _unchanged_status(doc, import_id)
                    del bodies[pid]
                    continue
                doc["metadata"]["time"]["update"] = now_iso
                stamp(doc, import_id, last[pid])
                bodies[pid] = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
            if same:
                out.extend(Outcome(r.ref, same[r.profile_id], id=r.profile_id) for r in todo if r.profile_id in same)
                todo = [r for r in todo if r.profile_id not in same]
                if not todo:
                    return out, requests
            too_big = {pid: why for pid, b in bodies.items() if (why := self._oversized(len(b), "the merged profile"))}
            if too_big:  # the profile keeps its stored state; the rows that would grow it past the limit fail
                out.extend(Outcome(r.ref, "failed", too_big[r.profile_id], id=r.profile_id)
                           for r in todo if r.profile_id in too_big)
                todo = [r for r in todo if r.profile_id not in too_big]
                if not todo:
                    return out, requests
            lines: list[bytes] = []
            order = [pid for pid in bodies if pid not in too_big]
            for pid in order:
                found = current.get(pid)
                if found:
                    meta = {"_index": index, "_id": pid, "if_seq_no": found["_seq_no"],
                            "if_primary_term": found["_primary_term"]}
                    lines.append(orjson.dumps({"index": meta}))
                else:
                    lines.append(orjson.dumps({"create": {"_index": index, "_id": pid}}))
                lines.append(bodies[pid])
            step = 2 * PAYLOAD_BLOCK  # blocks of PAYLOAD_BLOCK profiles (an action line and a document each)
            result = self._send_bulk(Blocks(b"\n".join(lines[k:k + step]) + b"\n"
                                            for k in range(0, len(lines), step)))
            requests += 1
            status = {}
            if result.get("errors"):
                for pid, item in zip(order, result["items"], strict=True):
                    r = next(iter(item.values()))
                    status[pid] = (r.get("status", 500), r.get("error") or {})
            retry: list[ProfileRow] = []
            for r in todo:
                st, err = status.get(r.profile_id, (200, {}))
                if st < 300:
                    out.append(Outcome(r.ref, "loaded", id=r.profile_id))
                elif st in (409, *RETRY_STATUSES):
                    retry.append(r)
                else:
                    out.append(Outcome(r.ref, "failed", f"store rejected the profile: {err.get('type')}: "
                                                        f"{_short(err.get('reason'))}", id=r.profile_id))
            if not retry:
                return out, requests
            stored = sum(1 for r in retry if r.profile_id in blind and status[r.profile_id][0] == 409)
            if blind and len(blind) >= 100:  # most of them stored already: read before writing from now on
                self._blind_creates = stored <= len(blind) // 2
            if len(retry) > stored:
                log.info("profile merge: %s rows hit a concurrent update, retry %s", len(retry) - stored, attempt + 1)
            todo = retry
        out.extend(Outcome(r.ref, "failed", "profile kept changing concurrently; gave up after retries",
                           id=r.profile_id) for r in todo)
        return out, requests

    # ---- reads used by the ledger and tests ------------------------------------------------------------
    def get(self, index: str, doc_id: str) -> dict | None:
        resp = self._request("GET", f"/{index}/_doc/{doc_id}", ok_statuses=(404,))
        return resp if resp and resp.get("found") else None

    def count(self, index: str, query: dict | None = None, *, refresh: bool = False) -> int:
        """Documents in ``index`` matching ``query``; ``refresh`` first makes everything written searchable
        (a month a load created paused does not refresh on its own while the load runs)."""
        if refresh:
            self.refresh([index])
        resp = self._request("POST", f"/{index}/_count", body={"query": query or {"match_all": {}}},
                             params={"ignore_unavailable": "true"}, ok_statuses=(404,))
        return int((resp or {}).get("count", 0))


@dataclass(slots=True)
class ProfileRow:
    """One source row's operations on one profile (SPEC §2 ``$set/$add/$remove/$delete``).

    Rows from the columnar mapping (``fastmap.ProfileBatchMapper``) carry their operations as JSON
    (``ops_json``, parsed only when needed) and ``new``: the whole document a new profile gets from
    this row alone, with ``fastmap.NOW_MARK`` for its insert/update times."""

    profile_id: str
    ref: int
    operations: list[tuple[str, str, Any]] | None
    ids: list[str] = field(default_factory=list)
    new: bytes | None = None
    ops_json: bytes | None = None

    def ops(self) -> list:
        if self.operations is None:
            self.operations = orjson.loads(self.ops_json or b"[]")
        return self.operations

    def ops_size(self) -> int:
        """Bytes of the operations as JSON (the size limit's measure)."""
        if self.ops_json is not None:
            return len(self.ops_json)
        return len(orjson.dumps(self.operations, default=str))


def _is_own(cdp: dict, import_id: str | None, ref: int) -> bool:
    """Written by this import (an earlier attempt of it) from this very row."""
    return import_id is not None and cdp.get("import_id") == import_id and cdp.get("row") == ref


def _unchanged_status(doc: dict, import_id: str | None) -> str:
    """A stored profile that a row's operations leave as it was: a ``duplicate`` of what is stored (the
    same data imported again, a row a dataset sync reads again), unless this import wrote it (an earlier
    attempt of it, or an earlier row of it): then ``loaded``, as that attempt counted it."""
    return "loaded" if import_id is not None and get_path(doc, "metadata.aux.cdp.import_id") == import_id \
        else "duplicate"


PAUSE_META = "cdp_ingest_refresh_paused"  # the lease a load keeps on a month whose refresh it paused
# A past month created by a load (live collectors do not write to it): its events were all claimed, so a
# create-mode load does not search it for copies written without a claim (Store._claim_ids).
CLAIMED_META = "cdp_ingest_claimed"


class _Paused:
    """Creates the months one load writes to first, and keeps the ones it created with their automatic
    refresh off (``indices``; see the module doc)."""

    LEASE = 1800.0  # seconds a pause holds without renewal; renewed every RENEW seconds while the load runs
    RENEW = 300.0

    def __init__(self, store: Store, indices: set[str] | None = None, *, pause: bool = True) -> None:
        self.store = store
        self.pause = pause  # create the months paused (past ones only)
        self.indices: set[str] = indices or set()
        self.renewed = store._clock()
        self._live: set[str] | None = None

    @classmethod
    def recover(cls, store: Store) -> set[str]:
        """Months left with their refresh off by a load that was killed (its lease ran out): refresh them
        and restore the setting, so what it wrote becomes searchable. Returns the months a load created
        (``CLAIMED_META``: every event in them was claimed)."""
        resp = store._request("GET", f"/{store._event_prefix}*/_mapping", ok_statuses=(404,),
                              params={"filter_path": "*.mappings._meta", "ignore_unavailable": "true",
                                      "allow_no_indices": "true"})
        now = store._clock()
        metas = {ix: (m.get("mappings") or {}).get("_meta") or {} for ix, m in (resp or {}).items()
                 if isinstance(m, dict)}
        stale = sorted(ix for ix, meta in metas.items() if 0 < float(meta.get(PAUSE_META, {}).get("until", 0)) < now)
        if stale:
            log.warning("refresh of %s was left paused by a load that did not finish: restoring it", ", ".join(stale))
            cls(store, set(stale)).resume()
        return {ix for ix, meta in metas.items() if meta.get(CLAIMED_META) is True}

    def _meta(self, until: float) -> dict:
        return {"_meta": {PAUSE_META: {"until": until}, CLAIMED_META: True}}

    def _live_months(self) -> set[str]:
        """The months live collectors write to now: this UTC month, and the next/last one near its ends."""
        from datetime import UTC, timedelta

        now = datetime.fromtimestamp(self.store._clock(), UTC)
        prefix = self.store._event_prefix
        return {f"{prefix}{d:%Y-%m}" for d in (now - timedelta(days=2), now, now + timedelta(days=2))}

    def create(self, index: str) -> None:
        """Create the month ``index`` before the chunk that first writes to it is sent: paused, unless it
        is a live month or pausing is off. (Left to the bulk request to auto-create, a new month answered
        a search made meanwhile, by another chunk's id check, with 503 until its shard had started.) One
        that exists already (created meanwhile by someone else) is left alone."""
        st = self.store
        if self._live is None:
            self._live = self._live_months()
        live = index in self._live  # live collectors write to it: its events are not all claimed
        paused = self.pause and not live
        body: dict | None = None
        if not live:
            body = {"mappings": self._meta(st._clock() + self.LEASE if paused else 0)}
            if paused:
                body["settings"] = {"index.refresh_interval": "-1"}
        resp = st._request("PUT", f"/{index}", body=body, ok_statuses=(400,))
        if isinstance(resp, dict) and resp.get("error"):
            if "already_exists" not in str((resp["error"] or {}).get("type", "")):
                raise StoreError(f"PUT /{index} failed: {_short(resp['error'])}")
            return
        if paused:
            self.indices.add(index)

    def renew(self) -> None:
        now = self.store._clock()
        if self.indices and now - self.renewed >= self.RENEW:
            self.renewed = now
            names = ",".join(sorted(self.indices))
            self.store._request("PUT", f"/{names}/_mapping", body=self._meta(now + self.LEASE))

    def resume(self) -> None:
        """Refresh back on (the template's default), what was written made searchable, lease cleared."""
        if not self.indices:
            return
        names = ",".join(sorted(self.indices))
        st = self.store
        st._request("PUT", f"/{names}/_settings", body={"index": {"refresh_interval": None}})
        st.refresh(self.indices)
        st._request("PUT", f"/{names}/_mapping", body=self._meta(0))
        self.indices = set()


class _Lapsed(Exception):
    """Raised before a request that writes claimed events when this load's beats lapsed since it claimed
    them (``_Beat.check``): another load may have taken the claims over meanwhile."""


class _Beat:
    """One load's sign of life: ``{"t": time, "i": import_id}`` at ``<prefix>import-loads/<token>``, written
    before its first claim (each claim carries the token as ``"l"``), rewritten every ``LOAD_BEAT`` s by a
    thread while the load runs and deleted when it ends. Another load meeting one of its claims without
    the event takes it over once the beat is gone or older than ``LOAD_STALE`` (``Store._dead_loads``).

    The other side of that: this load must not write events it claimed if its beats lapsed since (the
    process was frozen, or could not reach the store, for ``LOAD_STALE / 2``): each lapse starts a new
    ``epoch``, and ``check(epoch)`` before every request that writes claimed events raises ``_Lapsed``
    when the epoch changed or the beats lapse now; the chunk then claims its ids again."""

    def __init__(self, store: Store, import_id: str | None) -> None:
        import secrets

        self.store = store
        self.import_id = import_id
        self.token = secrets.token_urlsafe(8)
        self.path = f"/{store.index('loads')}/_doc/{self.token}"
        self.last_ok = store._clock()
        self.epoch = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _done(self, at: float) -> None:
        with self._lock:
            if at - self.last_ok > LOAD_STALE / 2:  # a gap: claims made before it may have been taken over
                self.epoch += 1
            self.last_ok = max(self.last_ok, at)

    def beat(self) -> None:
        """Write the beat now (with the store's retries; raises ``StoreError`` if it cannot)."""
        at = self.store._clock()
        self.store._request("PUT", self.path, body={"t": at, "i": self.import_id})
        self._done(at)

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="load-beat", daemon=True)
        self._thread.start()
        self._clear_old()

    def _clear_old(self) -> None:
        """Delete beats killed loads left behind over ``BEAT_KEPT`` ago (their claims are settled by now):
        a search, then the store's bulk delete — no ``_delete_by_query``, which the integ-test
        distribution lacks. A failure is logged, never the load's."""
        loads = self.store.index("loads")
        try:
            resp = self.store.client.transport.perform_request(
                "POST", f"/{loads}/_search", params={"filter_path": "hits.hits._id"},
                body={"size": 1000, "_source": False,
                      "query": {"range": {"t": {"lt": self.store._clock() - BEAT_KEPT}}}})
            old = [h["_id"] for h in ((resp or {}).get("hits") or {}).get("hits") or []]
            if old:
                self.store._delete_copies([(loads, i) for i in old], what="a killed load's beat")
                log.info("cleared %d load beat(s) killed loads left behind", len(old))
        except Exception as e:
            log.warning("old load beats not cleared (%s)", e.__class__.__name__)

    def _run(self) -> None:
        while not self._stop.wait(LOAD_BEAT):
            at = self.store._clock()
            try:  # one attempt (no retries: the next beat is the retry, and the load's counters stay its own)
                self.store.client.transport.perform_request("PUT", self.path, body={"t": at, "i": self.import_id})
            except Exception as e:
                log.warning("load beat not written (%s); next try in %.0f s", e.__class__.__name__, LOAD_BEAT)
                continue
            self._done(at)

    def lapsed(self) -> bool:
        return self.store._clock() - self.last_ok > LOAD_STALE / 2

    def check(self, epoch: int) -> None:
        if self.epoch != epoch or self.lapsed():
            raise _Lapsed(f"no load beat written for over {LOAD_STALE / 2:.0f} s since the chunk's ids were "
                          f"claimed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:  # one attempt: a beat left behind goes stale, as a killed load's does
            self.store.client.transport.perform_request("DELETE", self.path, ignore=(404,))
        except Exception as e:
            if getattr(e, "status_code", None) == 404:
                return
            log.warning("load beat %s not removed (%s): it goes stale in %.0f s", self.token,
                        e.__class__.__name__, LOAD_STALE)


@dataclass
class _Holds:
    """What ``Store._hold_ids`` took for one overwrite chunk."""

    held: dict[str, tuple[list[BulkItem], dict | None, tuple[int, int]]] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)  # ids another load is writing: tried again later
    failed: list[Outcome] = field(default_factory=list)
    existed: set[int] = field(default_factory=set)  # rows replacing a copy another load stored
    moved: dict[int, set[str]] = field(default_factory=dict)  # row → the month its old copy is in
    taken: set[str] = field(default_factory=set)  # ids another load took over (or gave back): _taken_meanwhile
    requests: int = 0


@dataclass(slots=True)
class _Sent:
    """What ``Store._write_columns`` sent of a chunk before handing it to ``_write_chunk``: the load's beat
    epoch taken before the claims, the claims' answer, and the events' (None: not sent)."""

    epoch: int
    claims: dict | None  # None: to be sent again (answered without statuses)
    events: dict | None


class _Terse:
    """Whether a store's next columnar create chunk asks for its bulk answers without item results
    (``TERSE_FILTER_PATH``). A chunk answered ``"errors": true`` costs a second request for its statuses,
    so after one the next chunks ask for them: 1, then 2, 4 … up to 64 chunks after each such chunk in a
    row (a re-import of stored events conflicts in every chunk); a chunk written whole without them
    starts the count again at 1."""

    MAX = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skip = 0  # chunks left that ask for statuses
        self._pause = 1  # chunks to ask for them after the next miss

    def ask(self) -> bool:
        with self._lock:
            if self._skip:
                self._skip -= 1
                return False
            return True

    def missed(self) -> None:
        with self._lock:
            self._skip = self._pause
            self._pause = min(self.MAX, self._pause * 2)

    def clean(self) -> None:
        with self._lock:
            self._pause = 1


def _arrow_blocks(body: Any) -> Blocks:
    """An Arrow binary array's bytes (no nulls; a chunked array: each chunk's) as a request body, without a copy."""
    import numpy as np

    blocks = Blocks()
    for part in _chunks_of([body]):
        offsets = np.frombuffer(part.buffers()[1], np.int32)[part.offset:part.offset + len(part) + 1]
        data = part.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            blocks.append(memoryview(data)[int(offsets[0]):int(offsets[-1])])
    return blocks


class _IdWindow:
    """Event ids one load has sent (id → index), kept until a refresh has made them searchable.

    ``done`` is the last chunk whose results came back; ``expire`` (called right after a refresh)
    forgets the ids of chunks up to it. A deque keeps the order, so forgetting is O(forgotten). A create
    load's ``ItemBatch`` chunks keep theirs as one Arrow array each (``add_ids``; ``recent`` for
    ``pc.is_in``): no Python string, dict entry and deque entry per row (~0.5 µs per event less)."""

    def __init__(self) -> None:
        self._ids: dict[str, tuple[str, int]] = {}
        self._order: deque[tuple[int, str]] = deque()
        self._arrays: deque[tuple[int, Any]] = deque()  # (chunk, its ids) of create loads' ItemBatch chunks
        self.indices: set[str] = set()
        self.done = 0

    def __len__(self) -> int:  # what it holds, repeats included (what refresh + expire frees)
        return len(self._order) + sum(len(ids) for _, ids in self._arrays)

    def get(self, doc_id: str) -> tuple[str, int] | None:
        """(index, chunk) where this load sent the id last."""
        return self._ids.get(doc_id)

    def add(self, doc_id: str, index: str, seq: int) -> None:
        self._ids[doc_id] = (index, seq)
        self._order.append((seq, doc_id))
        self.indices.add(index)

    def add_ids(self, ids: Any, seq: int) -> None:
        """A create load's ``ItemBatch`` chunk's ids (an Arrow array): kept as they are, not one by one."""
        self._arrays.append((seq, ids))

    def unpack(self) -> None:
        """The ids ``add_ids`` kept, one by one (a create load's chunk of ``BulkItem``s follows theirs)."""
        while self._arrays:
            seq, ids = self._arrays.popleft()
            for doc_id in ids.to_pylist():
                if doc_id not in self._ids:
                    self._ids[doc_id] = ("", seq)
                    self._order.append((seq, doc_id))

    def recent(self) -> Any:
        """Every id held, as one Arrow array (for ``pc.is_in``); None when none is."""
        from cdp_ingest.arrow import pa

        parts = [ids for _, ids in self._arrays]
        if self._ids:
            parts.append(pa.array(list(self._ids), pa.string()))
        return pa.concat_arrays(parts) if parts else None

    def expire(self, upto: int | None = None) -> None:
        """Forget the ids of chunks up to ``upto`` (default: ``done``)."""
        upto = self.done if upto is None else upto
        while self._arrays and self._arrays[0][0] <= upto:
            self._arrays.popleft()
        while self._order and self._order[0][0] <= upto:
            seq, doc_id = self._order.popleft()
            hit = self._ids.get(doc_id)
            if hit is not None and hit[1] == seq:
                del self._ids[doc_id]


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode() if value else ""
    return text[:limit]
