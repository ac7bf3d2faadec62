"""Historical replay (SPEC §5): archived Segment-spec messages → a Segment-compatible ``/v1/batch`` API
or Tracardi's ``/track``, with their original times, every message accounted for.

Two steps, which the Airflow DAG runs as separate tasks and the CLI chains in one process:

``plan_replay`` (transform): stream the archive (JSON lines, plain or gzip; CSV through a message
mapping; or events read back from our own store), apply the message rules of ``segment.py``, drop
repeated messageIds, and pack the accepted messages into **pre-built batches** (each ≤ ``max_batch_bytes``
and ≤ ``max_batch_messages``) written to a staged Parquet file, one row per batch (payload, line refs,
messageIds). Refused messages go to the error CSV (``line``, ``message``, ``Failure Description``).
The plan is deterministic: the same archive and settings give the same batches and the same digest.

``send_plan`` (replay): POST the batches in order, ``concurrency`` in flight, at most ``rate_limit``
messages a second. 429/5xx/connection errors are retried with exponential backoff honouring
``Retry-After``; a 400/413/422 on a batch is bisected until the refused messages are isolated, and
those go to the error file with the receiver's reason. After each batch is acknowledged (and all
before it), a checkpoint entry (a JSON line appended to a log: batch number, cumulative counts, error-file
length) is written, so a retried or killed run resumes after the last acknowledged batch: only the in-flight batches are
sent again, and their messageIds make them duplicates at the receiver.

Accounting: ``rows_in = sent + rejected + duplicates`` (``accounting(plan, result)``) is checked before
the caller commits. Memory is bounded by one staged row group, the in-flight batches and the
duplicate window (``dedup_window`` recent ids; repeats further apart are left to the receiver, which
drops them by messageId).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from cdp_ingest.arrow import pa
from cdp_ingest.errorfile import ErrorFileWriter
from cdp_ingest.ledger import Accounting
from cdp_ingest.replay_lines import (
    PreparedBlock,
    Record,
    init_worker,
    prepare_lines,
    prepare_records,
    records_of_lines,
)
from cdp_ingest.segment import (  # noqa: F401 - settings and errors are part of this module's interface
    _ENVELOPE_HEAD,
    _ENVELOPE_TAIL,
    ARCHIVE_SUFFIXES,
    DESTINATIONS,
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    SENT_AT_FIELD,
    Preparer,
    ReplayConfigError,
    ReplayError,
    ReplaySettings,
    is_archive_name,
    prepare_message,
    tracardi_payloads,
)

log = logging.getLogger(__name__)

ERROR_COLUMNS = ["source", "line", "message"]
PLAN_SCHEMA = pa.schema([("batch", pa.int32()), ("count", pa.int32()), ("refs", pa.list_(pa.int64())),
                         ("ids", pa.list_(pa.string())), ("payload", pa.binary())])
PLAN_FLUSH_BYTES = 8 << 20


class RetryableSendError(Exception):
    def __init__(self, status: int | None, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BatchRefused(Exception):
    """The receiver refused the request's content (400/413/422): bisect to find the bad messages."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ---- sources --------------------------------------------------------------------------------------
