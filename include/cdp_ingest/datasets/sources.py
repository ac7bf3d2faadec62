"""Fetch a dataset's source to a local file, detecting when nothing changed (SPEC §4).

Change markers, compared with the ones the previous successful sync recorded:

- http(s): a conditional GET (``If-None-Match`` with the ETag, ``If-Modified-Since`` with the Last-Modified
  date); a ``304`` means unchanged without a download. Servers that ignore both still send the body, whose
  SHA-256 is then compared.
- s3:// and gs://: the object's ETag / generation from a metadata call; same ETag = unchanged, no download.
- local files: size + mtime, then the SHA-256 of the content.
- database tables / queries: with a ``watermark_column``, ``count(*)`` and ``max(column)`` of the query
  (one cheap aggregate) decide; without one the result is dumped and its SHA-256 compared. Mapped targets
  with a watermark read only the rows at or above the previous watermark, less ``watermark_lookback``
  (an incremental sync). The aggregate and the rows are read in one snapshot where the database has
  one (PostgreSQL: a read-only REPEATABLE READ transaction), so the recorded maximum is that of the rows
  read. Each such sync also counts the rows under the next sync's window (``markers["below"]``); the next
  one counts them again, and rows added there since (committed late, not read) are named in its reason
  and logged as a warning.

``force=True`` skips every comparison. The fetched file keeps the source's own name (so its format is
detected from it); a database result is written as JSON lines (types kept: numbers, booleans, nulls,
ISO timestamps). A ``.zip`` source is unpacked: it must hold exactly one data file.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from cdp_ingest.datasets.spec import DatasetError, DatasetSpec, format_of
from cdp_ingest.errors import FileLevelError
from cdp_ingest.readers import detect_format

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DB_FETCH_ROWS = 5_000
HTTP_TIMEOUT = 60


@dataclass
class Fetched:
    changed: bool
    path: str | None  # local file (None when unchanged)
    format: str | None
    size: int = 0
    markers: dict[str, Any] = field(default_factory=dict)  # etag, last_modified, content_hash, watermark, ...
    reason: str = ""  # why unchanged / what changed
    incremental: bool = False  # only rows at or above the previous watermark (less the lookback) were read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hash_copy(fh: Any, dest: Path) -> tuple[int, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as out:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    os.replace(tmp, dest)
    return size, "sha256:" + digest.hexdigest()


def _file_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path if "://" in url else url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name or "source"


def _unzip(path: Path) -> Path:
    """A .zip holding one data file → that file, extracted next to it (bounded copy)."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
            if len(members) != 1:
                raise FileLevelError("unreadable", f"a .zip source must hold exactly one file, found {len(members)}")
            member = members[0]
            out = path.with_name(_file_name(member.filename))
            with zf.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
    except zipfile.BadZipFile as e:
        raise FileLevelError("unreadable", f"not a readable .zip file: {e}") from e
    path.unlink(missing_ok=True)
    return out


def _finish(spec: DatasetSpec, local: Path, size: int, digest: str, previous: dict[str, Any], force: bool,
            markers: dict[str, Any]) -> Fetched:
    markers["content_hash"] = digest
    if not force and previous.get("content_hash") == digest:
        local.unlink(missing_ok=True)
        return Fetched(False, None, None, size, markers, "content unchanged (same SHA-256)")
    if local.name.lower().endswith(".zip"):
        local = _unzip(local)
    fmt = spec.format or format_of(str(spec.source.url)) or detect_format(local.name)
    return Fetched(True, str(local), fmt, size, markers, "forced" if force else "content changed")


# ---- files --------------------------------------------------------------------------------------------
def fetch_http(spec: DatasetSpec, previous: dict[str, Any], work: Path, *, force: bool = False,
               timeout: float = HTTP_TIMEOUT) -> Fetched:
    url = str(spec.source.url)
    headers = {"User-Agent": "cdp-ingest/datasets"}
    if not force:
        if previous.get("etag"):
            headers["If-None-Match"] = previous["etag"]
        if previous.get("last_modified"):
            headers["If-Modified-Since"] = previous["last_modified"]
    req = urllib.request.Request(url, headers=headers)  # the scheme is checked in parse_spec
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return Fetched(False, None, None, 0, {k: previous.get(k) for k in ("etag", "last_modified",
                                                                              "content_hash")},
                           "not modified (HTTP 304)")
        code = "no_data_file" if e.code in (404, 410) else "source_unavailable"
        raise FileLevelError(code, f"GET {_safe_url(url)} failed with HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FileLevelError("source_unavailable", f"GET {_safe_url(url)} failed: {getattr(e, 'reason', e)}") from e
    with resp:
        markers = {"etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified")}
        size, digest = _hash_copy(resp, work / _file_name(url))
    return _finish(spec, work / _file_name(url), size, digest, previous, force, markers)


