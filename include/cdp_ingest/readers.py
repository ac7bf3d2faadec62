"""Streaming readers for CSV, Parquet and JSON-lines sources, with bounded memory (SPEC §2-§5, §7).

Every reader yields fixed-size pieces of the file and holds at most one block (``block_size`` bytes of
CSV, one Parquet row group, ``chunk_rows`` JSON lines) plus one output batch in memory, so memory does
not grow with the file size.

Sources are local paths, fsspec URLs (``s3://``, ``gs://``, ``sftp://``, ``file://``, ``http(s)://``),
UPath-like objects (Airflow's ``ObjectStoragePath``) or already-open binary file objects, which are never
closed here. Gzip is undone transparently (by ``.gz`` suffix or by the gzip magic bytes).

CSV row accounting (the ``rows_in = loaded + rejected + duplicates`` invariant relies on it): every
data row of the file is yielded exactly once, in file order, and row ``i`` of a ``SourceBatch`` is data
row ``first_row + i`` (1-based, header not counted, blank lines not counted). Rows that cannot be parsed
into the header's number of fields are skipped by pyarrow's parser; we put them back *in place*, in the
same batch, with their fields fitted to the header (missing ones ``""``, surplus ones joined into the last
column with the delimiter so no data is lost) and a ``bad_rows`` entry such as
``"row 12: expected 5 fields, found 7"``. So ``sum(b.batch.num_rows)`` always equals the data rows.

Encoding errors are per row: the byte stream is decoded incrementally with an error handler that turns
each undecodable byte into the noncharacter U+FDD0 (Unicode reserves it for internal use), so pyarrow
always sees valid UTF-8. Batches are only scanned for that marker (vectorised ``match_substring``) once
the decoder has produced one; marked cells become U+FFFD and the row gets ``"column 'x': invalid UTF-8"``.
(Reading binary columns and casting was not enough: pyarrow's invalid-row handler fails on rows that are
not valid UTF-8.) A genuine U+FDD0 in the input is therefore also reported as invalid.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import os
import re
import shutil
import tempfile
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, NamedTuple, cast

import orjson
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cdp_ingest.arrow import pa
from cdp_ingest.errors import FileLevelError

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
EMPTY_FILE_MESSAGE = "file is empty: a header row is mandatory"
MAX_HEADER_BYTES = 1 << 20
# A CSV record (row) may span blocks up to this size; longer is almost always an unterminated quote.
MAX_CSV_ROW_BYTES = 64 << 20
MAX_JSON_LINE_BYTES = 16 << 20
# Bytes of an over-long JSON line kept for the error file.
OVERLONG_LINE_KEEP = 1024
READ_CHUNK = 1 << 20
# Gzip bombs: a few KB that inflate to gigabytes. More than this many decompressed bytes, or (past the
# first GZIP_RATIO_AFTER bytes) more than GZIP_MAX_RATIO times the compressed bytes read, fail the file
# as ``too_large``. Real CSV/Parquet exports compress 3..30:1; deflate's maximum is ~1032:1.
MAX_DECOMPRESSED_BYTES = 16 << 30
GZIP_MAX_RATIO = 250
GZIP_RATIO_AFTER = 16 << 20

_MARK = "\ufdd0"
_MARK_UTF8 = _MARK.encode()
_REPLACEMENT = "\ufffd"
_MARK_ERRORS = "cdp_ingest.mark"

_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".json": "jsonl",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return _MARK * (exc.end - exc.start), exc.end


codecs.register_error(_MARK_ERRORS, _mark_undecodable)


@dataclass
class SourceBatch:
    """A slice of a CSV or Parquet file.

    CSV: every column is ``pa.string()`` (an empty cell is ``""``, never null); Parquet: types as stored.
    Rows listed in ``bad_rows`` are still in ``batch`` (undecodable bytes shown as U+FFFD, fields fitted
    to the header) so an error file can show them.
    """

    batch: pa.RecordBatch
    first_row: int
    bad_rows: dict[int, str] = field(default_factory=dict)


@dataclass
class JsonChunk:
    """Consecutive lines of a JSON-lines file: ``records[i]`` is line ``first_row + i`` (1-based).

    Blank lines are not records; a chunk ends before one, so the numbering above always holds.
    """

    first_row: int
    records: list[dict | None]
    raw: list[str]
    bad_rows: dict[int, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- opening sources


def detect_format(name: str) -> str:
    """``"csv"`` | ``"parquet"`` | ``"jsonl"`` from the file name's suffixes (a trailing ``.gz`` ignored)."""
    base = str(name)
    if "://" in base:
        base = base.split("?", 1)[0].split("#", 1)[0]
    base = base.rstrip("/").rsplit("/", 1)[-1].lower()
    if base.endswith(".gz"):
        base = base[: -len(".gz")]
    _, dot, ext = base.rpartition(".")
    fmt = _FORMATS.get(f".{ext}") if dot else None
    if fmt is None:
        raise FileLevelError(
            "unreadable",
            f"unsupported file type: {name!s} (expected .csv, .parquet, .json, .jsonl or .ndjson, "
            "optionally .gz)",
        )
    return fmt