class JsonLines:
    """JSON lines (plain or gzip) as records, one block of the file in memory at a time.

    Lines are split in bulk and the raw line is kept as bytes (decoded only for the error file):
    this reader is the replay's hot path. Line numbers count every line, blank ones included (blank
    lines are not records); a line over ``MAX_JSON_LINE_BYTES`` is a bad record, not a crash.
    ``blocks()`` gives the raw lines in blocks (number of the first line, lines), which planning hands
    to worker processes; iterating gives the records."""

    def __init__(self, source: Any, *, storage_options: dict | None = None, block_size: int = 1 << 20):
        self.source, self.storage_options, self.block_size = source, storage_options, block_size

    def __iter__(self) -> Iterator[Record]:
        from cdp_ingest.readers import MAX_JSON_LINE_BYTES

        for first, lines in self.blocks():
            yield from records_of_lines(first, lines, MAX_JSON_LINE_BYTES)

    def blocks(self) -> Iterator[tuple[int, list[bytes]]]:
        import zlib

        from cdp_ingest.readers import MAX_JSON_LINE_BYTES, _read_error, _source_name, open_source

        name = _source_name(self.source) or "<file object>"
        line_no = 0  # lines handed out so far
        with open_source(self.source, storage_options=self.storage_options) as stream:
            rest = b""
            overlong = False
            while True:
                try:
                    block = stream.read(self.block_size)
                except (OSError, EOFError, zlib.error) as e:
                    raise _read_error(name, e) from e
                if not block:
                    break
                lines = (rest + block).split(b"\n") if rest else block.split(b"\n")
                rest = lines.pop()
                if overlong and lines:  # the end of a line already reported as too long
                    lines.pop(0)
                    overlong = False
                if len(rest) > MAX_JSON_LINE_BYTES:
                    if not overlong:
                        lines.append(rest)  # reported as too long; the rest of it is skipped
                    overlong, rest = True, b""
                if lines:
                    yield line_no + 1, lines
                    line_no += len(lines)
            if rest.strip() and not overlong:
                yield line_no + 1, [rest]


def jsonl_records(source: Any, *, storage_options: dict | None = None, block_size: int = 1 << 20) -> JsonLines:
    """JSON lines (plain or gzip) as records (see ``JsonLines``)."""
    return JsonLines(source, storage_options=storage_options, block_size=block_size)


PARALLEL_AFTER_BLOCKS = 8  # blocks (~1 MB each) planned in-process before worker processes start


def prepared_blocks(records: Iterable[Record], preparer: Preparer, *, workers: int = 1) -> Iterator[PreparedBlock]:
    """Prepared messages in archive order. JSON lines (``JsonLines``) with ``workers`` > 1 are parsed and
    rewritten by that many worker processes (spawned, so a task process's threads and sockets are not
    forked) once the archive is longer than ``PARALLEL_AFTER_BLOCKS`` blocks; the caller packs the batches,
    so the plan is the same whatever the number of workers."""
    if workers <= 1 or not isinstance(records, JsonLines):
        yield from prepare_records(records, preparer)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from cdp_ingest.readers import MAX_JSON_LINE_BYTES as max_line

    blocks = records.blocks()
    for n, (first, lines) in enumerate(blocks):
        yield prepare_lines(first, lines, max_line, preparer)
        if n + 1 >= PARALLEL_AFTER_BLOCKS:
            break
    else:
        return
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(preparer,)) as pool:
        try:
            for first, lines in blocks:
                pending.append(pool.submit(prepare_lines, first, lines, max_line))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def csv_records(source: Any, mapping: dict[str, Any], *, storage_options: dict | None = None) -> Iterator[Record]:
    """CSV rows as messages through a message mapping::

        type: track                 # or {column: kind}
        fields: {user: userId, name: event, ts: timestamp, price: properties.price}
        json_fields: [context]      # columns holding JSON objects

    Unmapped columns are ignored. Values stay strings, except ``json_fields``.
    """
    from cdp_ingest.documents import set_path
    from cdp_ingest.readers import read_batches

    fields = dict(mapping.get("fields") or {})
    json_cols = set(mapping.get("json_fields") or [])
    kind = mapping.get("type", "track")
    for sb in read_batches(source, "csv", storage_options=storage_options):
        names = sb.batch.schema.names
        cols = [c.to_pylist() for c in sb.batch.columns]
        for i, values in enumerate(zip(*cols, strict=True)):
            row = dict(zip(names, values, strict=True))
            raw = orjson.dumps(row).decode()
            problem = sb.bad_rows.get(i)
            msg: dict[str, Any] = {"type": row.get(kind["column"]) if isinstance(kind, dict) else kind}
            for col, target in fields.items():
                value = row.get(col)
                if value in (None, ""):
                    continue
                if col in json_cols:
                    try:
                        value = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        problem = problem or f"column '{col}': not valid JSON"
                set_path(msg, target, value)
            yield Record(sb.first_row + i, msg, raw, problem)


