"""Partition days without Arrow: the layout (``<base>/dt=YYYY-MM-DD/`` + ``_SUCCESS``), which day a
run imports, its load deadline and the day's summary of per-file reports.

Split from ``cdp_ingest.partitions`` (which re-exports every name) so that the DAG's small tasks —
resolving the day, listing files, the deadline check, the day's accounting — do not import pyarrow:
under the LocalExecutor each of them is a process of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from cdp_ingest.errors import FileLevelError

MARKER = "_SUCCESS"


def partition_prefix(base_url: str, day: date) -> str:
    """``s3://bucket/prefix`` + day → ``s3://bucket/prefix/dt=YYYY-MM-DD/``."""
    return f"{base_url.rstrip('/')}/dt={day.isoformat()}/"


def is_data_file(name: str) -> bool:
    """Parquet files of a partition; hidden and ``_``-prefixed names (markers, temp files) are not."""
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise ValueError(f"not a day in the form YYYY-MM-DD: {text!r}") from None


def day_of_interval(data_interval_start: datetime, tz: Any) -> date:
    """The partition day of a run: the local date (in the source's time zone) at which the run's data
    interval starts. For a daily schedule that is the day before the run fires (D-1)."""
    if data_interval_start.tzinfo is None:
        raise ValueError("data_interval_start must be timezone-aware")
    return data_interval_start.astimezone(tz).date()


def summarize_day(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up the per-file import reports of one day; each file's accounting must already hold."""
    total = {"files": 0, "committed": 0, "skipped": 0, "rows_in": 0, "loaded": 0, "rejected": 0, "duplicates": 0}
    error_files: list[str] = []
    for r in results:
        total["files"] += 1
        if r.get("status") == "skipped":
            total["skipped"] += 1
            continue
        rows_in, loaded, rejected, dups = (int(r.get(k) or 0) for k in ("rows_in", "loaded", "rejected",
                                                                          "duplicates"))
        if rows_in != loaded + rejected + dups:
            raise FileLevelError("internal", f"{r.get('path')}: accounting mismatch rows_in={rows_in} != "
                                             f"loaded {loaded} + rejected {rejected} + duplicates {dups}")
        total["committed"] += 1
        total["rows_in"] += rows_in
        total["loaded"] += loaded
        total["rejected"] += rejected
        total["duplicates"] += dups
        if r.get("error_file"):
            error_files.append(r["error_file"])
    return {**total, "error_files": sorted(error_files)}


def local_deadline(day: date, deadline_time: str, tz: Any) -> datetime:
    """When ``day``'s partition must be loaded: ``deadline_time`` (HH:MM) local on the following day."""
    hh, mm = (int(x) for x in deadline_time.split(":"))
    naive = datetime.combine(day + timedelta(days=1), datetime.min.time()).replace(hour=hh, minute=mm)
    return naive.replace(tzinfo=tz)
