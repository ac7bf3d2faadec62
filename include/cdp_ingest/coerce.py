"""Typed value coercion shared by manifests (SPEC §2) and mappings (SPEC §6).

Every function takes the raw cell text and returns a Python value or raises ``RowError`` with a
message meant for the error CSV's ``Failure Description`` (it names the column, never the value,
so no PII ends up in logs that copy the message).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cdp_ingest.errors import RowError

DATE_PREFIX = "$D_"
TRUE_WORDS = frozenset({"true", "1", "y", "yes"})
FALSE_WORDS = frozenset({"false", "0", "n", "no"})
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Years outside this window are almost always unit mistakes (ms instead of s).
MIN_EPOCH, MAX_EPOCH = 0, 32503680000  # 1970-01-01 .. 3000-01-01
MIN_TIME, MAX_TIME = datetime(1970, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)


def parse_epoch_datetime(text: str, column: str) -> datetime:
    """``$D_<epoch seconds>`` (or a bare epoch for ``ts``) → aware UTC datetime."""
    raw = text[len(DATE_PREFIX):] if text.startswith(DATE_PREFIX) else text
    try:
        value = float(raw)
    except ValueError:
        raise RowError(f"column '{column}': not an epoch-seconds datetime") from None
    if not math.isfinite(value) or not MIN_EPOCH <= value <= MAX_EPOCH:
        raise RowError(f"column '{column}': epoch seconds out of range (1970..3000)")
    return datetime.fromtimestamp(value, tz=UTC)


def to_string(text: str, column: str) -> str:
    return text


def to_integer(text: str, column: str, lo: int = INT32_MIN, hi: int = INT32_MAX, kind: str = "INTEGER") -> int:
    t = text.strip()
    try:
        value = int(t)
    except ValueError:
        try:
            f = float(t)
        except ValueError:
            raise RowError(f"column '{column}': expected {kind}") from None
        if not f.is_integer():
            raise RowError(f"column '{column}': expected {kind}, got a fraction") from None
        value = int(f)
    if not lo <= value <= hi:
        raise RowError(f"column '{column}': {kind} out of range")
    return value


def to_long(text: str, column: str) -> int:
    return to_integer(text, column, INT64_MIN, INT64_MAX, "LONG")


def to_float(text: str, column: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise RowError(f"column '{column}': expected FLOAT") from None
    if not math.isfinite(value):
        raise RowError(f"column '{column}': FLOAT must be finite")
    return value


def to_boolean(text: str, column: str) -> bool:
    t = text.strip().lower()
    if t in TRUE_WORDS:
        return True
    if t in FALSE_WORDS:
        return False
    raise RowError(f"column '{column}': expected BOOLEAN (true/false, 1/0, Y/N)")


COERCERS: dict[str, Callable[[str, str], Any]] = {
    "STRING": to_string,
    "INTEGER": to_integer,
    "LONG": to_long,
    "FLOAT": to_float,
    "BOOLEAN": to_boolean,
    "DATETIME": parse_epoch_datetime,
}


def coerce(text: str, data_type: str, column: str) -> Any:
    """Coerce one cell. ``$D_<epoch>`` is a datetime in any column, whatever its declared type."""
    if text.startswith(DATE_PREFIX):
        return parse_epoch_datetime(text, column)
    try:
        fn = COERCERS[data_type]
    except KeyError:
        raise RowError(f"column '{column}': unknown dataType {data_type!r}") from None
    return fn(text, column)
