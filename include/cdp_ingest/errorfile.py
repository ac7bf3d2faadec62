"""The error CSV: the original columns plus a last ``Failure Description`` column (SPEC §2).

Cells that a spreadsheet would run as a formula (starting with ``= + - @``, or a tab/CR that some
spreadsheets strip first) are prefixed with a single quote, per OWASP's CSV-injection advice.
The writer streams rows and creates the file only when the first rejected row arrives, so a clean
import leaves no empty error file behind.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

FAILURE_COLUMN = "Failure Description"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class ErrorFileWriter:
    """Append rejected rows; ``close()`` returns the path written, or None when nothing was rejected.

    A row (a mapping) with a column the header does not name adds it to the header: rows of JSON lines
    need not share their keys. The file is then written again once, at ``close()``, under the grown
    header, every earlier row given an empty cell in the new columns — no value is lost."""

    def __init__(self, path: str | os.PathLike, columns: Iterable[str], *, append: bool = False):
        self.path = Path(path)
        self.columns = list(columns)
        self.append = append
        self.count = 0
        self._fh: io.TextIOWrapper | None = None
        self._writer: Any = None  # csv writer, created with the file
        self._grown = False  # columns were added after the header was written (close() writes it again)
        # the file's header before this writer's rows, and the byte where they start
        self._prior: tuple[list[str], int] = ([], 0)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A later step of the same import (the load) appends to what the transform wrote.
        append = self.append and self.path.exists() and self.path.stat().st_size > 0
        if append:
            with open(self.path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [FAILURE_COLUMN])[:-1]
            self._prior = (header, self.path.stat().st_size)
            self._grown = header != [neutralise(c) for c in self.columns]
        self._fh = open(self.path, "a" if append else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        if not append:
            self._writer.writerow([neutralise(c) for c in (*self.columns, FAILURE_COLUMN)])
            self._prior = ([], self._fh.tell())  # (text tell: the byte offset, flushed)

    def write(self, row: Mapping[str, object] | list[object], reason: str) -> None:
        if self._writer is None:
            self._open()
        if isinstance(row, Mapping):
            extra = [k for k in row if k not in self.columns]
            if extra:  # never lose a value: the header grows (close() writes the file again under it)
                self.columns.extend(extra)
                self._grown = True
            values = [row.get(c, "") for c in self.columns]
        else:
            values = list(row) + [""] * (len(self.columns) - len(row))
            if len(row) > len(self.columns):
                reason = f"{reason} (extra fields: {' | '.join(str(v) for v in row[len(self.columns):])})"
        self._writer.writerow([neutralise(v) for v in values[: len(self.columns)]] + [neutralise(reason)])
        self.count += 1

    def close(self) -> Path | None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            if self._grown:
                self._rewrite()
            return self.path
        return None

    def _rewrite(self) -> None:
        """The file again under one header: the file's own (when this writer appended to it), then every
        column this writer knows. A row this writer wrote holds the first columns it knew then (they only
        grew at the end), and its reason last; a row from before the append is read by the file's header."""
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
        before, start = self._prior
        mine = [neutralise(c) for c in self.columns]
        header = before + [c for c in mine if c not in before]
        place = {c: i for i, c in reversed(list(enumerate(header)))}
        tmp = self.path.with_name(self.path.name + ".partial")
        with open(self.path, "rb") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
            out = csv.writer(dst)
            out.writerow([*header, FAILURE_COLUMN])
            earlier = csv.reader(_lines(src, start))
            next(earlier, None)  # the file's header
            for names, rows in ((before, earlier), (mine, csv.reader(_lines(src, None)))):
                at = [place[c] for c in names]
                for cells in rows:
                    line = [""] * len(header)
                    for i, v in zip(at, cells[:-1], strict=False):
                        line[i] = v
                    out.writerow([*line, cells[-1] if cells else ""])
        os.replace(tmp, self.path)

    def __enter__(self) -> ErrorFileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lines(fh: BinaryIO, stop: int | None) -> Iterator[str]:
    """``fh``'s lines as text, up to byte ``stop`` (a row's end) or to the end."""
    read = fh.tell()
    while stop is None or read < stop:
        line = fh.readline()
        if not line:
            return
        read += len(line)
        yield line.decode("utf-8")


def read_error_file(path: str | os.PathLike) -> list[dict[str, str]]:
    # Rows rejected for a huge cell keep it: lift the csv module's 128 KB field limit (process-wide).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
