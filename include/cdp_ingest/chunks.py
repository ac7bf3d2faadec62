"""Split a big CSV file into row-aligned byte ranges ("chunks") that separate tasks stage and load.

``plan_csv`` reads the file once: it fingerprints it (the ledger's ``SourceUnit``) and, in the same
pass, finds record boundaries with a vectorised quote-parity scan (numpy over each block: the quotes,
line feeds and carriage returns of the block, never a row-by-row parse). A newline between quotes is
inside a value and never ends a chunk; ``""`` inside a quoted value toggles the parity twice. Each
chunk is ``(start, end, first_row)``: the bytes ``[start, end)`` hold whole records, and its first
record is data row ``first_row`` of the file (1-based, header and blank lines not counted: the
numbering of ``readers.read_batches``). So the row numbers every chunk reports — the ids derived from
them, the error CSVs, ``metadata.aux.cdp.row`` — are the ones an unchunked import gives.

Quote parity equals the reader's lexer (pyarrow's, see ``readers._record_run``) only when every quote
is where RFC 4180 puts it: opening a field, closing one, or doubled inside one. A quote anywhere else
(``5" screen``) is a literal to the reader but flips the parity, so a file with one is not split (one
chunk, read exactly as before). Gzipped files are not split either (no random access).

``chunk_batches`` reads one chunk: the header bytes of the file followed by the chunk's bytes, through
``readers.read_batches`` itself (same parsing, same bad-row handling), with the row numbers shifted to
the chunk's ``first_row``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdp_ingest.errors import FileLevelError
from cdp_ingest.ledger import SourceUnit
from cdp_ingest.readers import GZIP_MAGIC, MAX_HEADER_BYTES, SourceBatch, read_batches

log = logging.getLogger(__name__)

MB = 1 << 20
# Default chunk size: files up to this size are one chunk (every bundled sample and the demo's files).
DEFAULT_CHUNK_MB = 256
CHUNK_MB_ENV = "CDP_CSV_CHUNK_MB"
SCAN_BLOCK = 16 * MB
QUOTE, LF, CR = 0x22, 0x0A, 0x0D
_BLANK_HEADER = b"\xef\xbb\xbf \t"


def chunk_bytes_from(config_mb: float | str | None = None) -> int:
    """Bytes per chunk: ``CDP_CSV_CHUNK_MB`` (environment, wins), else the import's ``chunk_mb``, else
    ``DEFAULT_CHUNK_MB``. Fractions are allowed (``0.01`` = ~10 KB, for tests)."""
    raw = os.environ.get(CHUNK_MB_ENV) or config_mb
    mb = float(raw) if raw not in (None, "") else float(DEFAULT_CHUNK_MB)
    if mb <= 0:
        raise ValueError(f"chunk size must be > 0 MB, not {raw!r}")
    return max(1, int(mb * MB))


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # byte offset; chunk 0 starts at 0 and so holds the header too
    end: int  # exclusive
    first_row: int  # data row number of the chunk's first record (1-based)
    rows: int  # records in the chunk (blank lines not counted)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class FilePlan:
    unit: SourceUnit
    header_end: int  # bytes [0, header_end) are the header record with its newline (and leading blank lines)
    chunks: list[Chunk]
    rows: int  # data records in the file (as the reader counts them)
    note: str | None = None  # why the file is one chunk although it is bigger than the chunk size
    extra: dict[str, Any] = field(default_factory=dict)


class _Scanner:
    """The quote-parity state machine, fed block by block (with one byte of the next block seen)."""

    def __init__(self, size: int, chunk_bytes: int, delimiter: int):
        self.size, self.chunk_bytes, self.delim = size, chunk_bytes, delimiter
        self.offset = 0  # file offset of the current block
        self.in_quotes = False
        self.prev = -1  # last byte of the previous block (-1 at the start of the file)
        self.rec_start = 0  # where the current record starts
        self.header_end: int | None = None
        self.rows = 0  # non-empty records after the header so far
        self.chunk_start, self.chunk_rows_at = 0, 0  # current chunk: start byte, rows before it
        self.chunks: list[Chunk] = []
        self.irregular: str | None = None

    def feed(self, block: bytes, next_byte: int) -> None:
        """``next_byte``: the first byte after ``block`` (-1 at the end of the file)."""
        a = np.frombuffer(block, dtype=np.uint8)
        n = len(a)
        q = np.flatnonzero(a == QUOTE) if b'"' in block else np.empty(0, dtype=np.intp)
        if len(q):
            self._check_quotes(a, q, next_byte)
            if self.irregular:
                return
        # Line ends outside quotes: "\n", or "\r" not followed by "\n" ("\r\n" ends at its "\n").
        nl = np.flatnonzero((a == LF) | (a == CR)) if b"\r" in block else np.flatnonzero(a == LF)
        if len(nl) and b"\r" in block:
            after = np.empty(len(nl), dtype=np.int16)
            inner = nl + 1 < n
            after[inner] = a[nl[inner] + 1]
            after[~inner] = next_byte
            is_cr = a[nl] == CR
            nl = nl[~(is_cr & (after == LF))]
        if len(nl) and len(q):
            before = np.searchsorted(q, nl)  # quotes of this block before each line end
            nl = nl[((before & 1) == 1) == self.in_quotes]
        elif self.in_quotes:  # the whole block is inside one quoted value
            nl = nl[:0]
        if len(q) & 1:
            self.in_quotes = not self.in_quotes
        if len(nl):
            self._records(a, nl)
        self.prev = int(a[-1]) if n else self.prev
        self.offset += n

    def _check_quotes(self, a: np.ndarray, q: np.ndarray, next_byte: int) -> None:
        """RFC 4180 placement: an opening quote follows a delimiter, a line end, the start or a closing
        quote (a doubled quote); a closing quote is followed by a delimiter, a line end, the end or a quote."""
        n = len(a)
        opening = (np.arange(len(q)) & 1) == (1 if self.in_quotes else 0)
        prev = np.empty(len(q), dtype=np.int16)
        has_prev = q > 0
        prev[has_prev] = a[q[has_prev] - 1]
        prev[~has_prev] = self.prev
        nxt = np.empty(len(q), dtype=np.int16)
        has_next = q + 1 < n
        nxt[has_next] = a[q[has_next] + 1]
        nxt[~has_next] = next_byte
        ok_before = (prev == self.delim) | (prev == LF) | (prev == CR) | (prev == QUOTE) | (prev == -1)
        ok_after = (nxt == self.delim) | (nxt == LF) | (nxt == CR) | (nxt == QUOTE) | (nxt == -1)
        bad = (opening & ~ok_before) | (~opening & ~ok_after)
        if bad.any():
            at = self.offset + int(q[np.argmax(bad)])
            self.irregular = f"a quote at byte {at} is not where RFC 4180 puts one (read as one chunk)"

    def _records(self, a: np.ndarray, nl: np.ndarray) -> None:
        ends = nl.astype(np.int64) + self.offset + 1  # exclusive end of each record's line end
        crlf = np.zeros(len(nl), dtype=bool)
        inner = nl > 0
        crlf[inner] = (a[nl[inner] - 1] == CR) & (a[nl[inner]] == LF)
        if not inner.all():
            crlf[~inner] = (self.prev == CR) & (a[0] == LF)
        starts_of_end = ends - 1 - crlf.astype(np.int64)  # where each line end begins
        rec_starts = np.empty(len(ends), dtype=np.int64)
        rec_starts[0] = self.rec_start
        rec_starts[1:] = ends[:-1]
        last_end = int(ends[-1])
        i0 = 0
        if self.header_end is None:
            i0 = self._header(a, rec_starts, starts_of_end, ends)
            if self.header_end is None:
                self.rec_start = last_end
                return
        nonempty = starts_of_end[i0:] > rec_starts[i0:]
        cum = self.rows + np.cumsum(nonempty)
        ends = ends[i0:]
        while True:
            target = self.chunk_start + self.chunk_bytes
            i = max(int(np.searchsorted(ends, target)), int(np.searchsorted(cum, self.chunk_rows_at + 1)))
            if i >= len(ends) or ends[i] >= self.size:
                break
            end, rows = int(ends[i]), int(cum[i])
            self.chunks.append(Chunk(len(self.chunks), self.chunk_start, end, self.chunk_rows_at + 1,
                                     rows - self.chunk_rows_at))
            self.chunk_start, self.chunk_rows_at = end, rows
        if len(cum):
            self.rows = int(cum[-1])
        self.rec_start = last_end

    def _header(self, a: np.ndarray, rec_starts: np.ndarray, starts_of_end: np.ndarray, ends: np.ndarray) -> int:
        """The header is the first record that is not blank (BOM, spaces, tabs), as ``readers`` reads it."""
        for i in range(len(ends)):
            s, e = int(rec_starts[i]) - self.offset, int(starts_of_end[i]) - self.offset
            line = bytes(a[max(s, 0):max(e, 0)]) if s >= 0 else None
            if line is None or line.strip(_BLANK_HEADER):  # a header begun in an earlier block is not blank
                self.header_end = int(ends[i])
                return i + 1
        return len(ends)

    def finish(self) -> tuple[list[Chunk], int, int]:
        if self.header_end is None:  # a file that is only a header (or empty): one chunk, as before
            return [Chunk(0, 0, self.size, 1, 0)], self.size, 0
        rows = self.rows + (1 if self.size > self.rec_start else 0)  # the last record needs no line end
        self.chunks.append(Chunk(len(self.chunks), self.chunk_start, self.size, self.chunk_rows_at + 1,
                                 rows - self.chunk_rows_at))
        if len(self.chunks) > 1 and self.chunks[-1].rows == 0:  # trailing blank lines: no chunk of their own
            last, prev = self.chunks.pop(), self.chunks.pop()
            self.chunks.append(Chunk(prev.index, prev.start, last.end, prev.first_row, prev.rows))
        return self.chunks, self.header_end, rows


def plan_csv(path: str | os.PathLike, chunk_bytes: int, *, delimiter: str = ",",
             block_size: int = SCAN_BLOCK) -> FilePlan:
    """Fingerprint a local CSV file and cut it into chunks of about ``chunk_bytes`` (each ends at the first
    record boundary at or after that size and holds at least one record). One pass over the file."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    path = str(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError as e:
        raise FileLevelError("no_data_file", f"data file not found: {path}") from e
    digest = hashlib.sha256()
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(block_size)
        gz = path.lower().endswith(".gz") or head[:2] == GZIP_MAGIC
        scanner = None if gz or size <= chunk_bytes else _Scanner(size, chunk_bytes, ord(delimiter))
        block, read = head, len(head)
        while block:
            digest.update(block)
            nxt = fh.read(block_size)
            read += len(nxt)
            if scanner is not None and not scanner.irregular:
                scanner.feed(block, nxt[0] if nxt else -1)
                if scanner.header_end is None and scanner.offset > MAX_HEADER_BYTES:
                    scanner.irregular = "no header record in the first MB (read as one chunk)"
            block = nxt
    unit = SourceUnit(path, read, "sha256:" + digest.hexdigest())
    if scanner is None or scanner.irregular:
        note = "gzipped" if gz else scanner.irregular if scanner else None
        return FilePlan(unit, 0, [Chunk(0, 0, read, 1, -1)], -1, note)
    chunks, header_end, rows = scanner.finish()
    log.info("planned %s: %s bytes, %s rows, %s chunk(s)", Path(path).name, read, rows, len(chunks))
    return FilePlan(unit, header_end, chunks, rows)