def store_records(store: Any, *, start: datetime, end: datetime, page: int = 2000) -> Iterator[Record]:
    """Events already in our store (``<prefix>event-*``, ``metadata.time.insert`` in [start, end)) as
    Segment ``track`` messages: the event's type, properties, profile, session and original time."""
    body: dict[str, Any] = {
        "size": page, "query": {"range": {"metadata.time.insert": {"gte": start.isoformat(),
                                                                   "lt": end.isoformat()}}},
        "sort": [{"metadata.time.insert": "asc"}, {"id": "asc"}],
    }
    line = 0
    while True:
        resp = store._request("POST", f"/{store.prefix}event-*/_search", body=body, ok_statuses=(404,))
        hits = ((resp or {}).get("hits") or {}).get("hits") or []
        for h in hits:
            line += 1
            doc = h["_source"]
            msg = event_as_message(doc)
            yield Record(line, msg, orjson.dumps({"_index": h["_index"], "_id": h["_id"]}).decode())
        if len(hits) < page:
            return
        body["search_after"] = hits[-1]["sort"]


def event_as_message(doc: dict[str, Any]) -> dict[str, Any]:
    ts = (doc.get("metadata") or {}).get("time", {}).get("insert")
    if ts and not str(ts).endswith("Z") and "+" not in str(ts)[10:]:
        ts = f"{ts}Z"  # stored times are naive UTC
    profile = (doc.get("profile") or {}).get("id")
    session = (doc.get("session") or {}).get("id")
    return {"type": "track", "event": doc.get("type"), "userId": profile, "messageId": doc.get("id"),
            "timestamp": ts, "properties": doc.get("properties") or {},
            "context": {"sessionId": session, "source": (doc.get("source") or {}).get("id")}}


# ---- plan (transform) -----------------------------------------------------------------------------
@dataclass
class ReplayPlan:
    rows_in: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    missing_timestamp: int = 0
    batches: int = 0
    payload_bytes: int = 0
    largest_batch_bytes: int = 0
    digest: str = ""
    staged: str | None = None
    error_file: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RecentIds:
    """Bounded memory of the last ``size`` messageIds (exact within the window)."""

    def __init__(self, size: int):
        self.size = size
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def seen(self, mid: str) -> bool:
        if mid in self._ids:
            return True
        self._ids.add(mid)
        self._order.append(mid)
        if len(self._order) > self.size:
            self._ids.discard(self._order.popleft())
        return False


