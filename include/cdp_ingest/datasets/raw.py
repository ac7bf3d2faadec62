"""Raw datasets: rows kept as they are in ``<prefix>dataset-<name>``, replaced atomically on every sync.

A sync writes a new physical index ``<prefix>dataset-<name>-<version>`` (mapping inferred from a sample of
the rows), checks the accounting, then moves the alias ``<prefix>dataset-<name>`` from the old index to
the new one in a single ``_aliases`` call and only then deletes the old index. Readers of the alias see
the old rows or the new rows, never half a sync, and rows deleted at the source are gone after it. When
anything fails before the swap, the new index is deleted and the alias still points at the old one.

Also here: reading a fetched file as rows — typed values for raw datasets (``value_rows``), text cells
for the §6 mapping of mapped targets (``text_batches``; the mapper expects CSV-like strings).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdp_ingest.arrow import pa
from cdp_ingest.errorfile import ErrorFileWriter
from cdp_ingest.errors import FileLevelError
from cdp_ingest.pipeline import STAGE_ROWS, STAGE_SCHEMA, read_stage
from cdp_ingest.readers import SourceBatch, read_batches, read_json_lines
from cdp_ingest.store import BulkItem, LoadStats, Store

log = logging.getLogger(__name__)

SAMPLE_ROWS = 1000
MAX_ID_CHARS = 512


def alias_name(prefix: str, name: str) -> str:
    return f"{prefix}dataset-{name}"


def physical_name(prefix: str, name: str, version: int | str) -> str:
    return f"{prefix}dataset-{name}-{version}"


# ---- reading rows --------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list) and v and isinstance(v[0], tuple) and len(v[0]) == 2:  # Arrow map → pairs
        return {str(k): _plain(x) for k, x in v}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


class Unparsed(dict):
    """The row of a JSON line that could not be read: ``{"line": its text}``, for the error file only (its
    ``line`` is not a column of the dataset)."""


def value_rows(path: str | Path, fmt: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """``(row number, row, reader's failure or None)`` with typed values (CSV cells stay strings)."""
    if fmt == "jsonl":
        for chunk in read_json_lines(str(path)):
            for i, rec in enumerate(chunk.records):
                bad = chunk.bad_rows.get(i)
                yield chunk.first_row + i, rec if rec is not None else Unparsed(line=chunk.raw[i]), bad
        return
    for sb in read_batches(str(path), fmt):
        names = sb.batch.schema.names
        cols = [c.to_pylist() for c in sb.batch.columns]
        for i, values in enumerate(zip(*cols, strict=True)):
            row = {n: _plain(v) for n, v in zip(names, values, strict=True)}
            yield sb.first_row + i, row, sb.bad_rows.get(i)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return orjson.dumps(v, default=str).decode()
    return str(_plain(v))


def text_batches(path: str | Path, fmt: str, *, batch_rows: int = STAGE_ROWS) -> Iterator[SourceBatch]:
    """The file as ``SourceBatch``es of string columns, what ``Mapper.map_row`` reads (CSV passes through)."""
    if fmt == "csv":
        yield from read_batches(str(path), "csv", batch_rows=batch_rows)
        return
    rows: list[tuple[int, dict[str, Any], str | None]] = []
    for item in value_rows(path, fmt):
        rows.append(item)
        if len(rows) >= batch_rows:
            yield _as_text_batch(rows)
            rows = []
    if rows:
        yield _as_text_batch(rows)


def _text_array(values: list[Any]) -> pa.Array:
    """``[_text(v) for v in values]`` as an Arrow string array: columns of text, whole numbers (within 64 bits)
    or booleans cast by Arrow (the same text), numbers with ``str``, any other column value by value."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if kinds <= {str} or kinds == {int} or kinds == {bool}:
        try:
            arr = pa.array(values, None if kinds else pa.string())
        except (OverflowError, pa.ArrowException):  # an integer past 64 bits
            pass
        else:
            return pc.fill_null(arr if arr.type == pa.string() else pc.cast(arr, pa.string()), "")
    if kinds <= {int, float}:  # (Arrow writes 100.0 as "100": Python's text)
        return pa.array(["" if v is None else str(v) for v in values], pa.string())
    return pa.array([_text(v) for v in values], pa.string())


def _as_text_batch(rows: list[tuple[int, dict[str, Any], str | None]]) -> SourceBatch:
    names: dict[str, None] = {}
    for _, row, _ in rows:
        names.update(dict.fromkeys(row))
    arrays = [_text_array([row.get(n) for _, row, _ in rows]) for n in names]
    batch = pa.RecordBatch.from_arrays(arrays, names=list(names)) if names else \
        pa.RecordBatch.from_pydict({"value": [""] * len(rows)})
    bad = {i: reason for i, (_, _, reason) in enumerate(rows) if reason}
    return SourceBatch(batch=batch, first_row=rows[0][0], bad_rows=bad)


# ---- mapping inference ---------------------------------------------------------------------------------
def _field_type(values: list[Any], flavor: str) -> dict[str, Any]:
    flat: list[Any] = []
    for v in values:  # a field holding arrays is mapped by its elements' type
        flat.extend(v) if isinstance(v, list) else flat.append(v)
    values = flat
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return {"type": "keyword", "ignore_above": 8191}
    if kinds == {bool}:
        return {"type": "boolean"}
    if kinds == {int}:
        return {"type": "long"}
    if kinds <= {int, float}:
        return {"type": "double"}
    if kinds == {dict}:
        return {"type": "flat_object"} if flavor == "opensearch" else {"type": "object", "enabled": False}
    if kinds == {str} and all(_looks_like_date(v) for v in values if v):
        return {"type": "date", "format": "strict_date_optional_time||epoch_millis"}
    return {"type": "keyword", "ignore_above": 8191}


def _looks_like_date(s: str) -> bool:
    if len(s) < 10 or s[4] != "-" or s[7] != "-":
        return False
    try:
        datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def infer_mapping(path: str | Path, fmt: str, *, flavor: str = "opensearch", sample: int = SAMPLE_ROWS) -> dict:
    """An explicit mapping from the first ``sample`` rows (CSV columns are strings: keyword, or date when
    every sampled value is an ISO date). Columns first seen later are mapped dynamically as strings."""
    seen: dict[str, list[Any]] = {}
    for n, (_, row, bad) in enumerate(value_rows(path, fmt)):
        if n >= sample:
            break
        if bad:
            continue
        for k, v in row.items():
            seen.setdefault(str(k), []).append(v)
    props = {k: _field_type(v, flavor) for k, v in seen.items() if k and "." not in k}
    return {"dynamic": True, "date_detection": False, "numeric_detection": False,
            "dynamic_templates": [{"strings": {"match_mapping_type": "string",
                                               "mapping": {"type": "keyword", "ignore_above": 8191}}}],
            "properties": props}


# ---- stage and load --------------------------------------------------------------------------------------
@dataclass
class RawStage:
    rows_in: int
    accepted: int
    rejected: int
    staged: str
    error_file: str | None
    columns: list[str]
    mapping: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_raw(path: str | Path, fmt: str, *, staged_path: str | Path, error_path: str | Path,
              id_column: str | None = None, flavor: str = "opensearch") -> RawStage:
    """Serialise every row (typed) into the staged Parquet file the load step reads; rows the reader could
    not parse, or without a usable ``id_column`` value, go to the error CSV."""
    mapping = infer_mapping(path, fmt, flavor=flavor)
    staged_path = Path(staged_path)
    staged_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged_path.with_suffix(".partial")
    writer = pq.ParquetWriter(tmp, STAGE_SCHEMA, compression="zstd")
    cols: dict[str, list] = {k: [] for k in STAGE_SCHEMA.names}
    header: dict[str, None] = {}
    errors: ErrorFileWriter | None = None
    rows_in = accepted = 0
    try:
        for ref, row, bad in value_rows(path, fmt):
            rows_in += 1
            if not isinstance(row, Unparsed):
                header.update(dict.fromkeys(map(str, row)))
            reason = bad
            doc_id = str(ref)
            if reason is None and id_column:
                value = row.get(id_column)
                if value is None or value == "":
                    reason = f"column '{id_column}' (id_column) is empty"
                else:
                    doc_id = _text(value)
                    if len(doc_id) > MAX_ID_CHARS:
                        reason = f"column '{id_column}' (id_column) is longer than {MAX_ID_CHARS} characters"
            if reason is not None:
                if errors is None:
                    errors = ErrorFileWriter(Path(error_path), list(header))
                errors.write({k: _text(v) for k, v in row.items()}, reason)
                continue
            body = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
            accepted += 1
            values: tuple[Any, ...] = (ref, "raw", "", doc_id, body, body)
            for k, value in zip(STAGE_SCHEMA.names, values, strict=True):
                cols[k].append(value)
            if len(cols["ref"]) >= STAGE_ROWS:
                writer.write_table(pa.table(cols, schema=STAGE_SCHEMA))
                for col in cols.values():
                    col.clear()
        if cols["ref"]:
            writer.write_table(pa.table(cols, schema=STAGE_SCHEMA))
    finally:
        writer.close()
        error_file = errors.close() if errors else None
    tmp.replace(staged_path)
    return RawStage(rows_in, accepted, rows_in - accepted, str(staged_path), str(error_file) if error_file else None,
                    list(header), mapping)


@dataclass
class RawLoad:
    index: str
    alias: str
    version: int
    loaded: int
    duplicates: int
    failed: int
    error_file: str | None
    removed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alias_indices(store: Store, alias: str) -> list[str]:
    """The physical indices behind ``alias`` (none when it does not exist)."""
    resp = store._request("GET", f"/_alias/{alias}", ok_statuses=(404,))
    if not isinstance(resp, dict) or resp.get("status") == 404 or "error" in resp:
        return []
    return sorted(k for k, v in resp.items() if isinstance(v, dict) and alias in (v.get("aliases") or {}))


def versions(store: Store, prefix: str, name: str) -> list[str]:
    """Every physical index of this dataset (current, or left over by an interrupted sync)."""
    resp = store._request("GET", f"/{physical_name(prefix, name, '*')}/_settings",
                          params={"filter_path": "*.settings.index.provided_name"}, ok_statuses=(404,))
    return sorted(k for k in (resp or {}) if isinstance(resp, dict) and k.startswith(physical_name(prefix, name, "")))


def load_raw(store: Store, name: str, staged: dict[str, Any], *, version: int, error_path: str | Path) -> RawLoad:
    """Bulk the staged rows into a new index, check the accounting, swap the alias, drop the old index."""
    from cdp_ingest.ledger import Accounting

    alias = alias_name(store.prefix, name)
    new = physical_name(store.prefix, name, version)
    existing = store._request("HEAD", f"/{alias}", ok_statuses=(404,))
    if existing is True and not alias_indices(store, alias):
        raise FileLevelError("internal", f"{alias} exists as a plain index, not as a dataset alias; "
                                         f"rename or delete it first")
    store._request("DELETE", f"/{new}", ok_statuses=(404,))  # left by an earlier try of this very version
    store._request("PUT", f"/{new}", body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0, "index.mapping.total_fields.limit": 2000},
        "mappings": staged["mapping"], "aliases": {}})
    stats = LoadStats()
    errors = ErrorFileWriter(Path(error_path), staged["columns"])
    try:
        pending: dict[int, bytes] = {}

        def items() -> Iterator[BulkItem]:
            for b in read_stage(staged["staged"]):
                for ref, doc_id, body in zip(b["ref"], b["id"], b["body"], strict=True):
                    pending[ref] = body
                    yield BulkItem(new, doc_id, body, ref, op="create")

        for o in store.bulk_load(items(), stats=stats):
            body = pending.pop(o.ref, None)
            if o.status == "failed":
                row = orjson.loads(body) if body else {}
                errors.write({k: _text(v) for k, v in row.items()}, o.reason or "store rejected the row")
        store.refresh([new])
        Accounting(staged["rows_in"], stats.loaded, staged["rejected"] + stats.failed, stats.duplicates).check()
        counted = store.count(new)
        if counted != stats.loaded:
            raise FileLevelError("internal", f"{new} holds {counted} documents after loading {stats.loaded}")
        old = alias_indices(store, alias)
        actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": alias}} for i in old]
        actions.append({"add": {"index": new, "alias": alias}})
        store._request("POST", "/_aliases", body={"actions": actions})
    except BaseException:
        store._request("DELETE", f"/{new}", ok_statuses=(404,))
        errors.close()
        raise
    error_file = errors.close()
    removed = [i for i in versions(store, store.prefix, name) if i != new]
    for i in removed:  # the previous version, and any left by interrupted syncs
        store._request("DELETE", f"/{i}", ok_statuses=(404,))
    log.info("dataset %s: %s rows in %s, alias %s swapped (removed %s)", name, stats.loaded, new, alias,
             len(removed))
    return RawLoad(new, alias, version, stats.loaded, stats.duplicates, stats.failed,
                   str(error_file) if error_file else None, removed)


def drop_raw(store: Store, name: str) -> list[str]:
    """Delete the alias and every physical index of a raw dataset."""
    gone = versions(store, store.prefix, name)
    for i in gone:
        store._request("DELETE", f"/{i}", ok_statuses=(404,))
    return gone


def index_stats(store: Store, name: str) -> dict[str, Any]:
    """Rows and primary store size behind a raw dataset's alias (zeros when it has none yet)."""
    alias = alias_name(store.prefix, name)
    resp = store._request("GET", f"/{alias}/_stats/docs,store", ok_statuses=(404,))
    prim = ((resp or {}).get("_all") or {}).get("primaries") or {}
    current = alias_indices(store, alias)
    return {"index": current[0] if current else None,
            "rows": int((prim.get("docs") or {}).get("count") or 0),
            "size_bytes": int((prim.get("store") or {}).get("size_in_bytes") or 0)}