class _ChunkStream(io.RawIOBase):
    """The header bytes ``[0, header_end)`` and then ``[start, end)`` of a file, as one stream."""

    def __init__(self, path: str, header_end: int, start: int, end: int):
        super().__init__()
        self._fh = open(path, "rb")
        self._ranges = [(0, header_end), (start, end)] if start > 0 else [(0, end)]
        self._pos: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._ranges:
            begin, end = self._ranges[0]
            if self._pos is None:
                self._fh.seek(begin)
                self._pos = begin
            want = min(len(view), end - self._pos)
            if want <= 0:
                self._ranges.pop(0)
                self._pos = None
                continue
            n = self._fh.readinto(view[:want])
            if not n:
                raise FileLevelError("unreadable", "the file ended before the planned chunk did (changed since?)")
            self._pos += n
            return n
        return 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def chunk_batches(path: str | os.PathLike, chunk: Chunk | dict[str, Any], *, header_end: int,
                  size: int | None = None, **kwargs: Any) -> Iterator[SourceBatch]:
    """``read_batches`` over one chunk of a planned CSV file, row numbers as in the whole file.
    A chunk that is the whole file is read from the path as it always was."""
    c = chunk if isinstance(chunk, Chunk) else Chunk(**chunk)
    path = str(path)
    size = os.path.getsize(path) if size is None else size
    if c.start == 0 and c.end >= size:
        yield from read_batches(path, **kwargs)
        return
    shift = c.first_row - 1
    stream = io.BufferedReader(_ChunkStream(path, header_end, c.start, c.end), buffer_size=1 << 20)
    with stream:
        for sb in read_batches(stream, "csv", **kwargs):
            if sb.bad_rows:  # "row 3: expected 5 fields, found 7" names the row in the file, not in the chunk
                sb.bad_rows = {i: _renumber(d, sb.first_row + i, shift) for i, d in sb.bad_rows.items()}
            sb.first_row += shift
            yield sb


