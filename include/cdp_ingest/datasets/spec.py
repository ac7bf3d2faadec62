"""Dataset declarations (SPEC §4): the model, its validation, config/datasets.yaml and the registry folder.

A dataset is a named source kept in sync with the store::

    name:            lowercase letters, digits and _ (DAG id ``dataset_sync_<name>``)
    source:          a local path (relative = under $CDP_LANDING_DIR), an http(s):// URL, an s3:// or gs:// URL
                     (CSV, JSON lines or Parquet, optionally .gz or .zip) — or a database table / SQL query
                     read through a connection:
                     ``{conn_id: cdp_postgres, table: public.orders}`` / ``{conn_id: ..., query: "select ..."}``
    format:          csv | jsonl | parquet (default: from the file name; database sources need none)
    target:          ``raw`` (an index ``<prefix>dataset-<name>`` with an inferred mapping, replaced atomically on
                     every sync) or ``{kind: profile|session|event, mapping: <§6 mapping file>}``
    sync_interval:   seconds between syncs, >= 900; none = imported once (and on force sync)
    watermark_column: database sources: change detection by ``count(*), max(column)``; for mapped targets
                     a sync reads only the rows at or above the last watermark (incremental; the rows at
                     it again, found by their ids as duplicates, or merged again into their profiles)
    watermark_lookback: mapped targets: read from this far below the last watermark (seconds for a
                     date/time column, the column's own units for a number), for rows committed late
    id_column:       raw targets: the column whose value becomes the document ``_id`` (default: row number)

Declared in ``config/datasets.yaml`` (``datasets: {name: {...}}``) or created through the REST API, which
writes one JSON file per dataset to the *registry folder* ``$CDP_DATASETS_DIR/registry/``. The DAG file reads
both at parse time: local file reads only (no store, no network), so parsing stays side-effect free, and
a dataset created through the API appears at the next parse without a restart or a file edit.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cdp_ingest.errors import IngestError

MIN_SYNC_INTERVAL = 900
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
FORMATS = ("csv", "jsonl", "parquet")
KINDS = ("profile", "session", "event")
FILE_SCHEMES = ("file", "http", "https", "s3", "gs")
MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"


class DatasetError(IngestError):
    """A dataset declaration is invalid, or a dataset operation cannot be done; ``code`` is stable."""

    def __init__(self, message: str, code: str = "invalid_dataset"):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


@dataclass(frozen=True)
class Source:
    kind: str  # file | http | s3 | gs | sql
    url: str | None = None  # path or URL for file kinds
    conn_id: str | None = None  # database connection (sql), or storage connection (s3 / gs)
    table: str | None = None
    query: str | None = None

    @property
    def is_sql(self) -> bool:
        return self.kind == "sql"

    def sql(self) -> str:
        """The query a sync runs (a table becomes ``SELECT * FROM "schema"."table"``)."""
        if self.query:
            return self.query.strip().rstrip(";")
        assert self.table
        quoted = ".".join('"' + p.replace('"', '""') + '"' for p in self.table.split("."))
        return f"SELECT * FROM {quoted}"  # noqa: S608 - the table name is validated and quoted

    def describe(self) -> str:
        if self.is_sql:
            return f"{self.conn_id}:{self.table or 'query'}"
        return str(self.url)


@dataclass(frozen=True)
class Target:
    kind: str  # raw | profile | session | event
    mapping: str | None = None  # absolute path of the mapping file for mapped kinds


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: Source
    target: Target
    format: str | None = None
    sync_interval: int | None = None
    watermark_column: str | None = None
    watermark_lookback: int | float | None = None  # mapped targets: read from this far below the last maximum
    id_column: str | None = None
    store_conn_id: str = "cdp_opensearch"
    description: str = ""
    origin: str = "config"  # config | api
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dag_id(self) -> str:
        return f"dataset_sync_{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The declaration in the form ``parse_spec`` accepts (what the registry file holds)."""
        src: dict[str, Any] = {"conn_id": self.source.conn_id} if self.source.conn_id else {}
        if self.source.is_sql:
            src.update({"table": self.source.table} if self.source.table else {"query": self.source.query})
        else:
            src["url"] = self.source.url
        target: Any = "raw" if self.target.kind == "raw" else {"kind": self.target.kind,
                                                                "mapping": self.target.mapping}
        out = {"source": src, "target": target, "format": self.format, "sync_interval": self.sync_interval,
               "watermark_column": self.watermark_column, "watermark_lookback": self.watermark_lookback,
               "id_column": self.id_column,
               "store_conn_id": self.store_conn_id, "description": self.description, "origin": self.origin,
               "created_at": self.created_at}
        return {"name": self.name, **{k: v for k, v in out.items() if v not in (None, "")}}