def plan_replay(records: Iterable[Record], settings: ReplaySettings, *, unit: str, staged_path: str | Path,
                error_path: str | Path, source_label: str = "") -> ReplayPlan:
    """Validate and rewrite every record, pack accepted messages into batches, stage them."""
    settings.check()
    t0 = time.monotonic()
    staged_path = Path(staged_path)
    staged_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged_path.with_suffix(".partial")
    plan = ReplayPlan()
    errors = ErrorFileWriter(error_path, ERROR_COLUMNS)
    Path(error_path).unlink(missing_ok=True)
    recent = _RecentIds(settings.dedup_window)
    digest = hashlib.sha256()
    overhead = len(_ENVELOPE_HEAD) + len(_ENVELOPE_TAIL)
    rows: dict[str, list] = {k: [] for k in PLAN_SCHEMA.names}
    held = 0
    cur_refs: list[int] = []
    cur_ids: list[str] = []
    cur_bodies: list[bytes] = []
    cur_bytes = overhead

    writer = pq.ParquetWriter(tmp, PLAN_SCHEMA, compression="zstd", use_dictionary=False)  # unique values

    def close_batch() -> None:
        nonlocal cur_bytes, held
        if not cur_bodies:
            return
        payload = _ENVELOPE_HEAD + b",".join(cur_bodies) + _ENVELOPE_TAIL
        rows["batch"].append(plan.batches)
        rows["count"].append(len(cur_bodies))
        rows["refs"].append(list(cur_refs))
        rows["ids"].append(list(cur_ids))
        rows["payload"].append(payload)
        digest.update(f"{plan.batches}:{len(cur_ids)}:".encode() + "\x1f".join(cur_ids).encode())
        plan.batches += 1
        plan.payload_bytes += len(payload)
        plan.largest_batch_bytes = max(plan.largest_batch_bytes, len(payload))
        held += len(payload)
        cur_refs.clear()
        cur_ids.clear()
        cur_bodies.clear()
        cur_bytes = overhead
        if held >= PLAN_FLUSH_BYTES:
            flush()

    def flush() -> None:
        nonlocal held
        if rows["batch"]:
            writer.write_table(pa.table(rows, schema=PLAN_SCHEMA))
            for v in rows.values():
                v.clear()
        held = 0

    try:
        preparer = Preparer(settings.name, unit, integrations=settings.integrations,
                            max_bytes=settings.max_message_bytes)
        for block in prepared_blocks(records, preparer, workers=settings.workers):
            plan.rows_in += block.rows_in
            plan.rejected += len(block.rejected)
            for line, raw, reason in block.rejected:
                errors.write({"source": source_label, "line": line, "message": raw}, reason)
            for line, mid, body, has_ts in block.accepted:
                if recent.seen(mid):
                    plan.duplicates += 1
                    continue
                plan.accepted += 1
                plan.missing_timestamp += not has_ts
                size = len(body) + (1 if cur_bodies else 0)
                if cur_bodies and (cur_bytes + size > settings.max_batch_bytes
                                   or len(cur_bodies) >= settings.max_batch_messages):
                    close_batch()
                    size = len(body)
                cur_refs.append(line)
                cur_ids.append(mid)
                cur_bodies.append(memoryview(body).tobytes())
                cur_bytes += size
        close_batch()
        flush()
    finally:
        writer.close()
        path = errors.close()
    os.replace(tmp, staged_path)
    plan.digest = digest.hexdigest()
    plan.staged = str(staged_path)
    plan.error_file = str(path) if path else None
    plan.seconds = round(time.monotonic() - t0, 3)
    log.info("replay %s planned: rows_in=%s accepted=%s rejected=%s duplicates=%s missing_timestamp=%s "
             "batches=%s", settings.name, plan.rows_in, plan.accepted, plan.rejected, plan.duplicates,
             plan.missing_timestamp, plan.batches)
    return plan


@dataclass
class PlannedBatch:
    number: int
    refs: list[int]
    ids: list[str]
    payload: bytes


def read_plan(staged_path: str | Path, *, start_after: int = -1, with_ids: bool = True) -> Iterator[PlannedBatch]:
    """The staged batches in order, one row group in memory at a time (``with_ids=False``: without the
    messageIds, which sending does not need and which cost a third of the read)."""
    pf = pq.ParquetFile(staged_path, pre_buffer=False)
    columns = ["batch", "refs", "ids", "payload"] if with_ids else ["batch", "refs", "payload"]
    for g in range(pf.num_row_groups):
        if pf.metadata.row_group(g).num_rows == 0:
            continue
        stats = pf.metadata.row_group(g).column(0).statistics
        if stats is not None and stats.has_min_max and stats.max <= start_after:
            continue
        group = pf.read_row_group(g, columns=columns, use_threads=False).to_pydict()
        ids = group["ids"] if with_ids else [[]] * len(group["batch"])
        for n, refs, batch_ids, payload in zip(group["batch"], group["refs"], ids, group["payload"], strict=True):
            if n > start_after:
                yield PlannedBatch(n, refs, batch_ids, payload)
        del group


