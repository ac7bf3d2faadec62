"""The replay's per-message hot path, in a module light enough for planning worker processes (no
pyarrow): raw JSON lines → records → prepared messages (``segment.Preparer``), a block at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from cdp_ingest.errors import RowError
from cdp_ingest.segment import Preparer


@dataclass(slots=True)
class Record:
    line: int
    value: dict[str, Any] | None
    raw: str | bytes  # the archived line, for the error file
    problem: str | None = None

    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace") if isinstance(self.raw, bytes) else self.raw


def records_of_lines(first: int, lines: list[bytes], max_line: int) -> Iterator[Record]:
    """The records of a block of raw JSON lines whose first line is number ``first``; a line over
    ``max_line`` bytes (``readers.max_line``) is a bad record."""
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for line_no, raw in enumerate(lines, first):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if len(raw) > max_line:
            yield Record(line_no, None, raw[:1024], f"line {line_no}: longer than {max_line} bytes")
            continue
        try:
            value = loads(raw)
        except decode_error as e:
            if raw.strip():
                yield Record(line_no, None, raw, f"line {line_no}: invalid JSON: {e}")
            continue
        if isinstance(value, dict):
            yield Record(line_no, value, raw)
        else:
            yield Record(line_no, None, raw, f"line {line_no}: not a JSON object")


# ---- prepared blocks: the planning hot path, in worker processes for big JSON-lines archives --------
@dataclass(slots=True)
class PreparedBlock:
    rows_in: int
    accepted: list[tuple[int, str, bytes, bool]]  # (line, messageId, body, has_timestamp), archive order
    rejected: list[tuple[int, str, str]]  # (line, archived text, reason)


def prepare_records(records: Iterable[Record], preparer: Preparer, *, size: int = 2000) -> Iterator[PreparedBlock]:
    block = PreparedBlock(0, [], [])
    for rec in records:
        block.rows_in += 1
        try:
            if rec.problem is not None:
                raise RowError(rec.problem)
            if rec.value is None:
                raise RowError(f"line {rec.line}: not a message")
            mid, body, has_ts = preparer.prepare(rec.value, rec.line)
        except RowError as e:
            block.rejected.append((rec.line, rec.text(), str(e)))
            continue
        block.accepted.append((rec.line, mid, body, has_ts))
        if block.rows_in >= size:
            yield block
            block = PreparedBlock(0, [], [])
    if block.rows_in:
        yield block


_WORKER_PREPARER: Preparer | None = None


def init_worker(preparer: Preparer) -> None:
    """A planning worker process's initializer: the preparer every block of the unit uses."""
    global _WORKER_PREPARER
    _WORKER_PREPARER = preparer


def prepare_lines(first: int, lines: list[bytes], max_line: int, preparer: Preparer | None = None) -> PreparedBlock:
    """One block of raw lines, prepared (in a worker process: with the preparer its initializer got)."""
    preparer = preparer or _WORKER_PREPARER
    assert preparer is not None
    prepared = prepare_records(records_of_lines(first, lines, max_line), preparer, size=1 << 62)
    return next(prepared, PreparedBlock(0, [], []))
