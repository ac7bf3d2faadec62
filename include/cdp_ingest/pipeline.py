"""Import steps shared by every source: begin → transform (stage) → load → commit.

The Airflow DAGs run each step as its own task and pass only paths and counts between them:

- ``begin_unit``: fingerprint the source unit and open (or resume) its ledger entry.
- ``transform_unit``: stream the source in bounded batches, map/validate each row, write accepted
  rows to a staged Parquet file (serialised documents, ready to send) and rejected rows to the
  error CSV. Counts: rows_in = accepted + rejected.
- ``load_unit``: stream the staged file into the store; per-item failures go to a second error CSV.
- ``commit_unit``: merge the error files, check rows_in = loaded + rejected + duplicates, commit.

``import_unit`` chains them in one process and can skip the staging file (``stage=False``) so that
mapping and loading overlap; the benchmark and the embedded demo use it.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import logging
import os
import shutil
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdp_ingest.arrow import pa
from cdp_ingest.documents import index_for
from cdp_ingest.errorfile import FAILURE_COLUMN, ErrorFileWriter
from cdp_ingest.errors import RowError
from cdp_ingest.ledger import Accounting, Ledger, LedgerEntry, SourceUnit
from cdp_ingest.mapping import Mapped
from cdp_ingest.store import MAX_CELL_BYTES, WRITE_MODES, BulkItem, ItemBatch, LoadStats, Outcome, ProfileRow, Store

log = logging.getLogger(__name__)

STAGE_SCHEMA = pa.schema([
    ("ref", pa.int64()), ("kind", pa.string()), ("index", pa.string()), ("id", pa.string()),
    ("body", pa.binary()), ("orig", pa.binary()),
])
# The write mode (store.WRITE_MODES) travels with the staged file, in its Parquet key-value metadata.
WRITE_MODE_KEY = b"cdp.write_mode"
STAGE_ROWS = 5_000  # at most this many rows per staged row group (and per batch a load reads)
# ... and at most about this much serialised payload per row group. 4 MB, not 8: the load holds a row
# group in Arrow and as Python bytes while chunks of the one before are in flight (625k wide partition
# rows: load peak +143 → +121 MB, transform 194 → 178 MB, same time; 2 MB was slower).
STAGE_FLUSH_BYTES = 4 << 20
# A cell larger than MAX_CELL_BYTES rejects its row before it is mapped (one 50 MB cell sent as one bulk
# item ran a 1 GB-heap OpenSearch out of heap); the store also refuses documents over max_document_bytes.

RowFn = Callable[[dict[str, str], int], Mapped]
# The columnar mapping works on slices of this many rows: each Arrow kernel's intermediate arrays are
# freed to the allocator (mimalloc), which keeps them, so a 50,000-row reader batch mapped in one piece
# raised the process's RSS by ~160 MB for good (8,192-row slices: ~70 MB, at the same speed).
FAST_ROWS = 8_192
# While a step runs, the cyclic GC's first generation waits for this many new container objects instead
# of 700: a load allocates millions of short-lived rows, items and outcomes (freed by reference counting,
# none in cycles), and the default threshold ran a collection every few hundred rows — ~30 % of the
# engine's CPU in a 1M-event load (20.6 -> 14.2 µs per row measured side by side).
GC_THRESHOLD0 = 100_000
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
    """Raise the GC's first threshold (GC_THRESHOLD0) for the duration; nested/concurrent uses share it
    and the last one out restores the process's setting and hands freed memory back (``release_memory``)."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(GC_THRESHOLD0, _gc_saved[0]), _gc_saved[1], _gc_saved[2])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                release_memory()


def release_memory() -> None:
    """Return the memory a step freed to the OS: Arrow's pool keeps freed blocks, and glibc keeps freed
    heap (a load's millions of ~1 KB bodies, freed out of order) unless trimmed. A task process exits
    after its step anyway; a process that runs many steps (``dag.test()``, a long-lived worker) otherwise
    carried each step's leftovers into the next one (8 partition files in one process: ~80 MB more)."""
    pa.default_memory_pool().release_unused()
    if _libc is not None:
        _libc.malloc_trim(0)


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # Tried and left out: a fixed 1 MiB mmap threshold (mallopt) kept a load's ~4 MB bodies out of the heap
    # (peak -17 MB) but made every larger Arrow intermediate of the transform a fresh mapping: +25 % time.
    return libc if hasattr(libc, "malloc_trim") else None


_libc = _glibc()


@dataclass
class TransformResult:
    rows_in: int
    accepted: int
    rejected: int
    staged: str | None
    error_file: str | None
    columns: list[str]
    kinds: list[str]
    write_mode: str = "create"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadResult:
    loaded: int
    duplicates: int
    failed: int
    error_file: str | None
    indices: list[str]
    requests: int
    retries: int
    updated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportReport:
    unit_id: str
    import_id: str
    path: str
    status: str  # committed | skipped
    rows_in: int
    loaded: int
    rejected: int
    duplicates: int
    error_file: str | None
    seconds: float = 0.0
    updated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def begin_unit(ledger: Ledger, source_path: str, opener: Callable[[str, str], Any] = open, *, kind: str,
               source: str, account: str | None = None, force: bool = False) -> LedgerEntry:
    unit = SourceUnit.from_file(source_path, opener=opener)
    return ledger.begin(unit, kind=kind, source=source, account=account, force=force)


