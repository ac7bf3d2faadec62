"""One dataset sync as steps — fetch → transform → validate → load → finish — run as Airflow tasks by the
``dataset_sync_<name>`` DAGs (XCom carries only the small dicts these return) or in one process by
``sync_dataset``.

- fetch: change detection + download (``sources.fetch``); an unchanged source ends the sync as
  *nothing changed* (the job completes with ``changed: false``).
- transform: raw targets serialise the typed rows (``raw.stage_raw``); mapped targets open a ledger entry
  and map every row with the §6 mapping through the pipeline's ``transform_unit``, exactly like a CSV import.
- validate: the counts add up and the share of rejected rows is under ``max_reject_ratio``.
- load: raw targets build a new index and swap the alias (``raw.load_raw``); mapped targets go through the
  pipeline's ``load_unit`` + ``commit_unit`` (accounting checked, ledger committed).
- finish: the new change markers become the dataset's state only now, so a failed sync is retried from
  the source next time; the job document ends ``complete``. ``fail_job`` records ``failure`` with a code.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp_ingest.datasets.raw import alias_indices, alias_name, load_raw, stage_raw
from cdp_ingest.datasets.sources import fetch
from cdp_ingest.datasets.spec import DatasetError, DatasetSpec, datasets_dir
from cdp_ingest.datasets.state import COMPLETE, FAILURE, IMPORTING, DatasetIndex, now_iso
from cdp_ingest.errors import AccountingError, FileLevelError, IngestError, MappingError, StoreError
from cdp_ingest.store import Store

log = logging.getLogger(__name__)

DEFAULT_MAX_REJECT_RATIO = 0.5


def error_code(exc: BaseException) -> str:
    """The stable code a job failure shows for ``exc``."""
    if isinstance(exc, FileLevelError | DatasetError):
        return exc.code
    if isinstance(exc, AccountingError):
        return "accounting_mismatch"
    if isinstance(exc, MappingError):
        return "bad_mapping"
    if isinstance(exc, StoreError):
        return "store_unavailable"
    if isinstance(exc, RejectRatioError):
        return "too_many_rejected_rows"
    return "internal"


def error_message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, FileLevelError | DatasetError) else str(exc)
    if not isinstance(exc, IngestError | RejectRatioError):
        text = f"{exc.__class__.__name__}: {text}"
    return text[:2000]


class RejectRatioError(ValueError):
    """Too many rows were rejected for the sync to be loaded."""


def work_dir(name: str, job_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
    return datasets_dir() / "work" / name / safe


def errors_dir(name: str) -> Path:
    return datasets_dir() / "errors" / name


# ---- steps ------------------------------------------------------------------------------------------------
def fetch_step(spec: DatasetSpec, store: Store, *, job_id: str, force: bool = False, dag_id: str | None = None,
               connect: Callable[[], Any] | None = None, fs: Any = None,
               storage_options: dict | None = None) -> dict[str, Any]:
    idx = DatasetIndex(store)
    idx.update_job(job_id, spec.name, state=IMPORTING, started=now_iso(), force=force, dag_id=dag_id or spec.dag_id,
                   run_id=job_id, error_code=None, error_message=None)
    previous = idx.state(spec.name).get("markers") or {}
    if spec.target.kind == "raw" and not alias_indices(store, alias_name(store.prefix, spec.name)):
        previous = {}  # never loaded (or its index was removed): whatever the markers say, load it
    work = work_dir(spec.name, job_id)
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)  # an earlier try's partial download
    got = fetch(spec, previous, work, force=force, connect=connect, fs=fs, storage_options=storage_options)
    log.info("dataset %s: %s", spec.name, got.reason)
    return {**got.to_dict(), "work": str(work), "force": force}


def transform_step(spec: DatasetSpec, store: Store, fetched: dict[str, Any], *, job_id: str,
                   now: datetime | None = None) -> dict[str, Any]:
    if not fetched["changed"]:
        return {"status": "unchanged"}
    work = Path(fetched["work"])
    path, fmt = fetched["path"], fetched["format"]
    if spec.target.kind == "raw":
        staged = stage_raw(path, fmt, staged_path=work / "staged.parquet", error_path=work / "transform-errors.csv",
                           id_column=spec.id_column, flavor=store.flavor)
        Path(path).unlink(missing_ok=True)
        return {"status": "staged", "target": "raw", **staged.to_dict()}

    from cdp_ingest.datasets.raw import text_batches
    from cdp_ingest.ledger import Ledger, SourceUnit
    from cdp_ingest.mapping import Mapper, Mapping
    from cdp_ingest.pipeline import transform_unit
    from cdp_ingest.readers import read_csv_header

    mapping = Mapping.load(str(spec.target.mapping))
    if fmt == "csv":
        mapping.check_header(read_csv_header(path))
    store.ensure_templates()
    ledger = Ledger(store)
    checksum = fetched["markers"].get("content_hash") or "none"
    unit = SourceUnit(f"dataset:{spec.name}:{spec.source.describe()}", int(fetched["size"] or 0), checksum)
    entry = ledger.begin(unit, kind=spec.target.kind, source=f"dataset:{spec.name}", account=spec.name,
                         force=bool(fetched.get("force")))
    base = {"target": spec.target.kind, "import_id": entry.import_id, "unit_id": entry.unit_id, "path": path,
            "kind": spec.target.kind}
    if entry.committed:
        log.info("dataset %s: this content was already imported by %s: skipped", spec.name, entry.import_id)
        return {**base, "status": "skipped", "rows_in": 0, "accepted": 0, "rejected": 0}
    try:
        result = transform_unit(text_batches(path, fmt), Mapper(mapping, unit_key=entry.import_id,
                                                                now=now or datetime.now(UTC)).map_row,
                                prefix=store.prefix, import_id=entry.import_id, staged_path=work / "staged.parquet",
                                error_path=work / "transform-errors.csv")
    except Exception as e:
        ledger.fail(entry, f"{e.__class__.__name__}: {e}")
        raise
    Path(path).unlink(missing_ok=True)
    return {**base, **result.to_dict(), "status": "staged"}


def validate_step(staged: dict[str, Any], *, max_reject_ratio: float = DEFAULT_MAX_REJECT_RATIO) -> dict[str, Any]:
    if staged.get("status") != "staged":
        return staged
    if staged["rows_in"] != staged["accepted"] + staged["rejected"]:
        raise AccountingError(f"rows_in={staged['rows_in']} != accepted {staged['accepted']} + rejected "
                              f"{staged['rejected']}")
    if staged["rows_in"] and staged["rejected"] / staged["rows_in"] > max_reject_ratio:
        raise RejectRatioError(f"{staged['rejected']} of {staged['rows_in']} rows rejected, above the "
                               f"{max_reject_ratio:.0%} limit; see {staged.get('error_file')}")
    return staged


def load_step(spec: DatasetSpec, store: Store, staged: dict[str, Any], *, job_id: str) -> dict[str, Any]:
    if staged.get("status") != "staged":
        return {"status": staged.get("status", "unchanged"), "rows_in": 0, "loaded": 0, "rejected": 0,
                "duplicates": 0}
    from cdp_ingest.pipeline import merge_error_files

    work = Path(staged["staged"]).parent
    safe_job = work.name
    final_errors = errors_dir(spec.name) / f"{safe_job}.errors.csv"
    if staged["target"] == "raw":
        raw = load_raw(store, spec.name, staged, version=int(time.time() * 1000),
                       error_path=work / "load-errors.csv")
        error_file = merge_error_files(final_errors, staged.get("error_file"), raw.error_file)
        Path(staged["staged"]).unlink(missing_ok=True)
        return {"status": "loaded", "rows_in": staged["rows_in"], "loaded": raw.loaded,
                "rejected": staged["rejected"] + raw.failed, "duplicates": raw.duplicates, "index": raw.index,
                "version": raw.version, "error_file": error_file}

    from cdp_ingest.ledger import Ledger
    from cdp_ingest.pipeline import TransformResult, commit_unit, load_unit

    ledger = Ledger(store)
    entry = ledger.get(staged["unit_id"])
    if entry is None or entry.import_id != staged["import_id"]:
        raise FileLevelError("internal", f"ledger entry {staged['unit_id']} is missing or belongs to another import")
    if entry.committed:  # an earlier try of this task committed it
        acc = entry.accounting
        return {"status": "loaded", **acc.__dict__, "error_file": entry.error_file}
    try:
        ld = load_unit(staged["staged"], store, import_id=entry.import_id, error_path=work / "load-errors.csv",
                       columns=staged["columns"])
        error_file = merge_error_files(final_errors, staged.get("error_file"), ld.error_file)
        t = TransformResult(staged["rows_in"], staged["accepted"], staged["rejected"], staged["staged"],
                            staged.get("error_file"), staged["columns"], [staged["kind"]])
        acc = commit_unit(ledger, entry, t, ld, error_file=error_file)
    except Exception as e:
        ledger.fail(entry, f"{e.__class__.__name__}: {e}")
        raise
    Path(staged["staged"]).unlink(missing_ok=True)
    return {"status": "loaded", "rows_in": acc.rows_in, "loaded": acc.loaded, "rejected": acc.rejected,
            "duplicates": acc.duplicates, "indices": ld.indices, "error_file": error_file}


def finish_step(spec: DatasetSpec, store: Store, fetched: dict[str, Any], loaded: dict[str, Any], *,
                job_id: str) -> dict[str, Any]:
    """Record the sync: new markers + time in the dataset state, the job ``complete``."""
    idx = DatasetIndex(store)
    now = now_iso()
    changed = bool(fetched["changed"])
    result = {k: loaded.get(k) for k in ("rows_in", "loaded", "rejected", "duplicates", "error_file", "index",
                                         "version") if loaded.get(k) is not None}
    fields: dict[str, Any] = {"last_sync": now, "last_status": COMPLETE, "last_job": job_id,
                              "last_changed": changed, "last_reason": fetched.get("reason"), "last_error": None}
    if changed:
        previous = idx.state(spec.name).get("markers") or {}
        markers = dict(fetched["markers"])
        if fetched.get("incremental"):  # the row count of the whole query, not of the increment
            markers.setdefault("row_count", previous.get("row_count"))
        fields.update(markers=markers, last_result=result, last_change=now)
        if "version" in result:
            fields["version"] = result["version"]
    else:
        prev = idx.state(spec.name).get("markers") or {}
        fields["markers"] = {**prev, **{k: v for k, v in fetched["markers"].items() if v is not None}}
    idx.update_state(spec.name, **fields)
    shutil.rmtree(fetched.get("work") or "/nonexistent", ignore_errors=True)
    return idx.update_job(job_id, spec.name, state=COMPLETE, finished=now, changed=changed,
                          reason=fetched.get("reason"), result=result)


def fail_job(store: Store, name: str, job_id: str, exc: BaseException, *, final: bool = True) -> dict[str, Any]:
    """Record a failure on the job (``final=False``: the task will be retried, the job stays importing)."""
    idx = DatasetIndex(store)
    code, message = error_code(exc), error_message(exc)
    if not final:
        return idx.update_job(job_id, name, error_code=code, error_message=message)
    idx.update_state(name, last_status=FAILURE, last_job=job_id, last_error={"code": code, "message": message},
                     last_sync_attempt=now_iso())
    return idx.update_job(job_id, name, state=FAILURE, finished=now_iso(), error_code=code, error_message=message)


def sync_dataset(spec: DatasetSpec, store: Store, *, job_id: str, force: bool = False,
                 connect: Callable[[], Any] | None = None, fs: Any = None, storage_options: dict | None = None,
                 max_reject_ratio: float = DEFAULT_MAX_REJECT_RATIO) -> dict[str, Any]:
    """Every step in this process; returns the job document (raises after recording a failure)."""
    try:
        fetched = fetch_step(spec, store, job_id=job_id, force=force, connect=connect, fs=fs,
                             storage_options=storage_options)
        staged = validate_step(transform_step(spec, store, fetched, job_id=job_id), max_reject_ratio=max_reject_ratio)
        loaded = load_step(spec, store, staged, job_id=job_id)
        return finish_step(spec, store, fetched, loaded, job_id=job_id)
    except Exception as e:
        fail_job(store, spec.name, job_id, e)
        shutil.rmtree(work_dir(spec.name, job_id), ignore_errors=True)
        raise


def delete_dataset(store: Store, name: str, *, keep_jobs: bool = False) -> dict[str, Any]:
    """Drop a dataset's data from the store: a raw dataset's alias and indices, its state (and jobs)."""
    from cdp_ingest.datasets.raw import drop_raw

    removed = drop_raw(store, name)
    idx = DatasetIndex(store)
    idx.delete_state(name)
    if not keep_jobs:
        idx.delete_jobs(name)
    shutil.rmtree(datasets_dir() / "work" / name, ignore_errors=True)
    return {"dataset": name, "removed_indices": removed}
