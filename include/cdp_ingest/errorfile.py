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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FAILURE_COLUMN = "Failure Description"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class ErrorFileWriter:
    """Append rejected rows; ``close()`` returns the path written, or None when nothing was rejected."""

    def __init__(self, path: str | os.PathLike, columns: Iterable[str], *, append: bool = False):
        self.path = Path(path)
        self.columns = list(columns)
        self.append = append
        self.count = 0
        self._fh: io.TextIOWrapper | None = None
        self._writer: Any = None  # csv writer, created with the file

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A later step of the same import (the load) appends to what the transform wrote.
        append = self.append and self.path.exists() and self.path.stat().st_size > 0
        self._fh = open(self.path, "a" if append else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        if not append:
            self._writer.writerow([neutralise(c) for c in (*self.columns, FAILURE_COLUMN)])

    def write(self, row: Mapping[str, object] | list[object], reason: str) -> None:
        if self._writer is None:
            self._open()
        if isinstance(row, Mapping):
            values = [row.get(c, "") for c in self.columns]
            extra = [k for k in row if k not in self.columns]
            if extra:  # never lose a value: columns the header did not name go into the reason
                reason = f"{reason} (unexpected columns: {', '.join(extra)})"
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
            return self.path
        return None

    def __enter__(self) -> ErrorFileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_error_file(path: str | os.PathLike) -> list[dict[str, str]]:
    # Rows rejected for a huge cell keep it: lift the csv module's 128 KB field limit (process-wide).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