# ---- transform ------------------------------------------------------------------------------------
def oversized_cells(batch: pa.RecordBatch, max_cell_bytes: int) -> dict[int, str]:
    """Row index → failure description for rows with a text/binary cell over ``max_cell_bytes``
    (computed on the Arrow columns, so clean batches cost one vectorised max per column)."""
    found: dict[int, str] = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                or pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
            continue
        lengths = pc.binary_length(col)
        longest = pc.max(lengths).as_py()
        if longest is None or longest <= max_cell_bytes:
            continue
        for i, n in enumerate(lengths.to_pylist()):
            if n is not None and n > max_cell_bytes and i not in found:
                found[i] = f"column '{name}': cell is {n:,} bytes, over the limit of {max_cell_bytes:,}"
    return found


def iter_rows(batches: Iterable, max_cell_bytes: int | None = None
              ) -> Iterator[tuple[int, dict[str, Any], list[str], str | None]]:
    """(row number, row dict, header, reader's failure description or None) for every data row.

    CSV values are strings; Parquet values keep their Arrow-to-Python types (maps as lists of
    pairs, decimals, datetimes) for the row function to interpret. Rows with a cell over
    ``max_cell_bytes`` come with a failure description.
    """
    for sb in batches:
        names = sb.batch.schema.names
        cols = [c.to_pylist() for c in sb.batch.columns]
        bad = sb.bad_rows
        if max_cell_bytes is not None:
            big = oversized_cells(sb.batch, max_cell_bytes)
            if big:
                bad = {**big, **bad}
        for i, values in enumerate(zip(*cols, strict=True)):
            yield sb.first_row + i, dict(zip(names, values, strict=True)), names, bad.get(i)


def mapped_to_stage_row(m: Mapped, prefix: str, import_id: str, ref: int) -> tuple[str, str, bytes]:
    """(index, id, body) for the stage: a serialised document, or a profile's operations."""
    if m.kind == "profile":
        body = orjson.dumps({"ops": m.operations}, default=str)
        return f"{prefix}profile", m.doc_id, body
    doc = m.document
    assert doc is not None, "a session/event Mapped carries its document"
    doc["metadata"]["aux"]["cdp"] = {"import_id": import_id, "row": ref}
    return index_for(prefix, m.kind, m.when), m.doc_id, orjson.dumps(doc, default=str)


class _BatchRows:
    """The source rows of one batch for ``LazyRow``s: their JSON (``orjson.dumps(row)``) made for the
    whole batch on first use, with Arrow compute (a row with a control character is left to orjson)."""

    __slots__ = ("batch", "_json")

    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch
        self._json: list[bytes | None] | None = None

    def json(self) -> list[bytes | None]:
        if self._json is None:
            self._json = self.json_array().to_pylist()
        return self._json

    def json_array(self) -> pa.Array:
        """The rows' JSON as an Arrow binary array (null for a row left to orjson)."""
        from cdp_ingest.fastmap import json_strings

        parts: list[Any] = []
        clean = None
        for name, col in zip(self.batch.schema.names, self.batch.columns, strict=True):
            lit, ok = json_strings(col)
            clean = ok if clean is None else pc.and_(clean, ok)
            parts += [("," if parts else "{") + orjson.dumps(name).decode() + ":", lit]
        rows = pc.binary_join_element_wise(*parts, "}", "")
        return pc.cast(pc.if_else(clean, rows, pa.scalar(None, pa.string())), pa.binary())


class LazyRow:
    """A source row kept as (batch, position) until someone needs it as a dict (a store rejection)
    or as JSON (the staged file's ``orig`` column)."""

    __slots__ = ("rows", "i")

    def __init__(self, rows: _BatchRows, i: int):
        self.rows, self.i = rows, i

    def as_dict(self) -> dict[str, Any]:
        return self.rows.batch.slice(self.i, 1).to_pylist()[0]

    def as_json(self) -> bytes:
        return self.rows.json()[self.i] or memoryview(orjson.dumps(self.as_dict(), default=str)).tobytes()