def stamp_sent_at(payload: bytes, when: datetime) -> bytes:
    """Write the send time into every ``sentAt`` placeholder of a pre-built batch."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return payload.replace(SENT_AT_FIELD, b'"sentAt":"' + stamp.encode() + b'"')


def split_payload(payload: bytes) -> list[dict[str, Any]]:
    return orjson.loads(payload)["batch"]


def build_payload(messages: list[dict[str, Any]]) -> bytes:
    return (_ENVELOPE_HEAD + b",".join(orjson.dumps(m) for m in messages) + _ENVELOPE_TAIL)


# ---- sinks ----------------------------------------------------------------------------------------
class HttpSink:
    """POSTs JSON to a receiver and classifies its answer. ``session`` is any requests-compatible
    session (the Airflow operator passes HttpHook's, which carries the connection's auth)."""

    name = "http"
    path = "/"

    def __init__(self, endpoint: str, *, session: Any = None, auth: tuple[str, str] | None = None,
                 timeout: float = 60.0):
        import requests

        self.endpoint = endpoint.rstrip("/")
        self.session = session or requests.Session()
        if auth is not None:
            self.session.auth = auth
        self.timeout = timeout

    def post(self, path: str, body: bytes) -> None:
        import requests

        try:
            resp = self.session.post(self.endpoint + path, data=body, timeout=self.timeout,
                                     headers={"Content-Type": "application/json"})
        except (requests.ConnectionError, requests.Timeout) as e:
            raise RetryableSendError(None, f"{type(e).__name__}: {e}") from e
        status = resp.status_code
        if status < 300:
            return
        text = resp.text[:500]
        if status in (429, 408) or status >= 500:
            raise RetryableSendError(status, f"HTTP {status}: {text}", _retry_after(resp.headers.get("Retry-After")))
        if status in (400, 413, 422):
            raise BatchRefused(status, f"HTTP {status}: {text}")
        raise ReplayError(f"{self.name} receiver at {self.endpoint}{path} answered HTTP {status}: {text}")

    def send(self, payload: bytes) -> None:
        self.post(self.path, payload)


class SegmentSink(HttpSink):
    """Segment's HTTP tracking API: ``POST /v1/batch``, the write key as basic-auth user."""

    name = "segment"
    path = "/v1/batch"

    def __init__(self, endpoint: str, *, write_key: str | None = None, session: Any = None, timeout: float = 60.0):
        super().__init__(endpoint, session=session, auth=(write_key, "") if write_key else None, timeout=timeout)


class TracardiSink(HttpSink):
    """Tracardi's ``POST /track``: one tracker payload per (profile, session) of the batch."""

    name = "tracardi"
    path = "/track"

    def __init__(self, endpoint: str, *, source_id: str, session: Any = None, timeout: float = 60.0):
        if not source_id:
            raise ReplayConfigError("tracardi destination: source_id (a Tracardi event source id) is required")
        super().__init__(endpoint, session=session, timeout=timeout)
        self.source_id = source_id

    def send(self, payload: bytes) -> None:
        for p in tracardi_payloads(split_payload(payload), self.source_id):
            self.post(self.path, orjson.dumps(p))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


# ---- checkpoint -----------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    digest: str
    batch: int = -1  # the last batch acknowledged with every one before it
    sent: int = 0
    rejected: int = 0
    error_bytes: int = 0
    requests: int = 0
    retries: int = 0

    @classmethod
    def load(cls, path: Path, digest: str) -> Checkpoint:
        """The last complete entry of the checkpoint log (a killed write leaves a torn line, skipped)."""
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - (64 << 10)))
                tail = fh.read().split(b"\n")
        except FileNotFoundError:
            return cls(digest)
        for line in reversed(tail):
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            if data.get("digest") != digest:
                log.warning("checkpoint %s belongs to another plan: starting from the first batch", path)
                return cls(digest)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        return cls(digest)

    def open_log(self, path: Path) -> Any:
        """The log to append to: continued when resuming this plan, started afresh otherwise."""
        if self.batch < 0 or not path.exists():
            return open(path, "wb")
        fh = open(path, "r+b")
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":  # a torn last line: the next entry starts on its own line
                fh.write(b"\n")
        return fh

    def append(self, fh: Any) -> None:
        """One line per acknowledged batch, flushed to the OS (a killed process keeps it), not fsync'd:
        after a machine crash an older entry only means more batches are sent again, which the receiver
        drops by messageId. (An atomic rewrite per batch cost ~1 ms of rename on this file system, an fsync
        ~10 ms; an appended line costs microseconds.)"""
        fh.write(orjson.dumps(asdict(self)) + b"\n")
        fh.flush()