def _safe_url(url: str) -> str:
    """The URL without credentials or query string (which may carry tokens), for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def fetch_local(spec: DatasetSpec, previous: dict[str, Any], work: Path, *, force: bool = False) -> Fetched:
    path = Path(str(spec.source.url))
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise FileLevelError("no_data_file", f"data file not found: {path}") from e
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    if not force and previous.get("file_stamp") == stamp:
        return Fetched(False, None, None, st.st_size, {"file_stamp": stamp,
                                                       "content_hash": previous.get("content_hash")},
                       "file unchanged (same size and mtime)")
    try:
        with open(path, "rb") as fh:
            size, digest = _hash_copy(fh, work / path.name)
    except OSError as e:
        raise FileLevelError("unreadable", f"cannot read {path}: {e}") from e
    return _finish(spec, work / path.name, size, digest, previous, force, {"file_stamp": stamp})


def _object_etag(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "generation", "md5Hash"):
        if info.get(key):
            return str(info[key])
    return None


def fetch_object(spec: DatasetSpec, previous: dict[str, Any], work: Path, *, force: bool = False,
                 fs: Any = None, storage_options: dict | None = None) -> Fetched:
    """s3:// / gs:// through an fsspec filesystem (the Airflow adapter passes the connection's)."""
    url = str(spec.source.url)
    if fs is None:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        info = fs.info(url)
    except FileNotFoundError as e:
        raise FileLevelError("no_data_file", f"object not found: {url}") from e
    except Exception as e:
        raise FileLevelError("source_unavailable", f"cannot read {url}: {e.__class__.__name__}: {e}") from e
    etag = _object_etag(info)
    if not force and etag and previous.get("etag") == etag:
        return Fetched(False, None, None, int(info.get("size") or 0),
                       {"etag": etag, "content_hash": previous.get("content_hash")}, "object unchanged (same ETag)")
    dest = work / _file_name(url)
    try:
        with fs.open(url, "rb") as fh:
            size, digest = _hash_copy(fh, dest)
    except FileNotFoundError as e:
        raise FileLevelError("no_data_file", f"object not found: {url}") from e
    return _finish(spec, dest, size, digest, previous, force, {"etag": etag})


# ---- databases ------------------------------------------------------------------------------------------
def _json_default(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v) if v == v.to_integral_value() or abs(v) < Decimal(1e15) else str(v)
    if isinstance(v, bytes | memoryview):
        return bytes(v).hex()
    return str(v)