class SourceRows:
    """The source rows of the rows in flight in a streamed load, by row number, for the ones the store
    refuses: a mapped batch's rows as one entry (a ``LazyRow`` made when one is asked for), a row mapped
    alone as itself; forgotten once the store says every row up to a number has its outcome
    (``Outcome.final``), or, for a row mapped alone, when its own outcome comes."""

    def __init__(self) -> None:
        self._batches: deque[tuple[int, int, _BatchRows]] = deque()  # (first row, last row, rows), in order
        self._rows: OrderedDict[int, dict[str, Any] | LazyRow] = OrderedDict()

    def add_batch(self, first: int, rows: _BatchRows) -> None:
        self._batches.append((first, first + rows.batch.num_rows - 1, rows))

    def add_row(self, ref: int, row: dict[str, Any] | LazyRow) -> None:
        self._rows[ref] = row

    def done(self, o: Outcome) -> dict[str, Any] | LazyRow | None:
        """Settle ``o``; the source row of a failed one (None if unknown)."""
        if o.final:
            while self._batches and self._batches[0][1] <= o.ref:
                self._batches.popleft()
            while self._rows and next(iter(self._rows)) <= o.ref:
                self._rows.popitem(last=False)
            return None
        row = self._rows.pop(o.ref, None)
        if row is None and o.status == "failed":
            for first, last, rows in self._batches:  # the batches of the chunks in flight: a few
                if first <= o.ref <= last:
                    return LazyRow(rows, o.ref - first)
        return row


def _as_row(row: dict[str, Any] | LazyRow | None) -> dict[str, Any]:
    return row.as_dict() if isinstance(row, LazyRow) else row or {}


def _batch_mapper(row_fn: RowFn) -> Any:
    """The columnar mapper for a plain ``Mapper.map_row`` of an event or profile mapping, or for a
    ``PartitionMapper.map_row``; None for any other row function."""
    if os.environ.get("CDP_ROW_MAPPING") == "1":  # the row-by-row path only (benchmarks, comparisons)
        return None
    from cdp_ingest.mapping import Mapper

    owner = getattr(row_fn, "__self__", None)
    if type(owner) is not Mapper or getattr(row_fn, "__func__", None) is not Mapper.map_row:
        from cdp_ingest.partition_fastmap import PartitionBatchMapper

        return PartitionBatchMapper.compile(row_fn)
    from cdp_ingest.fastmap import EventBatchMapper, ProfileBatchMapper

    return EventBatchMapper.compile(owner) or ProfileBatchMapper.compile(owner)


def _slices(batches: Iterable, rows: int) -> Iterator[Any]:
    """Reader batches cut into ``SourceBatch``es of at most ``rows`` rows (zero-copy slices)."""
    from cdp_ingest.readers import SourceBatch

    for sb in batches:
        n = sb.batch.num_rows
        if n <= rows:
            yield sb
            continue
        for start in range(0, n, rows):
            bad = {i - start: why for i, why in sb.bad_rows.items() if start <= i < start + rows}
            yield SourceBatch(sb.batch.slice(start, rows), sb.first_row + start, bad)


def _stage_row(ref: int, m: Mapped, row: dict[str, Any], prefix: str, import_id: str) -> tuple:
    """A row mapped by the row function as a staged row. Body and source JSON are copied to exact-size
    ``bytes``: orjson's result keeps a ~4 KB allocation whatever its length, which made a 20,000-row
    buffer of 1 KB rows cost ~300 MB, not ~50 MB."""
    index, doc_id, body = mapped_to_stage_row(m, prefix, import_id, ref)
    return (ref, m.kind, index, doc_id, memoryview(body).tobytes(),
            memoryview(orjson.dumps(row, default=str)).tobytes())


def _stage_table(rows: list[tuple]) -> pa.Table:
    """``STAGE_SCHEMA`` rows (ref, kind, index, id, body, orig) as a table."""
    return pa.table([pa.array(col, t) for col, t in zip(zip(*rows, strict=True), STAGE_SCHEMA.types, strict=True)],
                    schema=STAGE_SCHEMA)