# ---- send (replay) --------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    sent: int
    rejected: int
    batches: int
    resumed_after: int
    requests: int
    retries: int
    error_file: str | None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Delivery:
    sent: int = 0
    refused: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)
    requests: int = 0
    retries: int = 0


class _RateLimiter:
    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.clock = clock
        self.start = clock()
        self.count = 0

    def wait(self, n: int) -> None:
        if self.per_second <= 0:
            return
        due = self.start + self.count / self.per_second
        delay = due - self.clock()
        if delay > 0:
            time.sleep(delay)
        self.count += n


class _ReadAhead:
    """Iterates ``source`` in a background thread, at most ``depth`` items ahead (bounded memory);
    an error in the source is raised in the consumer; leaving the ``with`` stops the thread."""

    _END = object()

    def __init__(self, source: Iterable[Any], depth: int):
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fill, args=(source,), name="replay-read", daemon=True)

    def _fill(self, source: Iterable[Any]) -> None:
        import queue

        try:
            for item in source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            self._error = e
        self._queue.put(self._END)

    def __enter__(self) -> Iterator[Any]:
        self._thread.start()
        return self._items()

    def _items(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        while self._thread.is_alive():  # drain, so a producer blocked on a full queue sees the stop
            try:
                self._queue.get_nowait()
            except Exception:  # empty
                self._thread.join(0.05)


class Replayer:
    def __init__(self, sink: HttpSink, settings: ReplaySettings, *, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.sink = sink
        self.settings = settings
        self.sleep = sleep
        self.now = now

    def _post(self, payload: bytes, d: _Delivery) -> None:
        s = self.settings
        attempt = 0
        while True:
            d.requests += 1
            try:
                self.sink.send(stamp_sent_at(payload, self.now()))
                return
            except RetryableSendError as e:
                attempt += 1
                if attempt > s.max_retries:
                    raise ReplayError(f"{self.sink.name}: gave up after {s.max_retries} retries: {e}") from e
                d.retries += 1
                backoff = min(s.max_backoff_seconds, s.backoff_seconds * 2 ** (attempt - 1))
                delay = e.retry_after if e.retry_after is not None else backoff * (0.5 + random.random() / 2)
                log.warning("%s: %s; retry %s/%s in %.1f s", self.sink.name, e, attempt, s.max_retries, delay)
                self.sleep(min(delay, s.max_backoff_seconds))

    def deliver(self, batch: PlannedBatch) -> _Delivery:
        d = _Delivery()
        self._deliver(batch.payload, batch.refs, d, None)
        return d

    def _deliver(self, payload: bytes, refs: list[int], d: _Delivery,
                 messages: list[dict[str, Any]] | None) -> None:
        try:
            self._post(payload, d)
            d.sent += len(refs)
        except BatchRefused as e:
            msgs = messages if messages is not None else split_payload(payload)
            if len(msgs) == 1:
                d.refused.append((refs[0], msgs[0], e.reason))
                return
            mid = len(msgs) // 2
            for part, part_refs in ((msgs[:mid], refs[:mid]), (msgs[mid:], refs[mid:])):
                self._deliver(build_payload(part), part_refs, d, part)

    def run(self, staged_path: str | Path, *, digest: str, checkpoint_path: str | Path, error_path: str | Path,
            source_label: str = "") -> ReplayResult:
        t0 = time.monotonic()
        checkpoint_path = Path(checkpoint_path)
        error_path = Path(error_path)
        cp = Checkpoint.load(checkpoint_path, digest)
        resumed_after = cp.batch
        if error_path.exists():  # drop what a killed run wrote after its last checkpoint
            with open(error_path, "r+b") as fh:
                fh.truncate(cp.error_bytes)
        elif cp.error_bytes:
            raise ReplayError(f"replay error file {error_path} is missing but the checkpoint counts "
                              f"{cp.rejected} refused messages")
        if resumed_after >= 0:
            log.info("replay %s resumes after batch %s (%s messages already acknowledged)", self.settings.name,
                     resumed_after, cp.sent)
        limiter = _RateLimiter(self.settings.rate_limit)
        inflight: deque[tuple[PlannedBatch, Future[_Delivery]]] = deque()
        batches = 0

        def settle(batch: PlannedBatch, d: _Delivery) -> None:
            nonlocal batches
            if d.refused:
                with ErrorFileWriter(error_path, ERROR_COLUMNS, append=True) as w:
                    for ref, msg, reason in d.refused:
                        w.write({"source": source_label, "line": ref, "message": orjson.dumps(msg).decode()},
                                f"refused by the receiver: {reason}")
                # durable before a checkpoint counts it: a resume truncates the file to error_bytes
                with open(error_path, "rb+") as fh:
                    os.fsync(fh.fileno())
                cp.error_bytes = error_path.stat().st_size
            cp.batch = batch.number
            cp.sent += d.sent
            cp.rejected += len(d.refused)
            cp.requests += d.requests
            cp.retries += d.retries
            cp.append(cp_log)
            batches += 1

        # one batch waits queued behind the ones being sent, and the plan is read ahead in a thread (its
        # Parquet decoding releases the GIL), so the senders are not idle while the next row group is read
        cp_log = cp.open_log(checkpoint_path)
        with (cp_log, ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="replay") as pool,
              _ReadAhead(read_plan(staged_path, start_after=cp.batch, with_ids=False), depth=16) as planned):
            try:
                for batch in planned:
                    limiter.wait(len(batch.refs))
                    inflight.append((batch, pool.submit(self.deliver, batch)))
                    while inflight and (len(inflight) > self.settings.concurrency or inflight[0][1].done()):
                        b, fut = inflight.popleft()
                        settle(b, fut.result())
                while inflight:
                    b, fut = inflight.popleft()
                    settle(b, fut.result())
            finally:
                for _, fut in inflight:
                    fut.cancel()
        return ReplayResult(cp.sent, cp.rejected, batches, resumed_after, cp.requests, cp.retries,
                            str(error_path) if error_path.exists() and cp.error_bytes else None,
                            time.monotonic() - t0)


def accounting(plan: ReplayPlan, result: ReplayResult) -> Accounting:
    """rows_in = sent + rejected (by us or by the receiver) + duplicates; ``check()`` before commit."""
    return Accounting(rows_in=plan.rows_in, loaded=result.sent, rejected=plan.rejected + result.rejected,
                      duplicates=plan.duplicates)


def make_sink(destination: str, endpoint: str, *, write_key: str | None = None, source_id: str | None = None,
              session: Any = None) -> HttpSink:
    if destination == "segment":
        return SegmentSink(endpoint, write_key=write_key, session=session)
    if destination == "tracardi":
        return TracardiSink(endpoint, source_id=source_id or "", session=session)
    raise ReplayConfigError(f"destination must be one of {DESTINATIONS}, not {destination!r}")


def open_records(source: str, *, mapping: dict[str, Any] | None = None,
                 storage_options: dict | None = None) -> Iterable[Record]:
    """Records of one archive file: CSV (needs a message mapping) or JSON lines (plain or gzip; Segment's
    own S3 archive files are ``<time>.<uuid>.gz`` without an inner extension, so that is JSON lines too)."""
    name = str(source).rsplit("/", 1)[-1].lower().removesuffix(".gz")
    if name.endswith(".csv"):
        if not mapping:
            raise ReplayConfigError(f"{source}: a CSV archive needs a message mapping (fields: column -> path)")
        return csv_records(source, mapping, storage_options=storage_options)
    if name.endswith(".parquet"):
        raise ReplayConfigError(f"{source}: Parquet archives are not supported for replay (JSON lines or CSV)")
    return jsonl_records(source, storage_options=storage_options)



# ---- one archive file, end to end (CLI, benchmark; the DAG runs the same steps as tasks) -----------
@dataclass
class UnitReport:
    source: str
    status: str  # planned (dry run) | replayed
    plan: ReplayPlan
    result: ReplayResult | None
    error_file: str | None

    def counts(self) -> dict[str, Any]:
        r = self.result
        return {"source": self.source, "status": self.status, "rows_in": self.plan.rows_in,
                "sent": r.sent if r else 0, "rejected": self.plan.rejected + (r.rejected if r else 0),
                "duplicates": self.plan.duplicates, "missing_timestamp": self.plan.missing_timestamp,
                "batches": self.plan.batches, "resumed_after_batch": r.resumed_after if r else None,
                "retries": r.retries if r else 0, "error_file": self.error_file}


def unit_key(source: str, size: int, checksum: str) -> str:
    from cdp_ingest.documents import fingerprint_id

    return fingerprint_id(source, size, checksum)


def replay_unit(source: str, settings: ReplaySettings, sink: HttpSink | None, *, work_dir: str | Path,
                mapping: dict[str, Any] | None = None, storage_options: dict | None = None,
                dry_run: bool = False) -> UnitReport:
    """Plan (or reuse the plan of a killed run of the same archive) and send one archive file."""
    from cdp_ingest.ledger import SourceUnit
    from cdp_ingest.pipeline import merge_error_files

    settings.check()
    unit = SourceUnit.from_file(source, opener=_opener(source, storage_options))
    work = Path(work_dir) / unit_key(source, unit.size, unit.checksum)
    work.mkdir(parents=True, exist_ok=True)
    plan_file = work / "plan.json"
    plan: ReplayPlan | None = None
    if plan_file.exists() and (work / "staged.parquet").exists():
        saved = orjson.loads(plan_file.read_bytes())
        if saved.get("settings") == _plan_settings(settings):
            plan = ReplayPlan(**saved["plan"])
    if plan is None:
        plan = plan_replay(open_records(source, mapping=mapping, storage_options=storage_options), settings,
                           unit=source, staged_path=work / "staged.parquet",
                           error_path=work / "plan-errors.csv", source_label=source)
        plan_file.write_bytes(orjson.dumps({"settings": _plan_settings(settings), "plan": plan.to_dict()}))
    if dry_run or sink is None:
        return UnitReport(source, "planned", plan, None, plan.error_file)
    result = Replayer(sink, settings).run(work / "staged.parquet", digest=plan.digest,
                                          checkpoint_path=work / "checkpoint.jsonl",
                                          error_path=work / "send-errors.csv", source_label=source)
    accounting(plan, result).check()
    error_file = merge_error_files(work / "errors.csv", plan.error_file, result.error_file)
    return UnitReport(source, "replayed", plan, result, error_file)


def _opener(source: str, storage_options: dict | None) -> Callable[[str, str], Any]:
    if "://" not in source:
        return open
    import fsspec

    return lambda path, mode: fsspec.open(path, mode, **(storage_options or {})).open()


def _plan_settings(s: ReplaySettings) -> dict[str, Any]:
    """The settings a plan depends on (a change means a new plan)."""
    return {"name": s.name, "integrations": s.integrations, "max_batch_bytes": s.max_batch_bytes,
            "max_batch_messages": s.max_batch_messages, "max_message_bytes": s.max_message_bytes,
            "dedup_window": s.dedup_window}


def list_archive(location: str, *, storage_options: dict | None = None) -> list[str]:
    """The archive files under ``location`` (a file, a folder or an object-store prefix), in name order:
    ``*.gz``, ``*.json``, ``*.jsonl``, ``*.ndjson``, ``*.csv`` (Segment's S3 layout is date folders of .gz)."""
    if location.startswith(("http://", "https://")):
        return [location]
    if "://" not in location:
        p = Path(location)
        if p.is_file():
            return [str(p)]
        if not p.is_dir():
            from cdp_ingest.errors import FileLevelError

            raise FileLevelError("no_data_file", f"archive not found: {location}")
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and is_archive_name(f.name))
    import fsspec

    fs, root = fsspec.core.url_to_fs(location, **(storage_options or {}))
    proto = location.split("://", 1)[0]
    if fs.isfile(root):
        return [location]
    return sorted(f"{proto}://{f}" for f in fs.find(root) if is_archive_name(f.rsplit("/", 1)[-1]))