def _source_name(source: Any) -> str:
    if isinstance(source, str | os.PathLike) or _is_upath_like(source):
        return str(source)
    for attr in ("name", "path", "full_name"):
        value = getattr(source, attr, None)
        if isinstance(value, str):
            return value
    return ""


def _is_upath_like(source: Any) -> bool:
    return (
        not isinstance(source, str | bytes)
        and not hasattr(source, "read")
        and hasattr(source, "open")
        and hasattr(source, "protocol")
    )


class _StreamAdapter(io.RawIOBase):
    """Raw view of a stream we may not own: optional pushed-back prefix; ``close`` leaves it open."""

    def __init__(self, stream: Any, prefix: bytes = b""):
        super().__init__()
        self._stream = stream
        self._prefix = prefix

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return not self._prefix and bool(getattr(self._stream, "seekable", lambda: False)())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self.seekable():
            raise io.UnsupportedOperation("seek")
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        if not self.seekable():
            raise io.UnsupportedOperation("tell")
        return self._stream.tell()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self._prefix:
            n = min(want, len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(want)
        if not data:
            return 0
        n = len(data)
        view[:n] = data
        return n


@contextmanager
def open_source(source: Any, *, storage_options: dict | None = None,
                max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES) -> Iterator[BinaryIO]:
    """Open ``source`` for binary reading, gunzipping it when needed (within ``max_decompressed_bytes``
    and ``GZIP_MAX_RATIO``).

    Files opened here are closed on exit; a file object passed in is left open.
    """
    name = _source_name(source)
    with ExitStack() as stack:
        try:
            if hasattr(source, "read"):
                raw: Any = source
            elif _is_upath_like(source):
                raw = stack.enter_context(source.open("rb"))
            elif isinstance(source, str | os.PathLike):
                path = os.fspath(source)
                if "://" in path:
                    import fsspec

                    raw = stack.enter_context(fsspec.open(path, mode="rb", **(storage_options or {})))
                else:
                    raw = stack.enter_context(open(path, "rb"))
            else:
                raise TypeError(f"unsupported source type: {type(source).__name__}")
            stream = _with_gunzip(raw, name, stack, max_decompressed_bytes)
        except FileNotFoundError as e:
            raise FileLevelError("no_data_file", f"data file not found: {name}") from e
        except (OSError, EOFError) as e:
            raise FileLevelError("unreadable", f"cannot open {name or 'source'}: {e}") from e
        logger.debug("opened source %s", name)
        yield stream


def _seekable_stream(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class _Counting:
    """A read-only view of a stream that counts the bytes read through it."""

    def __init__(self, raw: Any):
        self._raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data


class _BoundedGunzip(io.RawIOBase):
    """Gunzips ``raw``, failing the file as ``too_large`` when it inflates past the limits."""

    def __init__(self, raw: Any, max_bytes: int):
        self._counted = _Counting(raw)
        self._gz = gzip.GzipFile(fileobj=self._counted, mode="rb")  # type: ignore[call-overload]
        self._max = max_bytes
        self.out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._gz.readinto(buffer)
        self.out += n
        if self.out > self._max:
            raise FileLevelError("too_large", f"the gzipped file inflates to more than {self._max:,} bytes")
        if self.out > GZIP_RATIO_AFTER and self.out > GZIP_MAX_RATIO * max(1, self._counted.count):
            raise FileLevelError("too_large", f"the gzipped file inflates more than {GZIP_MAX_RATIO}:1 "
                                              f"({self._counted.count:,} compressed bytes gave {self.out:,} so far): "
                                              "refused as a likely compression bomb")
        return n

    def close(self) -> None:
        self._gz.close()
        super().close()


def _with_gunzip(raw: Any, name: str, stack: ExitStack, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> BinaryIO:
    if name.lower().endswith(".gz"):
        gzipped = True
    elif _seekable_stream(raw):
        start = raw.tell()
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(start)
    else:
        head = raw.read(2)
        gzipped = head == GZIP_MAGIC
        raw = io.BufferedReader(_StreamAdapter(raw, head), buffer_size=READ_CHUNK)
    if gzipped:
        # GzipFile never closes a fileobj it was given.
        bounded = io.BufferedReader(_BoundedGunzip(raw, max_bytes), buffer_size=READ_CHUNK)
        return cast(BinaryIO, stack.enter_context(bounded))
    return cast(BinaryIO, raw)


def _read_error(name: str, exc: BaseException) -> FileLevelError:
    return FileLevelError("unreadable", f"cannot read {name or 'source'}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- CSV


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _encoding_label(encoding: str) -> str:
    return "UTF-8" if _is_utf8(encoding) else encoding


class _Utf8Stream:
    """Decodes a byte stream incrementally and re-encodes it as UTF-8 that is always valid.

    Undecodable bytes become U+FDD0, so pyarrow never fails on them and we can find them per cell.
    """

    def __init__(self, stream: BinaryIO, encoding: str):
        try:
            decoder_cls = codecs.getincrementaldecoder(encoding)
        except LookupError as e:
            raise FileLevelError("unreadable", f"unknown encoding: {encoding}") from e
        self._stream = stream
        self._decoder = decoder_cls(errors=_MARK_ERRORS)
        self._buf = b""
        self._eof = False

    def _fill(self) -> bool:
        while not self._buf and not self._eof:
            data = self._stream.read(READ_CHUNK)
            if not data:
                self._eof = True
                self._buf = self._decoder.decode(b"", final=True).encode("utf-8")
            else:
                self._buf = self._decoder.decode(data).encode("utf-8")
        return bool(self._buf)

    def pushback(self, data: bytes) -> None:
        self._buf = data + self._buf

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the stream)."""
        parts, have = [], 0
        while have < size and self._fill():
            take = self._buf[: size - have]
            self._buf = self._buf[len(take) :]
            parts.append(take)
            have += len(take)
        return b"".join(parts)


_HEADER_END = re.compile(rb'["\r\n]')


def _split_header(stream: _Utf8Stream) -> bytes | None:
    """Consume the header record (quote-aware, leading blank lines skipped); ``None`` if no content."""
    buf = b""
    in_quotes = False
    scan = 0
    while True:
        while True:
            m = _HEADER_END.search(buf, scan)
            if m is None:
                scan = len(buf)
                break
            pos = m.start()
            if buf[pos : pos + 1] == b'"':
                in_quotes = not in_quotes
                scan = pos + 1
                continue
            if in_quotes:
                scan = pos + 1
                continue
            if buf[pos : pos + 1] == b"\r" and pos + 1 == len(buf):
                scan = pos  # a "\n" may follow in the next chunk
                break
            end = pos + 2 if buf[pos : pos + 2] == b"\r\n" else pos + 1
            line, rest = buf[:pos], buf[end:]
            if not line.strip(b"\xef\xbb\xbf \t"):
                buf, scan = rest, 0  # leading blank line (maybe just a BOM)
                continue
            stream.pushback(rest)
            return line
        if len(buf) > MAX_HEADER_BYTES:
            raise FileLevelError("unreadable", f"header row is longer than {MAX_HEADER_BYTES} bytes")
        chunk = stream.read(64 << 10)
        if not chunk:
            if in_quotes:
                raise FileLevelError("unreadable", "header row has an unterminated quote")
            return buf.rstrip(b"\r") if buf.strip(b"\xef\xbb\xbf \t\r\n") else None
        buf += chunk


def _parse_csv_line(text: str, delimiter: str) -> list[str]:
    fields: list[str] = []
    for record in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False):
        fields.extend(record)
    return fields


def _read_header(stream: _Utf8Stream, delimiter: str, encoding: str) -> list[str]:
    line = _split_header(stream)
    if line is None:
        raise FileLevelError("unreadable", EMPTY_FILE_MESSAGE)
    text = line.decode("utf-8")
    if _MARK in text:
        raise FileLevelError("unreadable", f"header row is not valid {_encoding_label(encoding)}")
    names = _parse_csv_line(text.lstrip("\ufeff"), delimiter)
    if not any(n.strip() for n in names):
        raise FileLevelError("unreadable", EMPTY_FILE_MESSAGE)
    empty = [str(i + 1) for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise FileLevelError(
            "unreadable", f"header row has empty column names at position(s) {', '.join(empty)}"
        )
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    if dups:
        raise FileLevelError(
            "unreadable", f"header row has duplicate column names: {', '.join(repr(d) for d in dups)}"
        )
    return names


def read_csv_header(
    source: Any, *, storage_options: dict | None = None, encoding: str = "utf-8", delimiter: str = ","
) -> list[str]:
    """The validated header names of a CSV file (BOM stripped); reads only the first record."""
    _check_delimiter(delimiter)
    with open_source(source, storage_options=storage_options) as raw:
        try:
            return _read_header(_Utf8Stream(raw, encoding), delimiter, encoding)
        except (OSError, EOFError, zlib.error) as e:
            raise _read_error(_source_name(source), e) from e


def _check_delimiter(delimiter: str) -> None:
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"delimiter must be one character other than a quote or newline: {delimiter!r}")


class _InvalidRow(NamedTuple):
    number: int | None
    expected: int
    actual: int
    text: str


_PII_TAIL = re.compile(r"(Expected \d+ columns, got \d+).*", re.S)


def _sanitize(message: str) -> str:
    """pyarrow parse errors end with the row text; keep cell values out of messages and logs."""
    return _PII_TAIL.sub(r"\1", message)[:500]


def _mark_to_bad(
    block: pa.RecordBatch, names: list[str], label: str
) -> tuple[pa.RecordBatch, dict[int, str]]:
    bad: dict[int, list[str]] = {}
    columns = []
    for name, col in zip(names, block.columns, strict=True):
        hits = pc.match_substring(col, _MARK)
        if pc.any(hits).as_py():
            for idx in pc.indices_nonzero(hits).to_pylist():
                bad.setdefault(idx, []).append(f"column '{name}': invalid {label}")
            col = pc.replace_substring(col, _MARK, _REPLACEMENT)
        columns.append(col)
    if not bad:
        return block, {}
    return pa.RecordBatch.from_arrays(columns, schema=block.schema), {i: "; ".join(d) for i, d in bad.items()}


def _render_invalid(
    inv: _InvalidRow,
    row_no: int,
    schema: pa.Schema,
    n_fields: int,
    selected: list[int],
    delimiter: str,
    label: str,
) -> tuple[pa.RecordBatch, dict[int, str]]:
    fields = _parse_csv_line(inv.text, delimiter)
    if len(fields) > n_fields:
        fields = fields[: n_fields - 1] + [delimiter.join(fields[n_fields - 1 :])]
    fields += [""] * (n_fields - len(fields))
    desc = f"row {row_no}: expected {inv.expected} fields, found {inv.actual}"
    if _MARK in inv.text:
        desc += f"; invalid {label}"
        fields = [f.replace(_MARK, _REPLACEMENT) for f in fields]
    arrays = [pa.array([fields[i]], pa.string()) for i in selected]
    return pa.RecordBatch.from_arrays(arrays, schema=schema), {0: desc}


def _rechunk(
    pieces: list[tuple[pa.RecordBatch, dict[int, str]]], first_row: int, batch_rows: int
) -> Iterator[SourceBatch]:
    """Join contiguous pieces (copying only when there is more than one) and cut to ``batch_rows``."""
    pieces = [p for p in pieces if p[0].num_rows]
    if not pieces:
        return
    if len(pieces) == 1:
        whole, bad = pieces[0]
    else:
        whole = pa.concat_batches([p[0] for p in pieces])
        bad, offset = {}, 0
        for batch, piece_bad in pieces:
            bad.update({offset + i: d for i, d in piece_bad.items()})
            offset += batch.num_rows
    for start in range(0, whole.num_rows, batch_rows):
        part = whole.slice(start, batch_rows)
        end = start + part.num_rows
        part_bad = {i - start: d for i, d in bad.items() if start <= i < end} if bad else {}
        yield SourceBatch(batch=part, first_row=first_row + start, bad_rows=part_bad)


def _record_run(delimiter: str) -> re.Pattern[bytes]:
    """Regex matching a run of complete CSV records, lexed the way pyarrow's parser does.

    A field that starts with a quote runs to the next unpaired quote (``""`` is a literal quote) and
    may continue unquoted; any other field runs to the delimiter or newline, quotes included. Every
    repetition is possessive, so matching is linear and the match ends after the last complete record.
    """
    d = re.escape(delimiter)
    field = rf'(?>"[^"]*+(?:""[^"]*+)*+"[^{d}\r\n]*+|[^"{d}\r\n][^{d}\r\n]*+|)'
    return re.compile(rf"(?:{field}(?:{d}{field})*+(?:\r\n|\n|\r))*+".encode())


class _Unterminated(bytes):
    """The last record of a file, whose quoted value never closes: it runs to the end of the file and
    takes in every line after the quote, so it is a bad row even when its field count happens to fit."""


UNTERMINATED_QUOTE = ("unterminated quote: a quoted value runs to the end of the file (the lines after it were "
                      "read into it)")


def _csv_chunks(stream: _Utf8Stream, block_size: int, delimiter: str) -> Iterator[bytes]:
    """Cut the data part of a CSV stream into pieces of whole records, about ``block_size`` bytes each.

    We cut the records ourselves and parse each piece with ``read_csv``, rather than use pyarrow's
    ``open_csv``, because ``open_csv`` reads up to 32 blocks ahead in a background thread (not
    configurable, ARROW-12090): 256 MB with 8 MB blocks, which would break the memory bound.
    """
    run = _record_run(delimiter)
    max_row = max(MAX_CSV_ROW_BYTES, block_size)
    buf = b""
    while True:
        data = stream.read(block_size)
        if not data:
            if buf:
                if b'"' in buf:  # the rest must be whole records (the last newline may be missing)
                    tail = buf if buf.endswith((b"\n", b"\r")) else buf + b"\n"
                    m = run.match(tail)
                    end = m.end() if m else 0
                    if end != len(tail):  # a quote opened in the record at ``end`` never closes
                        if end:
                            yield buf[:end]
                        yield _Unterminated(buf[end:])
                        return
                yield buf
            return
        buf = buf + data if buf else data
        if b'"' not in buf:
            end = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        else:
            m = run.match(buf)
            end = m.end() if m else 0
        if end == 0:
            if len(buf) > max_row:
                raise FileLevelError(
                    "unreadable",
                    f"CSV parse error: a row is longer than {max_row} bytes (often an unterminated quote)",
                )
            continue
        yield buf[:end]
        buf = buf[end:]


def _iter_csv(
    raw: BinaryIO,
    name: str,
    *,
    batch_rows: int,
    block_size: int,
    encoding: str,
    delimiter: str,
    columns: list[str] | None,
) -> Iterator[SourceBatch]:
    label = _encoding_label(encoding)
    stream = _Utf8Stream(raw, encoding)
    try:
        names = _read_header(stream, delimiter, encoding)
    except (OSError, EOFError, zlib.error) as e:
        raise _read_error(name, e) from e
    if columns is None:
        selected = list(range(len(names)))
    else:
        missing = [c for c in columns if c not in names]
        if missing:
            raise FileLevelError(
                "unreadable", f"column(s) not in the header: {', '.join(repr(c) for c in missing)}"
            )
        selected = [names.index(c) for c in columns]
    internal = [f"f{i}" for i in range(len(names))]
    out_names = [names[i] for i in selected]
    schema = pa.schema([(n, pa.string()) for n in out_names])

    invalid: list[_InvalidRow] = []

    def on_invalid(row: Any) -> str:
        invalid.append(_InvalidRow(row.number, row.expected_columns, row.actual_columns, row.text))
        return "skip"

    # use_threads=False keeps rows in order and makes pyarrow number the rows it skips.
    read_options = pa_csv.ReadOptions(column_names=internal, use_threads=False)
    parse_options = pa_csv.ParseOptions(
        delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
    )
    convert_options = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(internal, pa.string()),
        include_columns=[internal[i] for i in selected],
        strings_can_be_null=False,
    )

    def render(inv: _InvalidRow, row_no: int) -> tuple[pa.RecordBatch, dict[int, str]]:
        return _render_invalid(inv, row_no, schema, len(names), selected, delimiter, label)

    next_row = 1
    bad_total = 0
    chunks = _csv_chunks(stream, block_size, delimiter)
    while True:
        try:
            chunk = next(chunks, None)
            if chunk is None:
                break
            invalid.clear()
            unterminated = isinstance(chunk, _Unterminated)
            # One block per chunk: the chunk is already bounded and holds whole records.
            read_options.block_size = len(chunk) + 1
            table = pa_csv.read_csv(
                pa.BufferReader(chunk),
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
        except pa.ArrowInvalid as e:
            raise FileLevelError("unreadable", f"CSV parse error: {_sanitize(str(e))}") from e
        except (OSError, EOFError, zlib.error) as e:
            raise _read_error(name, e) from e
        marked = _MARK_UTF8 in chunk
        del chunk
        block: pa.RecordBatch | None = None
        pieces: list[tuple[pa.RecordBatch, dict[int, str]]] = []
        block_bad: dict[int, str] = {}
        n_valid = table.num_rows
        if n_valid:
            block = pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], schema=schema)
            if marked:
                block, block_bad = _mark_to_bad(block, out_names, label)
            if unterminated:  # one record, which parsed with the right field count by chance
                block_bad = {**block_bad, 0: UNTERMINATED_QUOTE}
        del table
        # Rows pyarrow skipped (wrong field count) go back in place: chunk row k is data row
        # next_row + k - 1, whether it parsed or not.
        pending = deque(sorted(invalid, key=lambda r: r.number if r.number is not None else 1 << 62))
        chunk_row = 1
        pos = 0
        while pos < n_valid or pending:
            if pending and (pending[0].number is None or pending[0].number <= chunk_row or pos >= n_valid):
                inv = pending.popleft()
                if inv.number is not None and inv.number != chunk_row:
                    logger.warning("CSV %s: skipped row numbering is off by %s", name, inv.number - chunk_row)
                pieces.append(render(inv, next_row + chunk_row - 1))
                chunk_row += 1
                continue
            assert block is not None
            take = n_valid - pos
            if pending and pending[0].number is not None:
                take = min(take, pending[0].number - chunk_row)
            piece_bad = {i - pos: d for i, d in block_bad.items() if pos <= i < pos + take}
            pieces.append((block.slice(pos, take), piece_bad))
            pos += take
            chunk_row += take
        for sb in _rechunk(pieces, next_row, batch_rows):
            bad_total += len(sb.bad_rows)
            yield sb
        next_row += chunk_row - 1
    logger.info("CSV %s: %s data rows read, %s with read errors", name, next_row - 1, bad_total)


# --------------------------------------------------------------------------- Parquet


@contextmanager
def _seekable(raw: BinaryIO) -> Iterator[IO[bytes]]:
    """Parquet needs random access: spool gzipped or non-seekable streams to a temp file on disk."""
    if not isinstance(raw, gzip.GzipFile) and _seekable_stream(raw):
        yield raw
        return
    with tempfile.TemporaryFile(prefix="cdp-ingest-") as spool:
        shutil.copyfileobj(raw, spool, READ_CHUNK)
        spool.seek(0)
        yield spool


def _iter_parquet(
    raw: BinaryIO, name: str, *, batch_rows: int, columns: list[str] | None
) -> Iterator[SourceBatch]:
    with _seekable(raw) as f:
        try:
            # pre_buffer (read a row group's column chunks in one go, for high-latency stores) held a
            # whole row group's pages at once; the file here is local, and reads page by page are as fast
            # (a 625k-row file of 90k-row groups: peak +66 → +36 MB, same time).
            pf = pq.ParquetFile(f, pre_buffer=False)
        except (pa.ArrowException, OSError) as e:
            raise FileLevelError("unreadable", f"not a readable Parquet file: {e}") from e
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise FileLevelError(
                    "unreadable", f"column(s) not in the file: {', '.join(repr(c) for c in missing)}"
                )
        # One thread: a task has a core at most, and the decoding threads' allocations stayed in RSS
        # (a 25,000-row partition file's transform peaked ~50 MB higher with them, at the same CPU time).
        batches = pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)
        first_row = 1
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError, EOFError, zlib.error) as e:
                raise FileLevelError(
                    "unreadable", f"Parquet file is corrupt after row {first_row - 1}: {e}"
                ) from e
            if batch.num_rows:
                yield SourceBatch(batch=batch, first_row=first_row, bad_rows={})
                first_row += batch.num_rows
        logger.info("Parquet %s: %s rows read", name, first_row - 1)


# --------------------------------------------------------------------------- public readers


def read_batches(
    source: Any,
    fmt: str | None = None,
    *,
    batch_rows: int = 50_000,
    block_size: int = 8 << 20,
    storage_options: dict | None = None,
    encoding: str = "utf-8",
    delimiter: str = ",",
    columns: list[str] | None = None,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> Iterator[SourceBatch]:
    """Stream a CSV or Parquet file as ``SourceBatch``es of at most ``batch_rows`` rows."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    name = _source_name(source)
    if fmt is None:
        if not name:
            raise FileLevelError("unreadable", "cannot tell the file format from the source; pass fmt")
        fmt = detect_format(name)
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"read_batches reads csv or parquet, not {fmt!r} (use read_json_lines)")
    if fmt == "csv":
        _check_delimiter(delimiter)
    name = name or "<file object>"
    with open_source(source, storage_options=storage_options, max_decompressed_bytes=max_decompressed_bytes) as raw:
        if fmt == "csv":
            yield from _iter_csv(
                raw,
                name,
                batch_rows=batch_rows,
                block_size=block_size,
                encoding=encoding,
                delimiter=delimiter,
                columns=columns,
            )
        else:
            yield from _iter_parquet(raw, name, batch_rows=batch_rows, columns=columns)


def _read_line(stream: BinaryIO) -> tuple[bytes, bool]:
    """One line without its newline, and whether it was cut at ``MAX_JSON_LINE_BYTES``."""
    line = stream.readline(MAX_JSON_LINE_BYTES + 1)
    if len(line) <= MAX_JSON_LINE_BYTES or line.endswith(b"\n"):
        return line, False
    while True:  # drain the rest of the over-long line
        more = stream.readline(READ_CHUNK)
        if not more or more.endswith(b"\n"):
            return line[:OVERLONG_LINE_KEEP], True


# orjson reads JSON nested up to 1024 levels but writes only 254 (then raises "Recursion limit reached"): a
# record deeper than it can be written back is a bad line, not an error that stops the whole file.
MAX_JSON_DEPTH = 254


def _writable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def read_json_lines(
    source: Any, *, chunk_rows: int = 10_000, storage_options: dict | None = None
) -> Iterator[JsonChunk]:
    """Stream a JSON-lines file (optionally gzipped) in chunks of at most ``chunk_rows`` lines."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    name = _source_name(source) or "<file object>"
    total = bad_total = 0
    with open_source(source, storage_options=storage_options) as opened:
        # readline(limit) is only guaranteed on io's buffered classes (fsspec files lack it).
        stream: BinaryIO = (
            opened
            if isinstance(opened, io.BufferedIOBase)
            else io.BufferedReader(_StreamAdapter(opened), buffer_size=READ_CHUNK)
        )
        chunk: JsonChunk | None = None
        line_no = 0
        while True:
            try:
                line, overlong = _read_line(stream)
            except (OSError, EOFError, zlib.error) as e:
                raise _read_error(name, e) from e
            if not line:
                break
            line_no += 1
            body = line.rstrip(b"\r\n")
            if line_no == 1 and body.startswith(codecs.BOM_UTF8):
                body = body[len(codecs.BOM_UTF8) :]
            if not overlong and not body.strip():
                if chunk is not None:  # blank line: end the chunk so line numbers stay contiguous
                    yield chunk
                    chunk = None
                continue
            if chunk is None:
                chunk = JsonChunk(first_row=line_no, records=[], raw=[], bad_rows={})
            idx = len(chunk.records)
            record: dict | None = None
            if overlong:
                chunk.bad_rows[idx] = f"line {line_no}: line longer than {MAX_JSON_LINE_BYTES} bytes"
            else:
                try:
                    value = orjson.loads(body)
                except orjson.JSONDecodeError as e:
                    chunk.bad_rows[idx] = f"line {line_no}: invalid JSON: {e}"
                else:
                    if not isinstance(value, dict):
                        chunk.bad_rows[idx] = f"line {line_no}: not a JSON object"
                    elif body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and not _writable(value):
                        chunk.bad_rows[idx] = f"line {line_no}: nested deeper than {MAX_JSON_DEPTH} levels"
                    else:
                        record = value
            chunk.records.append(record)
            chunk.raw.append(body.decode("utf-8", errors="replace"))
            total += 1
            bad_total += record is None
            if len(chunk.records) >= chunk_rows:
                yield chunk
                chunk = None
        if chunk is not None:
            yield chunk
    logger.info("JSON lines %s: %s records read, %s bad", name, total, bad_total)


def count_rows(
    source: Any,
    fmt: str | None = None,
    *,
    storage_options: dict | None = None,
    encoding: str = "utf-8",
    delimiter: str = ",",
) -> int:
    """Data rows a reader will yield for ``source`` (Parquet: from the footer, others: by streaming)."""
    name = _source_name(source)
    if fmt is None:
        fmt = detect_format(name)
    if fmt == "jsonl":
        return sum(len(c.records) for c in read_json_lines(source, storage_options=storage_options))
    if fmt == "parquet":
        with open_source(source, storage_options=storage_options) as raw, _seekable(raw) as f:
            try:
                return pq.ParquetFile(f).metadata.num_rows
            except (pa.ArrowException, OSError) as e:
                raise FileLevelError("unreadable", f"not a readable Parquet file: {e}") from e
    return sum(
        b.batch.num_rows
        for b in read_batches(
            source, "csv", storage_options=storage_options, encoding=encoding, delimiter=delimiter
        )
    )