def check_sync_interval(value: Any) -> int | None:
    """``None`` or an int >= 900; anything else raises a ``DatasetError`` that says why."""
    if value is None or value == "":
        return None
    try:
        seconds = int(value)
        if isinstance(value, float | str) and float(value) != seconds:
            raise ValueError
    except (TypeError, ValueError):
        raise DatasetError(f"sync_interval must be a whole number of seconds, not {value!r}",
                           "invalid_sync_interval") from None
    if seconds < MIN_SYNC_INTERVAL:
        raise DatasetError(f"sync_interval must be at least {MIN_SYNC_INTERVAL} seconds (15 minutes); got {seconds}",
                           "invalid_sync_interval")
    return seconds


def _lookback(value: Any, name: str) -> int | float | None:
    """``watermark_lookback``: a number >= 0 (seconds for a date/time watermark, the column's own units for
    a number); numeric text is read as the number. None or 0: none."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise DatasetError(f"dataset {name}: watermark_lookback must be a number >= 0 (seconds for a date/time "
                           f"watermark, the column's own units for a number), not {value!r}") from None
    if number == 0:
        return None
    return int(number) if number.is_integer() else number


def _source(raw: Any, name: str) -> Source:
    if isinstance(raw, str | os.PathLike):
        raw = {"url": os.fspath(raw)}
    if not isinstance(raw, dict):
        raise DatasetError(f"dataset {name}: source must be a path, a URL or a mapping with url / table / query")
    url = raw.get("url") or raw.get("path")
    table, query, conn_id = raw.get("table"), raw.get("query"), raw.get("conn_id")
    if sum(bool(x) for x in (url, table, query)) != 1:
        raise DatasetError(f"dataset {name}: source needs exactly one of url (or path), table, query")
    if url:
        url = str(url)
        scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
        if scheme not in FILE_SCHEMES:
            raise DatasetError(f"dataset {name}: unsupported source scheme {scheme!r} "
                               f"(local path, http(s)://, s3://, gs://)")
        if scheme == "file":
            path = url.split("://", 1)[1] if "://" in url else url
            if ".." in Path(path).parts:
                raise DatasetError(f"dataset {name}: a local source path must not contain '..'")
            if not os.path.isabs(path):  # relative paths live in the landing folder, like CSV imports
                path = str(landing_root() / path)
            url = path
        return Source("http" if scheme == "https" else scheme, url=url, conn_id=conn_id)
    if not conn_id:
        raise DatasetError(f"dataset {name}: a table or query source needs conn_id (an Airflow connection)")
    if table and not TABLE_RE.match(str(table)):
        raise DatasetError(f"dataset {name}: table must be [schema.]name of letters, digits and _, not {table!r}")
    if query and not re.match(r"^\s*(select|with)\b", str(query), re.I):
        raise DatasetError(f"dataset {name}: query must be a SELECT (or WITH ... SELECT) statement")
    return Source("sql", conn_id=str(conn_id), table=table and str(table), query=query and str(query))


def _target(raw: Any, name: str, mappings_dir: Path) -> Target:
    if raw in (None, "raw"):
        return Target("raw")
    if not isinstance(raw, dict):  # (a list or a number raised AttributeError)
        raise DatasetError(f"dataset {name}: target must be 'raw' or {{kind: profile|session|event, mapping: FILE}}")
    kind, mapping = raw.get("kind"), raw.get("mapping")
    if kind == "raw":
        return Target("raw")
    if kind not in KINDS or not mapping:
        raise DatasetError(f"dataset {name}: target needs kind (profile, session or event) and a mapping file")
    path = Path(str(mapping))
    if not path.is_absolute():
        path = mappings_dir / path
    if not path.is_file():
        raise DatasetError(f"dataset {name}: mapping file {mapping} not found")
    from cdp_ingest.errors import MappingError
    from cdp_ingest.mapping import Mapping

    try:
        m = Mapping.load(path)
    except (MappingError, OSError) as e:
        raise DatasetError(f"dataset {name}: mapping {mapping}: {e}") from e
    if m.kind != kind:
        raise DatasetError(f"dataset {name}: mapping {mapping} maps {m.kind}s, but the target kind is {kind}")
    return Target(kind, str(path))


def parse_spec(name: str, cfg: dict[str, Any], *, mappings_dir: Path = MAPPINGS_DIR) -> DatasetSpec:
    """Validate one declaration (pure: reads at most the mapping file) and fill in defaults."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DatasetError(f"dataset name {name!r}: use 1-63 lowercase letters, digits and _ (starting with a "
                           f"letter or digit)", "invalid_name")
    if not isinstance(cfg, dict):
        raise DatasetError(f"dataset {name}: the declaration must be a mapping")
    known = {"name", "source", "target", "format", "sync_interval", "watermark_column", "watermark_lookback",
             "id_column", "store_conn_id", "description", "origin", "created_at"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise DatasetError(f"dataset {name}: unknown key(s) {', '.join(unknown)}")
    source = _source(cfg.get("source"), name)
    target = _target(cfg.get("target"), name, mappings_dir)
    if cfg.get("origin") == "api":
        _check_api_paths(name, source, target, mappings_dir)
    fmt = cfg.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"dataset {name}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not source.is_sql and fmt is None and format_of(str(source.url)) is None:
        raise DatasetError(f"dataset {name}: unsupported file type {source.url} (expected .csv, .jsonl, .json, "
                           f".ndjson or .parquet, optionally .gz or .zip); set format")
    wm, idc = cfg.get("watermark_column"), cfg.get("id_column")
    for label, col in (("watermark_column", wm), ("id_column", idc)):
        if col is not None and not COLUMN_RE.match(str(col)):
            raise DatasetError(f"dataset {name}: {label} must be a plain column name, not {col!r}")
    if wm and not source.is_sql:
        raise DatasetError(f"dataset {name}: watermark_column only applies to table/query sources "
                           f"(files are compared by ETag, Last-Modified and content hash)")
    lookback = _lookback(cfg.get("watermark_lookback"), name)
    if lookback is not None and not wm:
        raise DatasetError(f"dataset {name}: watermark_lookback needs a watermark_column")
    if lookback is not None and target.kind == "raw":
        raise DatasetError(f"dataset {name}: watermark_lookback applies to mapped targets (a raw dataset is read "
                           f"whole at every change)")
    return DatasetSpec(name=name, source=source, target=target,
                       format=fmt, sync_interval=check_sync_interval(cfg.get("sync_interval")),
                       watermark_column=wm, watermark_lookback=lookback, id_column=idc,
                       store_conn_id=str(cfg.get("store_conn_id") or "cdp_opensearch"),
                       description=str(cfg.get("description") or ""), origin=str(cfg.get("origin") or "config"),
                       created_at=cfg.get("created_at"))


def landing_root() -> Path:
    return Path(os.environ.get("CDP_LANDING_DIR", "/tmp/landing"))


def _inside(path: str | Path, root: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _check_api_paths(name: str, source: Source, target: Target, mappings_dir: Path) -> None:
    """Datasets created through the REST API may read local files only inside the landing folder, and
    mapping files only from the project's mappings folder or the landing folder: an API user must not
    be able to import /etc/passwd or a worker's secrets into the store (SPEC §7, no path traversal)."""
    if source.kind == "file" and not _inside(str(source.url), landing_root()):
        raise DatasetError(f"dataset {name}: a local source created through the API must be a path inside the "
                           f"landing folder (give it relative to $CDP_LANDING_DIR)", "forbidden_path")
    if target.mapping and not (_inside(target.mapping, mappings_dir) or _inside(target.mapping, landing_root())):
        raise DatasetError(f"dataset {name}: a mapping file given through the API must be one of the project's "
                           f"mappings or inside the landing folder", "forbidden_path")


_SUFFIXES = {"csv": "csv", "parquet": "parquet", "parq": "parquet", "pq": "parquet", "json": "jsonl",
             "jsonl": "jsonl", "ndjson": "jsonl"}


def format_of(url: str) -> str | None:
    """The format a file name says (``.gz`` / ``.zip`` ignored), or None. (Not ``readers.detect_format``:
    this runs at DAG parse time, where pyarrow must not be imported.)"""
    base = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()
    for wrapper in (".gz", ".zip"):
        base = base.removesuffix(wrapper)
    _, dot, ext = base.rpartition(".")
    return _SUFFIXES.get(ext) if dot else None


# ---- where declarations live ------------------------------------------------------------------------
def config_path() -> Path:
    root = Path(__file__).resolve().parents[3]
    return Path(os.environ.get("CDP_DATASETS", root / "config" / "datasets.yaml"))


def datasets_dir() -> Path:
    return Path(os.environ.get("CDP_DATASETS_DIR") or Path(os.environ.get("CDP_LANDING_DIR", "/tmp")) / "datasets")


def registry_dir() -> Path:
    return datasets_dir() / "registry"


def load_config(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """Datasets of ``config/datasets.yaml`` (a missing file declares none). Any invalid entry fails the load."""
    p = Path(path or config_path())
    if not p.exists():
        return {}
    raw = yaml.safe_load(p.read_text()) or {}
    entries = raw.get("datasets") or {}
    if not isinstance(entries, dict):
        raise DatasetError(f"{p}: 'datasets' must map names to declarations")
    return {name: parse_spec(name, cfg or {}) for name, cfg in entries.items()}


def load_registry(folder: str | Path | None = None) -> tuple[dict[str, DatasetSpec], dict[str, str]]:
    """Datasets created through the API (one JSON file each) and the files that could not be read,
    so one broken entry never hides the others."""
    d = Path(folder or registry_dir())
    specs: dict[str, DatasetSpec] = {}
    errors: dict[str, str] = {}
    if not d.is_dir():
        return specs, errors
    for f in sorted(d.glob("*.json")):
        try:
            raw = json.loads(f.read_text())
            specs[f.stem] = parse_spec(f.stem, {**raw, "origin": "api"})
        except (OSError, ValueError, DatasetError) as e:
            errors[f.name] = str(e)
    return specs, errors


def all_datasets(config: str | Path | None = None, registry: str | Path | None = None) -> dict[str, DatasetSpec]:
    """config/datasets.yaml plus the registry; a name declared in the config wins over the registry."""
    found, _ = load_registry(registry)
    found.update(load_config(config))
    return found


def write_registry_entry(spec: DatasetSpec, folder: str | Path | None = None) -> Path:
    d = Path(folder or registry_dir())
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{spec.name}.json"
    tmp = d / f".{spec.name}.json.partial"
    tmp.write_text(json.dumps({k: v for k, v in spec.to_dict().items() if k != "name"}, indent=2, default=str))
    os.replace(tmp, path)
    return path


def remove_registry_entry(name: str, folder: str | Path | None = None) -> bool:
    path = Path(folder or registry_dir()) / f"{name}.json"
    if path.exists():
        path.unlink()
        return True
    return False


def spec_dict(spec: DatasetSpec) -> dict[str, Any]:
    return asdict(spec)