def _renumber(description: str, local_row: int, shift: int) -> str:
    prefix = f"row {local_row}:"
    return f"row {local_row + shift}:{description[len(prefix):]}" if description.startswith(prefix) else description


# ---- the import steps, per chunk ------------------------------------------------------------------
def transform_chunk(path: str | os.PathLike, chunk: Chunk | dict[str, Any], row_fn: Any, *, header_end: int,
                    size: int | None, prefix: str, import_id: str, work_dir: str | Path,
                    max_cell_bytes: int | None, write_mode: str = "create") -> Any:
    """``pipeline.transform_unit`` over one chunk: ``staged-<k>.parquet`` and ``transform-errors-<k>.csv``
    in ``work_dir`` (one import's chunks share the folder). Returns the ``TransformResult``."""
    from cdp_ingest.pipeline import transform_unit

    c = chunk if isinstance(chunk, Chunk) else Chunk(**chunk)
    work = Path(work_dir)
    return transform_unit(chunk_batches(path, c, header_end=header_end, size=size), row_fn, prefix=prefix,
                          import_id=import_id, staged_path=work / f"staged-{c.index}.parquet",
                          error_path=work / f"transform-errors-{c.index}.csv", max_cell_bytes=max_cell_bytes,
                          write_mode=write_mode)