class RowMapper:
    """Runs a row function over source rows: rejected rows go to the error CSV (created on the first
    one), accepted rows come out as ``(ref, Mapped, row)``. Counts rows_in / accepted / rejected."""

    def __init__(self, row_fn: RowFn, error_path: str | Path, max_cell_bytes: int | None = MAX_CELL_BYTES):
        self.row_fn = row_fn
        self.max_cell_bytes = max_cell_bytes
        self.error_path = Path(error_path)
        self.rows_in = self.accepted = 0
        self.header: list[str] = []  # every column seen so far (see _see)
        self._names: list[str] | None = None
        self.kinds: set[str] = set()
        self._errors: ErrorFileWriter | None = None

    @property
    def rejected(self) -> int:
        return self.rows_in - self.accepted

    def _see(self, names: list[str]) -> None:
        """Every column seen so far, in order of first appearance (batches of JSON lines need not share
        their columns; a CSV file's batches all have its header)."""
        if names is self._names:
            return
        self._names = names
        if names != self.header:
            known = set(self.header)
            self.header = [*self.header, *(n for n in names if n not in known)]

    def reject(self, row: dict[str, Any], reason: str) -> None:
        if self._errors is None:
            self._errors = ErrorFileWriter(self.error_path, self.header)
        self._errors.write(row, reason)

    def items(self, batches: Iterable, prefix: str, import_id: str
              ) -> Iterator[tuple[int, str, str, str, bytes, dict[str, Any] | LazyRow]]:
        """(ref, kind, index, id, body, row) per accepted row, in file order: what the stage and the bulk
        load need. Event and profile mappings go through ``fastmap`` batch by batch (the row is then
        a ``LazyRow``, made into a dict only if the store rejects it); the rows it leaves, and every other
        mapping, through the row function."""
        fast = _batch_mapper(self.row_fn)
        if fast is None:
            for ref, m, row in self.run(batches):
                yield (ref, m.kind, *mapped_to_stage_row(m, prefix, import_id, ref), row)
            return
        kind = fast.kind
        for sb, bad, fb in self._mapped_slices(fast, batches, prefix, import_id):
            batch = sb.batch
            if fb is None:
                for ref, m, row in self.run([sb]):
                    yield (ref, m.kind, *mapped_to_stage_row(m, prefix, import_id, ref), row)
                continue
            slow = [i for i, ok in enumerate(fb.ok) if not ok]
            slow_rows = dict(zip(slow, batch.take(slow).to_pylist(), strict=True)) if slow else {}
            first, n = sb.first_row, batch.num_rows
            rows = _BatchRows(batch)
            if fb.origs is not None:
                rows._json = fb.origs
            self.rows_in += n
            accepted = 0  # here; the row function's are counted by _row
            indices, ids, bodies = fb.indices, fb.ids, fb.bodies
            for i, ok in enumerate(fb.ok):
                ref = first + i
                if ok:
                    accepted += 1
                    yield ref, kind, indices[i], ids[i], bodies[i], LazyRow(rows, i)
                    continue
                row = slow_rows[i]
                left = self._row(row, ref, bad.get(i))
                if left is not None:
                    yield (ref, left.kind, *mapped_to_stage_row(left, prefix, import_id, ref), row)
            self.accepted += accepted
            if accepted:
                self.kinds.add(kind)

    def item_batches(self, batches: Iterable, prefix: str, import_id: str, sources: SourceRows
                     ) -> Iterator[ItemBatch | BulkItem]:
        """What ``items`` gives, for the bulk load: the rows the columnar event mapping took as
        ``ItemBatch``es (runs of consecutive rows), the rest as ``BulkItem``s, in file order; every row's
        source row goes to ``sources``."""
        fast = _batch_mapper(self.row_fn)
        if fast is None or fast.kind != "event":
            for ref, _kind, index, doc_id, body, row in self.items(batches, prefix, import_id):
                sources.add_row(ref, row)
                yield BulkItem(index, doc_id, body, ref)
            return
        for sb, bad, fb in self._mapped_slices(fast, batches, prefix, import_id):
            if fb is None:
                for ref, m, row in self.run([sb]):
                    sources.add_row(ref, row)
                    yield BulkItem(*mapped_to_stage_row(m, prefix, import_id, ref), ref)
                continue
            batch = sb.batch
            first, n = sb.first_row, batch.num_rows
            rows = _BatchRows(batch)
            if fb.origs is not None:
                rows._json = fb.origs
            self.rows_in += n
            sources.add_batch(first, rows)
            whole = ItemBatch(pa.array(np.arange(first, first + n, dtype=np.int64)), fb.column("indices"),
                              fb.column("ids"), fb.column("bodies"))
            fast_ok = np.asarray(fb.ok, dtype=bool)
            slow = np.flatnonzero(~fast_ok).tolist()
            # the rows the columnar mapping left go through the row function first (in file order); only the
            # ones it accepts cut the batch there (file order), the rejected ones are filtered out of the run:
            # a few bad rows per batch cost one filter, not hundreds of small ItemBatches down the load
            left_items: dict[int, BulkItem] = {}
            for i, row in zip(slow, batch.take(slow).to_pylist() if slow else [], strict=True):
                ref = first + i
                left = self._row(row, ref, bad.get(i))
                if left is not None:
                    sources.add_row(ref, row)
                    left_items[i] = BulkItem(*mapped_to_stage_row(left, prefix, import_id, ref), ref)
            start = accepted = 0
            for i in [*left_items, n]:
                took = int(fast_ok[start:i].sum())
                if took:
                    accepted += took
                    run = whole if i - start == n else whole.slice(start, i - start)
                    yield run if took == i - start else run.filter(fast_ok[start:i])
                if i < n:
                    yield left_items[i]
                start = i + 1
            self.accepted += accepted
            if accepted:
                self.kinds.add(fast.kind)

    def _mapped_slices(self, fast: Any, batches: Iterable, prefix: str, import_id: str
                       ) -> Iterator[tuple[Any, dict[int, str], Any]]:
        """(slice, its bad rows, ``FastBatch`` or None) per ``FAST_ROWS`` slice: the columnar mapping's
        result (None: it took none of the slice), rows with an oversized cell marked bad first."""
        limit = self.max_cell_bytes
        for sb in _slices(batches, FAST_ROWS):
            batch = sb.batch
            self._see(batch.schema.names)
            bad = sb.bad_rows
            if limit is not None:
                big = oversized_cells(batch, limit)
                if big:
                    bad = {**big, **bad}
            yield sb, bad, fast.map_batch(batch, sb.first_row, prefix, import_id, bad) if batch.num_rows else None

    def stage_tables(self, batches: Iterable, prefix: str, import_id: str, flush_rows: int = STAGE_ROWS,
                     flush_bytes: int = STAGE_FLUSH_BYTES) -> Iterator[pa.Table]:
        """What ``items`` gives, as ``STAGE_SCHEMA`` tables in file order (the staged file's rows, with the
        source row's JSON as ``orig``). A slice the columnar mapping took becomes one table made from its
        Arrow columns, without a Python object per row; the rows it left, and every other mapping, go
        through the row function into tables of at most ``flush_rows`` rows / about ``flush_bytes``."""
        fast = _batch_mapper(self.row_fn)
        if fast is None:
            yield from self._row_tables(batches, prefix, import_id, flush_rows, flush_bytes)
            return
        kind = fast.kind
        for sb, bad, fb in self._mapped_slices(fast, batches, prefix, import_id):
            batch = sb.batch
            if fb is None:
                yield from self._row_tables([sb], prefix, import_id, flush_rows, flush_bytes)
                continue
            first, n = sb.first_row, batch.num_rows
            self.rows_in += n
            slow = [i for i, ok in enumerate(fb.ok) if not ok]
            tables = []
            if len(slow) < n:  # the rows mapped here, straight from their Arrow columns
                orig = fb.column("origs")
                cols = [pa.array(np.arange(first, first + n, dtype=np.int64)), fb.column("indices"), fb.column("ids"),
                        fb.column("bodies"), orig if orig is not None else _BatchRows(batch).json_array()]
                if slow:  # (most slices have none: no copy of their bodies then)
                    mask = pa.array(fb.ok, pa.bool_())
                    cols = [c.filter(mask) for c in cols]
                orig = cols.pop()
                if orig.null_count:  # rows the Arrow JSON left to orjson
                    at, source = [i for i, ok in enumerate(fb.ok) if ok], _BatchRows(batch)
                    orig = pa.array([v if v is not None else orjson.dumps(LazyRow(source, at[j]).as_dict(), default=str)
                                     for j, v in enumerate(orig.to_pylist())], pa.binary())
                k = n - len(slow)
                tables.append(pa.table([cols[0], pa.array([kind] * k, pa.string()), *cols[1:], orig],
                                       schema=STAGE_SCHEMA))
                self.accepted += k
                self.kinds.add(kind)
            if slow:  # the rows left to the row function, in order
                rows = dict(zip(slow, batch.take(slow).to_pylist(), strict=True))
                staged = []
                for i in slow:
                    m = self._row(rows[i], first + i, bad.get(i))
                    if m is not None:
                        staged.append(_stage_row(first + i, m, rows[i], prefix, import_id))
                if staged:
                    tables.append(_stage_table(staged))
            if len(tables) == 2:
                both = pa.concat_tables(tables)
                yield both.take(pc.sort_indices(both["ref"]))
            elif tables:
                yield tables[0]

    def _row_tables(self, batches: Iterable, prefix: str, import_id: str, flush_rows: int,
                    flush_bytes: int) -> Iterator[pa.Table]:
        """``stage_tables`` through the row function, row by row."""
        staged: list[tuple] = []
        held = 0
        for ref, m, row in self.run(batches):
            staged.append(_stage_row(ref, m, row, prefix, import_id))
            held += len(staged[-1][4]) + len(staged[-1][5])
            if held >= flush_bytes or len(staged) >= flush_rows:
                yield _stage_table(staged)
                staged, held = [], 0
        if staged:
            yield _stage_table(staged)

    def run(self, batches: Iterable) -> Iterator[tuple[int, Mapped, dict[str, Any]]]:
        limit = self.max_cell_bytes
        for ref, row, names, bad in iter_rows(batches, limit):
            self._see(names)
            self.rows_in += 1
            m = self._row(row, ref, bad)
            if m is not None:
                yield ref, m, row

    def _row(self, row: dict[str, Any], ref: int, bad: str | None) -> Mapped | None:
        """The row function on one row (``bad``: why the reader already refused it): accepted and counted,
        or rejected into the error CSV (None)."""
        try:
            if bad is not None:
                raise RowError(bad)
            m = self.row_fn(row, ref)
        except RowError as e:
            self.reject(row, str(e))
            return None
        self.accepted += 1
        self.kinds.add(m.kind)
        return m

    def close(self) -> str | None:
        path = self._errors.close() if self._errors else None
        if path is None and self.error_path.exists():
            self.error_path.unlink()  # left by an earlier attempt that rejected rows this one did not
        return str(path) if path else None