def _scalar(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    return v


def fetch_sql(spec: DatasetSpec, previous: dict[str, Any], work: Path, *, connect: Callable[[], Any],
              force: bool = False, fetch_rows: int = DB_FETCH_ROWS) -> Fetched:
    """Run the dataset's query on a DB-API connection from ``connect()`` and write it as JSON lines.

    The session is read-only where the driver allows it; rows are fetched ``fetch_rows`` at a time
    (a server-side cursor on PostgreSQL), so memory stays bounded."""
    base = spec.source.sql()
    wm = spec.watermark_column
    markers: dict[str, Any] = {}
    incremental = False
    try:
        conn = connect()
    except Exception as e:
        raise FileLevelError("source_unavailable", f"cannot connect to {spec.source.conn_id}: "
                                                   f"{e.__class__.__name__}: {e}") from e
    try:
        _read_only(conn)
        params: tuple = ()
        query = base
        if wm:
            col = '"' + wm.replace('"', '""') + '"'
            cur = conn.cursor()
            cur.execute(f"SELECT count(*), max({col}), count({col}) FROM ({base}) AS cdp_src")  # noqa: S608 - validated
            count, top, valued = cur.fetchone()
            cur.close()
            markers["row_count"] = int(count)
            markers["watermark"] = _scalar(top)
            if not force and previous.get("watermark") == markers["watermark"] and \
                    previous.get("row_count") == markers["row_count"]:
                return Fetched(False, None, None, 0, markers, f"watermark unchanged ({wm} = {markers['watermark']}, "
                                                              f"{count} rows)")
            if spec.target.kind != "raw" and previous.get("watermark") is not None and not force:
                # At or above (>=): a row written after the last sync with the last maximum is read; the rows
                # read again are their own duplicates (deterministic ids) or merge again into their profiles.
                lower = below(previous["watermark"], spec.watermark_lookback, wm)
                query = f"SELECT * FROM ({base}) AS cdp_src WHERE {col} >= %s ORDER BY {col}"  # noqa: S608
                params = (lower,)
                incremental = True
        dest = work / f"{spec.name}.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        digest = hashlib.sha256()
        size = rows = 0
        cur = _stream_cursor(conn, fetch_rows)
        cur.execute(query, params) if params else cur.execute(query)
        with open(tmp, "wb") as out:
            names: list[str] | None = None
            while True:
                batch = cur.fetchmany(fetch_rows)
                if names is None:
                    names = [d[0] for d in cur.description]
                if not batch:
                    break
                for r in batch:
                    line = orjson.dumps(dict(zip(names, r, strict=True)), default=_json_default,
                                        option=orjson.OPT_NON_STR_KEYS) + b"\n"
                    digest.update(line)
                    out.write(line)
                    size += len(line)
                    rows += 1
        cur.close()
        os.replace(tmp, dest)
        if wm and spec.target.kind != "raw" and top is not None:
            # The rows under the next sync's window, in this snapshot: that sync counts them again and
            # tells rows added under its window since (which it does not read).
            under = below(markers["watermark"], spec.watermark_lookback, wm)
            cur = conn.cursor()
            cur.execute(f"SELECT count(*) FROM ({base}) AS cdp_src WHERE {col} < %s", (under,))  # noqa: S608
            markers["below"] = {"under": _scalar(under), "rows": int(cur.fetchone()[0])}
            cur.close()
    except FileLevelError:
        raise
    except Exception as e:
        raise FileLevelError("source_query_failed", f"query on {spec.source.conn_id} failed: "
                                                    f"{e.__class__.__name__}: {str(e).strip()[:500]}") from e
    finally:
        try:
            conn.rollback()
            conn.close()
        except Exception:  # closing a broken connection must not hide the real error
            log.debug("closing the source connection failed", exc_info=True)
    markers["content_hash"] = "sha256:" + digest.hexdigest()
    markers["rows_read"] = rows
    if not force and not incremental and previous.get("content_hash") == markers["content_hash"]:
        dest.unlink(missing_ok=True)
        return Fetched(False, None, None, size, markers, "query result unchanged (same SHA-256)")
    if incremental:
        window = f"{wm} >= {_scalar(lower)}"
        if spec.watermark_lookback:
            window += f" ({previous['watermark']} less the lookback {spec.watermark_lookback})"
        reason = f"rows where {window}"
        then = previous.get("below") or {}
        if then.get("under") == _scalar(lower):  # the last sync counted the rows under this window
            # under it now: the rows with a value, less the ones read (one snapshot)
            added = int(valued) - rows - int(then.get("rows") or 0)
            if added > 0:
                missed = (f"{added} row(s) were added below the window ({wm} < {_scalar(lower)}) since the last sync: "
                          f"they are not read (raise watermark_lookback, or force a full sync)")
                log.warning("dataset %s: %s", spec.name, missed)
                reason = f"{reason}; {missed}"
        if rows == 0:
            dest.unlink(missing_ok=True)
            return Fetched(False, None, None, 0, markers, f"no {reason}")
        return Fetched(True, str(dest), "jsonl", size, markers, reason, incremental)
    return Fetched(True, str(dest), "jsonl", size, markers, "forced" if force else "query result changed",
                   incremental)


def below(watermark: Any, lookback: int | float | None, column: str) -> Any:
    """The lowest ``column`` value an incremental sync reads: the last ``watermark`` (as stored: a number,
    an ISO date/time, or a decimal as text), less ``lookback`` (seconds for a date/time)."""
    if not lookback:
        return watermark
    if isinstance(watermark, int | float) and not isinstance(watermark, bool):
        return watermark - lookback
    if isinstance(watermark, str):
        with contextlib.suppress(InvalidOperation):
            return str(Decimal(watermark) - Decimal(str(lookback)))
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(watermark) - timedelta(seconds=lookback)
    raise FileLevelError("bad_watermark", f"watermark_lookback needs a number or a date/time in {column}; its "
                                          f"last maximum is {watermark!r}")


def _read_only(conn: Any) -> None:
    """Read-only, and one snapshot for the aggregate and the rows (REPEATABLE READ) where the driver can."""
    if hasattr(conn, "set_session"):  # psycopg2
        try:
            conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
        except Exception:  # not every backend supports it; the query is a SELECT anyway
            log.debug("could not make the session read-only", exc_info=True)
            with contextlib.suppress(Exception):
                conn.set_session(readonly=True)
    elif hasattr(conn, "read_only"):  # psycopg 3
        conn.read_only = True
        with contextlib.suppress(Exception):
            import psycopg

            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ


def _stream_cursor(conn: Any, fetch_rows: int) -> Any:
    """A server-side cursor where the driver has one (psycopg), else a plain cursor with fetchmany."""
    try:
        cur = conn.cursor(name="cdp_dataset_fetch")
        cur.itersize = fetch_rows
        return cur
    except TypeError:
        return conn.cursor()


# ---- dispatch -------------------------------------------------------------------------------------------
def fetch(spec: DatasetSpec, previous: dict[str, Any], work: str | Path, *, force: bool = False,
          connect: Callable[[], Any] | None = None, fs: Any = None, storage_options: dict | None = None) -> Fetched:
    """Fetch ``spec``'s source into ``work`` unless it is unchanged since ``previous`` (the stored markers)."""
    work = Path(work)
    kind = spec.source.kind
    if kind == "http":
        return fetch_http(spec, previous, work, force=force)
    if kind == "file":
        return fetch_local(spec, previous, work, force=force)
    if kind in ("s3", "gs"):
        return fetch_object(spec, previous, work, force=force, fs=fs, storage_options=storage_options)
    if kind == "sql":
        if connect is None:
            raise DatasetError(f"dataset {spec.name}: a database source needs a connection", "internal")
        return fetch_sql(spec, previous, work, connect=connect, force=force)
    raise DatasetError(f"dataset {spec.name}: unknown source kind {kind}", "internal")


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)