@dataclass
class ChunkOutcome:
    """What one chunk of a file contributed: its transform counts and its load counts and error files."""

    index: int
    rows_in: int
    rejected: int
    loaded: int = 0
    duplicates: int = 0
    failed: int = 0
    updated: int = 0
    transform_errors: str | None = None
    load_errors: str | None = None


def file_accounting(outcomes: list[ChunkOutcome], n_chunks: int) -> Any:
    """The file's accounting, summed over its chunks: each chunk exactly once, all of them present."""
    from cdp_ingest.ledger import Accounting

    got = sorted(o.index for o in outcomes)
    if got != list(range(n_chunks)):
        missing = sorted(set(range(n_chunks)) - set(got))
        twice = sorted({i for i in got if got.count(i) > 1})
        raise ValueError(f"chunks not loaded: {missing or 'none'}; reported more than once: {twice or 'none'}")
    acc = Accounting()
    for o in outcomes:
        acc = acc + Accounting(o.rows_in, o.loaded, o.rejected + o.failed, o.duplicates, o.updated)
    return acc


def merge_chunk_errors(final_path: str | Path, outcomes: list[ChunkOutcome]) -> str | None:
    """The file's one error CSV: every chunk's transform errors in chunk (= row) order, then every chunk's
    load errors in chunk order — the order of an unchunked import's (transform errors, then load errors)."""
    from cdp_ingest.pipeline import merge_error_files

    ordered = sorted(outcomes, key=lambda o: o.index)
    return merge_error_files(final_path, *[o.transform_errors for o in ordered], *[o.load_errors for o in ordered])


def coarsen(chunks: list[Chunk], at_most: int) -> list[Chunk]:
    """The same file in at most ``at_most`` chunks: runs of consecutive chunks joined (their boundaries
    are record boundaries already, so no second pass over the file)."""
    if at_most < 1:
        raise ValueError("at_most must be >= 1")
    if len(chunks) <= at_most:
        return chunks
    per = -(-len(chunks) // at_most)
    out: list[Chunk] = []
    for i in range(0, len(chunks), per):
        run = chunks[i:i + per]
        rows = -1 if any(c.rows < 0 for c in run) else sum(c.rows for c in run)
        out.append(Chunk(len(out), run[0].start, run[-1].end, run[0].first_row, rows))
    return out


def fit_map_length(counts: list[int], limit: int) -> list[int]:
    """Chunks per file so that all files together are at most ``limit`` mapped tasks (Airflow's
    ``max_map_length``): one cap for every file, the largest that fits; every file keeps one."""
    if len(counts) > limit:
        raise ValueError(f"{len(counts)} files are more than the {limit} mapped tasks a run may have")
    if sum(counts) <= limit:
        return list(counts)
    lo, hi = 1, max(counts)  # the largest per-file cap that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in counts) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return [min(n, lo) for n in counts]