@relaxed_gc()
def transform_unit(batches: Iterable, row_fn: RowFn, *, prefix: str, import_id: str, staged_path: str | Path,
                   error_path: str | Path, flush_bytes: int = STAGE_FLUSH_BYTES,
                   flush_rows: int = STAGE_ROWS, max_cell_bytes: int | None = MAX_CELL_BYTES,
                   write_mode: str = "create") -> TransformResult:
    """Map every row, write accepted rows to the staged Parquet file and rejected rows to the error CSV.

    Rows are written as row groups of at most ``flush_rows`` rows and about ``flush_bytes`` of payload,
    so memory stays flat for wide rows too (SFTP rows are often ~1 KB), and a load reads one row group
    at a time. Rows the columnar mapping takes go from its Arrow columns to the file
    (``RowMapper.stage_tables``).
    """
    staged_path = Path(staged_path)
    staged_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged_path.with_suffix(".partial")
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, not {write_mode!r}")
    writer = pq.ParquetWriter(tmp, STAGE_SCHEMA.with_metadata({WRITE_MODE_KEY: write_mode.encode()}),
                              compression="zstd")
    rm = RowMapper(row_fn, error_path, max_cell_bytes)
    write = ThreadPoolExecutor(1, thread_name_prefix="stage-write")  # compresses and writes while the next maps
    written: Future | None = None
    try:
        for table in rm.stage_tables(batches, prefix, import_id, flush_rows, flush_bytes):
            payload = table.column("body").nbytes + table.column("orig").nbytes
            group = max(1, min(flush_rows, flush_bytes * table.num_rows // payload if payload else flush_rows))
            if written is not None:
                written.result()
            written = write.submit(writer.write_table, table, row_group_size=group)
        if written is not None:
            written.result()
    finally:
        write.shutdown(wait=True, cancel_futures=True)
        writer.close()
        error_file = rm.close()
    os.replace(tmp, staged_path)
    return TransformResult(rm.rows_in, rm.accepted, rm.rejected, str(staged_path), error_file, list(rm.header),
                           sorted(rm.kinds), write_mode)


@relaxed_gc()
def stream_unit(batches: Iterable, row_fn: RowFn, store: Store, *, kind: str, import_id: str,
                error_path: str | Path, now: datetime | None = None,
                max_cell_bytes: int | None = MAX_CELL_BYTES, write_mode: str = "create"
                ) -> tuple[TransformResult, LoadResult]:
    """Map and load in one pass, without a staging file: the main thread maps rows while the bulk
    threads wait on the store, so the two overlap. Rejected and store-refused rows share one error CSV."""
    now = now or datetime.now(UTC)
    rm = RowMapper(row_fn, error_path, max_cell_bytes)
    stats = LoadStats()
    pending = SourceRows()  # the original rows, only while their outcome is not back

    def mapped() -> Iterator[tuple[int, Mapped]]:
        for ref, m, row in rm.run(batches):
            pending.add_row(ref, row)
            yield ref, m

    def profile_rows() -> Iterator[ProfileRow]:
        if _batch_mapper(row_fn) is None:
            for ref, m in mapped():
                yield ProfileRow(m.doc_id, ref, m.operations)
            return
        for ref, _kind, _index, pid, body, row in rm.items(batches, store.prefix, import_id):
            pending.add_row(ref, row)
            yield staged_profile_row(pid, ref, body)

    outcomes = (store.merge_profiles(profile_rows(), import_id, now, stats=stats) if kind == "profile"
                else store.bulk_load(rm.item_batches(batches, store.prefix, import_id, pending), import_id=import_id,
                                     stats=stats, write_mode=write_mode))
    try:
        for o in outcomes:
            row = pending.done(o)
            if o.status == "failed":
                rm.reject(_as_row(row), o.reason or "store rejected the row")
    finally:
        error_file = rm.close()
    store.refresh(stats.indices)
    t = TransformResult(rm.rows_in, rm.accepted, rm.rejected, None, error_file, list(rm.header), sorted(rm.kinds),
                        write_mode)
    ld = LoadResult(stats.loaded, stats.duplicates, stats.failed, None, sorted(stats.indices), stats.requests,
                    stats.retries, stats.updated)
    return t, ld


# ---- load -----------------------------------------------------------------------------------------
def staged_profile_row(profile_id: str, ref: int, body: bytes) -> ProfileRow:
    """A staged profile body as a ``ProfileRow``: ``{"ops": [...]}``, or from the columnar mapping
    ``{"new": <document>, "ops": [...]}`` (its operations are parsed only if the merge needs them)."""
    from cdp_ingest.fastmap import split_profile_body

    new, ops = split_profile_body(body)
    if new is None:
        return ProfileRow(profile_id, ref, [tuple(op) for op in orjson.loads(body)["ops"]])
    return ProfileRow(profile_id, ref, None, new=new, ops_json=ops)


def read_stage(staged_path: str | Path, batch_rows: int = STAGE_ROWS,
               columns: list[str] | None = None) -> Iterator[dict[str, list]]:
    """The staged rows as column dicts of at most ``batch_rows`` rows, one row group at a time.

    Row group by row group on purpose: ``ParquetFile.iter_batches`` buffers ahead, and its Arrow
    memory grew with the file (45 → 89 MB over 850k staged SFTP rows, peak RSS 343 → 431 MB);
    reading one row group (bounded by the transform's flush size) and slicing it stays flat.
    """
    for batch in read_stage_batches(staged_path, batch_rows, columns):
        yield batch.to_pydict()


def read_stage_batches(staged_path: str | Path, batch_rows: int = STAGE_ROWS,
                       columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """``read_stage``'s batches as Arrow record batches."""
    pf = pq.ParquetFile(staged_path, pre_buffer=False)
    for i in range(pf.num_row_groups):
        group = pf.read_row_group(i, columns=columns, use_threads=False)
        yield from group.to_batches(max_chunksize=batch_rows)
        del group


class StagedOrigs:
    """The source rows (``orig``) of a staged file by row number, for the rows the store refuses: the
    load reads the file without them (their column was ~1 µs of a load's CPU per row, and kept in
    memory while the row was in flight), and a refused row's row group is read when it is asked for
    (the last two are kept, refusals come in runs)."""

    def __init__(self, staged_path: str | Path):
        self.path = staged_path
        self._groups: list[tuple[Any, Any, int]] | None = None  # (min ref, max ref, row group)
        self._cache: dict[int, dict[int, bytes]] = {}

    def _ranges(self) -> list[tuple[Any, Any, int]]:
        if self._groups is None:
            md = pq.ParquetFile(self.path).metadata
            at = STAGE_SCHEMA.names.index("ref")
            self._groups = []
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(at).statistics
                has = st is not None and st.has_min_max
                self._groups.append((st.min if has else None, st.max if has else None, g))
        return self._groups

    def get(self, ref: int) -> bytes | None:
        for lo, hi, g in self._ranges():
            if lo is not None and not lo <= ref <= hi:
                continue
            rows = self._cache.get(g)
            if rows is None:
                t = pq.ParquetFile(self.path, pre_buffer=False).read_row_group(g, columns=["ref", "orig"])
                rows = dict(zip(t.column("ref").to_pylist(), t.column("orig").to_pylist(), strict=True))
                if len(self._cache) >= 2:
                    del self._cache[next(iter(self._cache))]
                self._cache[g] = rows
            if ref in rows:
                return rows[ref]
        return None


def staged_kinds(staged_path: str | Path) -> set[str]:
    """The kinds present in a staged file (only its ``kind`` column is read, a row group at a time)."""
    kinds: set[str] = set()
    for batch in read_stage(staged_path, columns=["kind"]):
        kinds.update(batch["kind"])
    return kinds


@relaxed_gc()
def load_unit(staged_path: str | Path, store: Store, *, import_id: str, error_path: str | Path,
              columns: list[str], now: datetime | None = None, write_mode: str | None = None) -> LoadResult:
    """Stream the staged file into the store. Profile operations are merged in file order first
    (SPEC §1: profiles, then sessions, then events), then the other kinds are bulk-written in the
    staged file's write mode (``create`` unless the transform recorded another; ``write_mode`` overrides)."""
    now = now or datetime.now(UTC)
    if write_mode is None:
        meta = pq.read_schema(staged_path).metadata or {}
        write_mode = meta.get(WRITE_MODE_KEY, b"create").decode()
    stats = LoadStats()
    errors = ErrorFileWriter(error_path, columns)
    if Path(error_path).exists():
        Path(error_path).unlink()
    origs = StagedOrigs(staged_path)  # a refused row's source row, read only when one is refused

    def handle(outcomes: Iterable[Outcome]) -> None:
        for o in outcomes:
            if o.status == "failed":
                orig = origs.get(o.ref)
                errors.write(orjson.loads(orig) if orig else {}, o.reason or "store rejected the row")

    def profiles() -> Iterator[ProfileRow]:
        for b in read_stage(staged_path, columns=["ref", "kind", "id", "body"]):
            for ref, kind, pid, body in zip(b["ref"], b["kind"], b["id"], b["body"], strict=True):
                if kind == "profile":
                    yield staged_profile_row(pid, ref, body)

    def documents(kind: str) -> Iterator[BulkItem | ItemBatch]:
        for b in read_stage_batches(staged_path, columns=["ref", "kind", "index", "id", "body"]):
            if kind == "event":  # as Arrow columns (the store takes them row by row where it must)
                mine = pc.equal(b.column(1), kind)
                if not pc.all(mine).as_py():
                    b = b.filter(mine)
                if b.num_rows:
                    yield ItemBatch(b.column(0), b.column(2), b.column(3), b.column(4))
                continue
            for ref, k, index, doc_id, body in zip(*(b.column(i).to_pylist() for i in range(5)), strict=True):
                if k == kind:
                    yield BulkItem(index, doc_id, body, ref)

    kinds = staged_kinds(staged_path)
    if "profile" in kinds:
        handle(store.merge_profiles(profiles(), import_id, now, stats=stats))
    for kind in ("session", "event"):
        if kind in kinds:
            handle(store.bulk_load(documents(kind), import_id=import_id, stats=stats, write_mode=write_mode))
    error_file = errors.close()
    store.refresh(stats.indices)
    return LoadResult(stats.loaded, stats.duplicates, stats.failed, str(error_file) if error_file else None,
                      sorted(stats.indices), stats.requests, stats.retries, stats.updated)


# ---- commit -----------------------------------------------------------------------------------------
def merge_error_files(final_path: str | Path, *parts: str | None) -> str | None:
    """Concatenate the transform and load error CSVs into ``final_path``. Parts whose headers differ (JSON
    lines need not share their keys) are joined under one header by column name."""
    parts_present = [Path(p) for p in parts if p and Path(p).exists()]
    if not parts_present:
        return None
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_path.with_suffix(".partial")
    headers = [_first_line(p) for p in parts_present]
    if any(h != headers[0] for h in headers):
        _merge_by_name(tmp, parts_present)
        os.replace(tmp, final_path)
        return str(final_path)
    with open(tmp, "wb") as out:
        for i, p in enumerate(parts_present):
            with open(p, "rb") as fh:
                if i > 0:
                    fh.readline()  # header already written
                shutil.copyfileobj(fh, out)
    os.replace(tmp, final_path)
    return str(final_path)


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.readline()


def _merge_by_name(out_path: Path, parts: list[Path]) -> None:
    """The parts' rows under one header by column name: the writer grows its header part by part."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with ErrorFileWriter(out_path, []) as out:  # (cells are neutralised already: neutralise() keeps them)
        for p in parts:
            with open(p, newline="", encoding="utf-8") as src:
                for row in csv.DictReader(src):
                    reason = row.pop(FAILURE_COLUMN, None) or ""
                    out.write(row, reason)


def commit_unit(ledger: Ledger, entry: LedgerEntry, t: TransformResult, ld: LoadResult, *,
                error_file: str | None) -> Accounting:
    acc = Accounting(rows_in=t.rows_in, loaded=ld.loaded, rejected=t.rejected + ld.failed, duplicates=ld.duplicates,
                     updated=ld.updated)
    ledger.commit(entry, acc, error_file=error_file)
    return acc


# ---- all in one -----------------------------------------------------------------------------------
def import_unit(source_path: str, open_batches: Callable[[], Iterable], row_fn_factory: Callable[[str], RowFn], *,
                store: Store, ledger: Ledger, work_dir: str | Path, kind: str, source: str,
                account: str | None = None, force: bool = False, opener=open, stage: bool = True,
                write_mode: str = "create") -> ImportReport:
    """Import one source unit in this process: begin, transform, load, commit.

    ``stage=False`` maps and loads in one overlapped pass (``stream_unit``) instead of going
    through the staged Parquet file the Airflow tasks hand to each other. Cells over
    ``store.max_cell_bytes`` reject their rows."""
    import time

    t0 = time.monotonic()
    entry = begin_unit(ledger, source_path, opener, kind=kind, source=source, account=account, force=force)
    if entry.committed:
        return ImportReport(entry.unit_id, entry.import_id, source_path, "skipped", 0, 0, 0, 0, entry.error_file,
                            time.monotonic() - t0)
    work = Path(work_dir) / entry.import_id
    try:
        if stage:
            staged = work / "staged.parquet"
            t = transform_unit(open_batches(), row_fn_factory(entry.import_id), prefix=store.prefix,
                               import_id=entry.import_id, staged_path=staged, error_path=work / "transform-errors.csv",
                               max_cell_bytes=store.max_cell_bytes, write_mode=write_mode)
            ld = load_unit(staged, store, import_id=entry.import_id, error_path=work / "load-errors.csv",
                           columns=t.columns)
            error_file = merge_error_files(work / "errors.csv", t.error_file, ld.error_file)
            staged.unlink(missing_ok=True)
        else:
            t, ld = stream_unit(open_batches(), row_fn_factory(entry.import_id), store, kind=kind,
                                import_id=entry.import_id, error_path=work / "errors.csv",
                                max_cell_bytes=store.max_cell_bytes, write_mode=write_mode)
            error_file = t.error_file
        acc = commit_unit(ledger, entry, t, ld, error_file=error_file)
    except Exception as e:
        ledger.fail(entry, f"{e.__class__.__name__}: {e}")
        raise
    return ImportReport(entry.unit_id, entry.import_id, source_path, "committed", acc.rows_in, acc.loaded,
                        acc.rejected, acc.duplicates, error_file, time.monotonic() - t0, acc.updated)
