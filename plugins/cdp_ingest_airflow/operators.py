"""Operators: stage a source unit (transform + validate) and bulk-index a staged unit.

Data passes between tasks as staged files; XCom carries only the small result dicts below.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from cdp_ingest.store import Store

DEFAULT_STAGING = "/tmp/cdp-staging"


def staging_root() -> Path:
    return Path(os.environ.get("CDP_STAGING_DIR", DEFAULT_STAGING))


class _StoreMixin:
    store_conn_id: str
    index_prefix: str | None

    @cached_property
    def store(self) -> Store:
        from cdp_ingest_airflow.connections import store_from_connection

        return store_from_connection(self.store_conn_id, prefix=self.index_prefix)


class StageFileOperator(_StoreMixin, BaseOperator):
    """Fingerprint a local/landing file, open its ledger entry, map every row with a mapping file and
    stage accepted rows as Parquet, rejected rows as the error CSV.

    Returns ``{"status": "staged" | "skipped", "import_id", "unit_id", "path", "staged", "error_file",
    "rows_in", "accepted", "rejected", "columns", "kind"}``. A unit already committed is skipped.
    """

    template_fields: Sequence[str] = ("source_path", "mapping_path", "force")
    ui_color = "#e8f4fd"

    def __init__(self, *, source_path: str, mapping_path: str, store_conn_id: str = "cdp_opensearch",
                 index_prefix: str | None = None, account: str | None = None, force: bool | str = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_path = source_path
        self.mapping_path = mapping_path
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix
        self.account = account
        self.force = force

    def execute(self, context: Context) -> dict[str, Any]:
        from cdp_ingest.ledger import Ledger
        from cdp_ingest.mapping import Mapper, Mapping
        from cdp_ingest.pipeline import begin_unit, transform_unit
        from cdp_ingest.readers import read_batches, read_csv_header

        mapping = Mapping.load(self.mapping_path)
        self.store.ensure_templates()
        ledger = Ledger(self.store)
        force = str(self.force).lower() == "true"
        entry = begin_unit(ledger, self.source_path, kind=mapping.kind, source=f"file:{self.mapping_path}",
                           account=self.account, force=force)
        from cdp_ingest_airflow.activity_hooks import ActivityLog, record_step, unit_ref

        activity = ActivityLog(self.store)
        ref = unit_ref(source="csv", unit=Path(self.source_path).name, account=self.account,
                       entry_id=entry.import_id, path=self.source_path, type=mapping.kind,
                       import_id=entry.import_id, unit_id=entry.unit_id)
        base = {"import_id": entry.import_id, "unit_id": entry.unit_id, "path": self.source_path,
                "kind": mapping.kind, "activity": ref}
        if entry.committed:
            self.log.info("%s was already imported (%s): skipped", self.source_path, entry.import_id)
            record_step(activity, ref, "done", step="skipped", note=f"already imported by {entry.import_id}")
            return {**base, "status": "skipped", "rows_in": 0}
        record_step(activity, ref, "processing", step="transform")
        try:
            mapping.check_header(read_csv_header(self.source_path))
            work = staging_root() / entry.import_id
            now = context["logical_date"] or datetime.now(UTC)
            result = transform_unit(read_batches(self.source_path),
                                    Mapper(mapping, unit_key=entry.import_id, now=now).map_row,
                                    prefix=self.store.prefix, import_id=entry.import_id,
                                    staged_path=work / "staged.parquet", error_path=work / "transform-errors.csv",
                                    max_cell_bytes=self.store.max_cell_bytes, write_mode=mapping.write_mode)
            from cdp_ingest_airflow.staging import publish  # CDP_STAGING_URL: hand over through object storage

            result.staged = publish(result.staged, entry.import_id)
            result.error_file = publish(result.error_file, entry.import_id)
        except Exception as e:
            ledger.fail(entry, f"{e.__class__.__name__}: {e}")
            record_step(activity, ref, "failed", step="transform", error_code=getattr(e, "code", "internal"),
                        message=f"{e.__class__.__name__}: {e}")
            raise
        self.log.info("staged %s: rows_in=%s accepted=%s rejected=%s", self.source_path, result.rows_in,
                      result.accepted, result.rejected)
        record_step(activity, ref, "processing", step="staged", rows_in=result.rows_in, rejected=result.rejected)
        return {**base, **result.to_dict(), "status": "staged"}


def validate_stage(result: dict[str, Any], *, max_reject_ratio: float = 0.5) -> dict[str, Any]:
    """The validate step, on the staged file itself (its Parquet footer only, so it is cheap for any size):
    it is readable, its schema is ``pipeline.STAGE_SCHEMA``, it holds exactly the rows the transform
    accepted, rows_in = accepted + rejected, and the share of rejected rows is within ``max_reject_ratio``."""
    if result.get("status") == "skipped":
        return result
    import pyarrow.parquet as pq

    from cdp_ingest.pipeline import STAGE_SCHEMA

    path, staged = result["path"], result.get("staged")
    if result["rows_in"] != result["accepted"] + result["rejected"]:
        raise ValueError(f"{path}: rows_in={result['rows_in']} != accepted {result['accepted']} + "
                         f"rejected {result['rejected']}")
    from cdp_ingest_airflow.staging import open_staged

    try:
        if staged:
            with open_staged(staged) as fh:
                meta = pq.read_metadata(fh)
        else:
            meta = None
    except (OSError, ValueError) as e:  # missing, truncated or not Parquet (ArrowInvalid is a ValueError)
        raise ValueError(f"{path}: the staged file {staged} cannot be read: {e}") from e
    if meta is None:
        raise ValueError(f"{path}: the transform named no staged file")
    schema = meta.schema.to_arrow_schema()
    if not schema.equals(STAGE_SCHEMA, check_metadata=False):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise ValueError(f"{path}: the staged file {staged} does not have the stage schema (found {found})")
    if meta.num_rows != result["accepted"]:
        raise ValueError(f"{path}: the staged file {staged} holds {meta.num_rows} rows, but the transform "
                         f"accepted {result['accepted']}")
    if result["rows_in"] and result["rejected"] / result["rows_in"] > max_reject_ratio:
        raise ValueError(f"{result['path']}: {result['rejected']} of {result['rows_in']} rows rejected, above the "
                         f"{max_reject_ratio:.0%} limit; see {result['error_file']}")
    return result


class BulkIndexOperator(_StoreMixin, BaseOperator):
    """Load a staged unit into the store (bulk, bounded chunks, retries), merge the error files,
    check the accounting and commit the ledger entry. Returns the import report."""

    template_fields: Sequence[str] = ("staged",)
    ui_color = "#fdf0e8"

    def __init__(self, *, staged: dict[str, Any] | str, store_conn_id: str = "cdp_opensearch",
                 index_prefix: str | None = None, error_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged = staged
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix
        self.error_dir = error_dir

    def execute(self, context: Context) -> dict[str, Any]:
        from cdp_ingest.ledger import Ledger
        from cdp_ingest.pipeline import LoadResult, TransformResult, commit_unit, load_unit, merge_error_files

        staged = self.staged
        if isinstance(staged, str):
            import json

            staged = json.loads(staged)
        if staged.get("status") == "skipped":
            return {**staged, "loaded": 0, "rejected": 0, "duplicates": 0}
        ledger = Ledger(self.store)
        entry = ledger.get(staged["unit_id"])
        if entry is None or entry.import_id != staged["import_id"]:
            raise RuntimeError(f"ledger entry for {staged['path']} is missing or belongs to another import")
        from cdp_ingest_airflow.activity_hooks import ActivityLog, record_step

        activity = ActivityLog(self.store)
        ref = staged.get("activity")  # CSV and partition units; SFTP records per manifest in finalize
        if entry.committed:
            self.log.info("%s already committed by an earlier try", staged["path"])
            record_step(activity, ref, "done", step="committed", **entry.accounting.__dict__,
                        error_file=entry.error_file)
            return {**staged, "status": "committed", **entry.accounting.__dict__, "error_file": entry.error_file}
        record_step(activity, ref, "processing", step="load")
        from cdp_ingest_airflow.staging import fetch, is_remote, remove

        remote = is_remote(staged["staged"])
        work = staging_root() / entry.import_id if remote else Path(staged["staged"]).parent
        try:
            local_staged = fetch(staged["staged"], work)  # staged through object storage: a local copy first
            transform_errors = fetch(staged.get("error_file"), work)
            ld: LoadResult = load_unit(local_staged, self.store, import_id=entry.import_id,
                                       error_path=work / "load-errors.csv", columns=staged["columns"])
            final_dir = Path(self.error_dir) if self.error_dir else work
            error_file = merge_error_files(final_dir / f"{Path(staged['path']).stem}.{entry.import_id}.errors.csv",
                                           transform_errors, ld.error_file)
            t = TransformResult(staged["rows_in"], staged["accepted"], staged["rejected"], staged["staged"],
                                staged.get("error_file"), staged["columns"], [staged["kind"]])
            acc = commit_unit(ledger, entry, t, ld, error_file=error_file)
        except Exception as e:
            ledger.fail(entry, f"{e.__class__.__name__}: {e}")
            record_step(activity, ref, "failed", step="load", error_code=getattr(e, "code", "internal"),
                        message=f"{e.__class__.__name__}: {e}")
            raise
        Path(local_staged).unlink(missing_ok=True)
        if remote:
            remove(staged["staged"])
            remove(staged.get("error_file"))
        record_step(activity, ref, "done", step="committed", rows_in=acc.rows_in, loaded=acc.loaded,
                    rejected=acc.rejected, duplicates=acc.duplicates, error_file=error_file,
                    **({"updated": acc.updated} if acc.updated else {}))
        self.log.info("loaded %s: loaded=%s updated=%s rejected=%s duplicates=%s", staged["path"], acc.loaded,
                      acc.updated, acc.rejected, acc.duplicates)
        return {**staged, "status": "committed", "loaded": acc.loaded, "rejected": acc.rejected,
                "duplicates": acc.duplicates, "updated": acc.updated, "error_file": error_file,
                "indices": ld.indices}


# ---- CSV files split into chunks (csv_import_<name>) ------------------------------------------------------
# plan (per file: fingerprint + chunk plan + ledger entry) → stage (mapped per chunk) → validate (per file) →
# load (mapped per chunk; a file's chunks in order in one task where order matters) → commit (per file, once).
def _activity(store: Store):
    from cdp_ingest_airflow.activity_hooks import ActivityLog

    return ActivityLog(store)


def _chunk_note(chunk: dict[str, Any], n_chunks: int) -> str | None:
    return f"chunk {chunk['index'] + 1}/{n_chunks}" if n_chunks > 1 else None


def _max_map_length() -> int:
    from airflow.sdk.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)


class PlanCsvFilesOperator(_StoreMixin, BaseOperator):
    """Fingerprint each CSV file, open (or resume) its ledger entry and cut it into chunks of about
    ``chunk_mb`` MB (``cdp_ingest.chunks.plan_csv``: one pass over the file; ``CDP_CSV_CHUNK_MB`` overrides).
    Returns one descriptor per chunk to stage (Airflow maps only over a return value) and pushes one small
    dict per file as the XCom ``files`` (``status``: ``planned`` | ``skipped`` (already imported) |
    ``failed`` (unreadable header, ...)). Every chunk of a file shares its ``import_id``."""

    template_fields: Sequence[str] = ("source_paths", "mapping_path", "force", "chunk_mb")
    ui_color = "#e8f4fd"

    def __init__(self, *, source_paths: list[str] | str, mapping_path: str, chunk_mb: float | str | None = None,
                 store_conn_id: str = "cdp_opensearch", index_prefix: str | None = None, account: str | None = None,
                 force: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_paths = source_paths
        self.mapping_path = mapping_path
        self.chunk_mb = chunk_mb
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix
        self.account = account
        self.force = force

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from cdp_ingest.chunks import chunk_bytes_from, coarsen, fit_map_length, plan_csv
        from cdp_ingest.errors import FileLevelError
        from cdp_ingest.ledger import Ledger
        from cdp_ingest.mapping import Mapping
        from cdp_ingest.readers import read_csv_header
        from cdp_ingest_airflow.activity_hooks import record_step, unit_ref

        paths = self.source_paths
        if isinstance(paths, str):
            import json

            paths = json.loads(paths)
        chunk_bytes = chunk_bytes_from(self.chunk_mb)  # CDP_CSV_CHUNK_MB on the worker wins
        mapping = Mapping.load(self.mapping_path)
        self.store.ensure_templates()
        ledger, activity = Ledger(self.store), _activity(self.store)
        force = str(self.force).lower() == "true"
        files: list[dict[str, Any]] = []
        chunks: list[dict[str, Any]] = []
        planned: list[tuple[dict[str, Any], Any]] = []
        for path in paths:
            try:
                plan = plan_csv(path, chunk_bytes)
            except FileLevelError as e:  # listed, then gone (or unreadable) before it was read: no unit to begin
                self.log.warning("%s cannot be planned: %s", path, e.code)
                files.append({"path": path, "status": "failed", "message": str(e), "n_chunks": 0})
                continue
            entry = ledger.begin(plan.unit, kind=mapping.kind, source=f"file:{self.mapping_path}",
                                 account=self.account, force=force)
            ref = unit_ref(source="csv", unit=Path(path).name, account=self.account, entry_id=entry.import_id,
                           path=path, type=mapping.kind, import_id=entry.import_id, unit_id=entry.unit_id)
            n = len(plan.chunks)
            base = {"import_id": entry.import_id, "unit_id": entry.unit_id, "path": path, "kind": mapping.kind,
                    "activity": ref, "n_chunks": n}
            if entry.committed:
                self.log.info("%s was already imported (%s): skipped", path, entry.import_id)
                record_step(activity, ref, "done", step="skipped", note=f"already imported by {entry.import_id}")
                files.append({**base, "status": "skipped", "rows_in": 0})
                continue
            try:
                mapping.check_header(read_csv_header(path))
            except Exception as e:
                ledger.fail(entry, f"{e.__class__.__name__}: {e}")
                record_step(activity, ref, "failed", step="transform", error_code=getattr(e, "code", "internal"),
                            message=f"{e.__class__.__name__}: {e}")
                self.log.warning("%s cannot be imported: %s", path, e.__class__.__name__)
                files.append({**base, "status": "failed", "message": f"{e.__class__.__name__}: {e}"})
                continue
            files.append({**base, "status": "planned"})
            planned.append((files[-1], plan))
        # every chunk is a mapped task instance: all files together stay within Airflow's max_map_length
        fitted = fit_map_length([len(p.chunks) for _, p in planned], _max_map_length())
        for (f, plan), n in zip(planned, fitted, strict=True):
            cut = coarsen(plan.chunks, n)
            f["n_chunks"] = len(cut)
            if len(cut) > 1:  # shown on the file's activity entry; a one-chunk file's entry is as it always was
                f["activity"]["chunks"] = len(cut)
            note = f"{len(cut)} chunks of ~{plan.unit.size // len(cut):,} bytes" if len(cut) > 1 else plan.note
            record_step(activity, f["activity"], "processing", step="transform", note=note)
            self.log.info("%s: %s chunk(s)%s", f["path"], len(cut), f" ({plan.note})" if plan.note else "")
            chunks += [{**f, "chunk": c.to_dict(), "header_end": plan.header_end, "size": plan.unit.size}
                       for c in cut]
        context["ti"].xcom_push(key="files", value=files)
        return chunks


class StageChunkOperator(_StoreMixin, BaseOperator):
    """Transform one chunk of a planned CSV file: map its rows with the mapping file, stage accepted rows
    as Parquet and rejected rows as the chunk's error CSV (both handed over through ``CDP_STAGING_URL`` when
    it is set). Row numbers, ids and error rows are those of the whole file. Returns the chunk descriptor
    with the ``TransformResult`` counts and files."""

    template_fields: Sequence[str] = ("chunk", "mapping_path")
    ui_color = "#e8f4fd"

    def __init__(self, *, chunk: dict[str, Any], mapping_path: str, store_conn_id: str = "cdp_opensearch",
                 index_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.mapping_path = mapping_path
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix

    def execute(self, context: Context) -> dict[str, Any]:
        from cdp_ingest.chunks import transform_chunk
        from cdp_ingest.ledger import Ledger
        from cdp_ingest.mapping import Mapper, Mapping
        from cdp_ingest_airflow.activity_hooks import record_step
        from cdp_ingest_airflow.staging import publish

        d = self.chunk
        mapping = Mapping.load(self.mapping_path)
        import_id = d["import_id"]
        note = _chunk_note(d["chunk"], d["n_chunks"])
        try:
            now = context["logical_date"] or datetime.now(UTC)
            result = transform_chunk(d["path"], d["chunk"], Mapper(mapping, unit_key=import_id, now=now).map_row,
                                     header_end=d["header_end"], size=d["size"], prefix=self.store.prefix,
                                     import_id=import_id, work_dir=staging_root() / import_id,
                                     max_cell_bytes=self.store.max_cell_bytes, write_mode=mapping.write_mode)
            result.staged = publish(result.staged, import_id)
            result.error_file = publish(result.error_file, import_id)
        except Exception as e:
            ledger = Ledger(self.store)
            entry = ledger.get(d["unit_id"])
            if entry is not None and entry.import_id == import_id and not entry.committed:
                ledger.fail(entry, f"{note or 'transform'}: {e.__class__.__name__}: {e}")
            record_step(_activity(self.store), d.get("activity"), "failed", step="transform", note=note,
                        error_code=getattr(e, "code", "internal"), message=f"{e.__class__.__name__}: {e}")
            raise
        self.log.info("staged %s %s: rows_in=%s accepted=%s rejected=%s", d["path"], note or "", result.rows_in,
                      result.accepted, result.rejected)
        return {**d, **result.to_dict(), "status": "staged"}


def validate_chunks(staged: list[dict[str, Any]], *, max_reject_ratio: float, store_conn_id: str,
                    dry_run: bool = False) -> list[dict[str, Any]]:
    """The validate step of chunked CSV files: ``validate_stage`` on every chunk's staged file, then the
    share of rejected rows per *file* (summed over its chunks) against ``max_reject_ratio``. Records each
    file's ``staged`` step. Returns the load items: one per chunk for session/event files in ``create``
    mode (loaded in parallel), one per file (its chunks loaded in order) for profiles and ``overwrite``,
    where a later row must land after an earlier one."""
    from cdp_ingest_airflow.activity_hooks import _log, record_step

    by_file: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(staged, key=lambda s: (s["import_id"], s["chunk"]["index"])):
        by_file.setdefault(s["import_id"], []).append(s)
    activity = _log(store_conn_id)
    refused: list[str] = []
    items: list[dict[str, Any]] = []
    for parts in by_file.values():
        first = parts[0]
        rows_in, rejected = sum(p["rows_in"] for p in parts), sum(p["rejected"] for p in parts)
        try:
            for p in parts:
                validate_stage(p, max_reject_ratio=1.0)
            if len(parts) != first["n_chunks"]:
                raise ValueError(f"{first['path']}: {len(parts)} of {first['n_chunks']} chunks were staged")
            if rows_in and rejected / rows_in > max_reject_ratio:
                raise ValueError(f"{first['path']}: {rejected} of {rows_in} rows rejected, above the "
                                 f"{max_reject_ratio:.0%} limit; see the error file")
        except Exception as e:
            from cdp_ingest.ledger import Ledger

            ledger = Ledger(activity.store)
            entry = ledger.get(first["unit_id"])
            if entry is not None and entry.import_id == first["import_id"] and not entry.committed:
                ledger.fail(entry, str(e))
            record_step(activity, first.get("activity"), "failed", step="validate", error_code="validation",
                        message=str(e))
            refused.append(str(e))
            continue
        record_step(activity, first.get("activity"), "processing", step="staged", rows_in=rows_in, rejected=rejected,
                    note=f"{len(parts)} chunks" if len(parts) > 1 else None)
        ordered = first["kind"] == "profile" or any(p.get("write_mode") == "overwrite" for p in parts)
        groups = [parts] if ordered else [[p] for p in parts]
        for g in groups:
            items.append({k: first[k] for k in ("path", "import_id", "unit_id", "kind", "activity", "n_chunks")}
                         | {"chunks": [{k: p[k] for k in ("chunk", "staged", "error_file", "rows_in", "accepted",
                                                          "rejected", "columns")} for p in g]})
    if refused:
        raise ValueError("; ".join(refused))
    if dry_run:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"dry run: {len(by_file)} file(s) staged and validated, not loaded")
    return items


class LoadChunksOperator(_StoreMixin, BaseOperator):
    """Bulk-load the staged chunks of one load item (see ``validate_chunks``) in chunk order. Returns
    each chunk's load counts and files; the file is committed once, by ``CommitChunkedFilesOperator``.
    A retried chunk counts its earlier writes as loaded (the store knows them by import_id and row)."""

    template_fields: Sequence[str] = ("item",)
    ui_color = "#fdf0e8"

    def __init__(self, *, item: dict[str, Any], store_conn_id: str = "cdp_opensearch",
                 index_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix

    def execute(self, context: Context) -> dict[str, Any]:
        from cdp_ingest.ledger import Ledger
        from cdp_ingest.pipeline import load_unit
        from cdp_ingest_airflow.activity_hooks import record_step
        from cdp_ingest_airflow.staging import fetch, is_remote, publish

        item = self.item
        head = {k: item[k] for k in ("path", "import_id", "unit_id", "kind", "n_chunks")}
        ledger = Ledger(self.store)
        entry = ledger.get(item["unit_id"])
        if entry is None or entry.import_id != item["import_id"]:
            raise RuntimeError(f"ledger entry for {item['path']} is missing or belongs to another import")
        if entry.committed:
            self.log.info("%s already committed by an earlier try", item["path"])
            return {**head, "status": "committed", "chunks": []}
        activity = _activity(self.store)
        if any(c["chunk"]["index"] == 0 for c in item["chunks"]):  # one "load" step per file, not per chunk
            record_step(activity, item.get("activity"), "processing", step="load",
                        note=f"{item['n_chunks']} chunks" if item["n_chunks"] > 1 else None)
        work = staging_root() / item["import_id"]
        out = []
        for c in item["chunks"]:
            k = c["chunk"]["index"]
            try:
                local = fetch(c["staged"], work)
                ld = load_unit(local, self.store, import_id=item["import_id"],
                               error_path=work / f"load-errors-{k}.csv", columns=c["columns"])
                load_errors = publish(ld.error_file, item["import_id"])
            except Exception as e:
                note = _chunk_note(c["chunk"], item["n_chunks"])
                if not entry.committed:
                    ledger.fail(entry, f"{note or 'load'}: {e.__class__.__name__}: {e}")
                record_step(activity, item.get("activity"), "failed", step="load", note=note,
                            error_code=getattr(e, "code", "internal"), message=f"{e.__class__.__name__}: {e}")
                raise
            if is_remote(c["staged"]) and local:
                Path(local).unlink(missing_ok=True)
            self.log.info("loaded %s chunk %s: loaded=%s updated=%s failed=%s duplicates=%s", item["path"], k,
                          ld.loaded, ld.updated, ld.failed, ld.duplicates)
            out.append({"index": k, "rows_in": c["rows_in"], "rejected": c["rejected"], "loaded": ld.loaded,
                        "duplicates": ld.duplicates, "failed": ld.failed, "updated": ld.updated,
                        "transform_errors": c.get("error_file"), "load_errors": load_errors,
                        "staged": c["staged"], "indices": ld.indices})
        return {**head, "status": "loaded", "chunks": out}


class CommitChunkedFilesOperator(_StoreMixin, BaseOperator):
    """Commit every planned file whose chunks all loaded: sum the chunks' counts, merge their error CSVs
    into the file's one error CSV (``<error_dir>/<file>.<import_id>.errors.csv``), check the accounting and
    commit the ledger entry once; then drop the staged files. A file with a chunk that did not load is
    marked failed (it resumes under the same import_id next run). Runs when the loads are done, failed or
    not, so one file's failure does not hold back the others; fails itself if any file failed. Returns
    one result per file (``committed`` | ``skipped``) for the archive step. The files come as ``files`` or,
    in the DAG, from the XCom ``files`` of ``plan_task_id``."""

    template_fields: Sequence[str] = ("files", "loaded")
    ui_color = "#fdf0e8"

    def __init__(self, *, loaded: Any, files: list[dict[str, Any]] | str | None = None,
                 plan_task_id: str | None = None, store_conn_id: str = "cdp_opensearch",
                 index_prefix: str | None = None, error_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if (files is None) == (plan_task_id is None):
            raise ValueError("give either files or plan_task_id (whose XCom 'files' lists them)")
        self.files = files
        self.plan_task_id = plan_task_id
        self.loaded = loaded
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix
        self.error_dir = error_dir

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from cdp_ingest.chunks import ChunkOutcome
        from cdp_ingest_airflow.dag_base import mapped_outputs

        params = context.get("params") or {}
        if params.get("dry_run"):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("dry run: nothing was loaded, nothing to commit")
        files = self.files
        if self.plan_task_id is not None:  # pulled here: under all_done a plan that never ran has none
            files = context["ti"].xcom_pull(task_ids=self.plan_task_id, key="files")
            if files is None:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(f"{self.plan_task_id} did not run: nothing to commit")
        if isinstance(files, str):
            import json

            files = json.loads(files)
        outcomes: dict[str, list[ChunkOutcome]] = {}
        staged: dict[str, list[str]] = {}
        for r in mapped_outputs(self.loaded):
            for c in r.get("chunks", []):
                outcomes.setdefault(r["import_id"], []).append(ChunkOutcome(
                    c["index"], c["rows_in"], c["rejected"], c["loaded"], c["duplicates"], c["failed"],
                    c["updated"], c.get("transform_errors"), c.get("load_errors")))
                staged.setdefault(r["import_id"], []).append(c["staged"])
        results, failures = [], []
        for f in files or []:
            if f["status"] == "skipped":
                results.append(f)
            elif f["status"] == "failed":
                failures.append(f"{f['path']}: {f.get('message')}")
            else:
                try:
                    results.append(self._commit(f, outcomes.get(f["import_id"], []), staged.get(f["import_id"], [])))
                except Exception as e:
                    failures.append(f"{f['path']}: {e.__class__.__name__}: {e}")
        if failures:
            raise RuntimeError(f"{len(failures)} file(s) not imported: " + "; ".join(failures))
        return results

    def _commit(self, f: dict[str, Any], outcomes: list, staged: list[str]) -> dict[str, Any]:
        from cdp_ingest.chunks import file_accounting, merge_chunk_errors
        from cdp_ingest.ledger import Ledger
        from cdp_ingest_airflow.activity_hooks import record_step
        from cdp_ingest_airflow.staging import fetch, is_remote, remove

        ledger, activity = Ledger(self.store), _activity(self.store)
        entry = ledger.get(f["unit_id"])
        if entry is None or entry.import_id != f["import_id"]:
            raise RuntimeError(f"ledger entry for {f['path']} is missing or belongs to another import")
        if entry.committed:  # an earlier try of this task committed it
            acc = entry.accounting
            return {**f, "status": "committed", **acc.__dict__, "error_file": entry.error_file}
        work = staging_root() / entry.import_id
        handed_over = [p for o in outcomes for p in (o.transform_errors, o.load_errors) if is_remote(p)]
        try:
            acc = file_accounting(outcomes, f["n_chunks"])
            for o in outcomes:  # error CSVs handed over through CDP_STAGING_URL: local copies first
                o.transform_errors = fetch(o.transform_errors, work / "errors")
                o.load_errors = fetch(o.load_errors, work / "errors")
            final_dir = Path(self.error_dir) if self.error_dir else work
            error_file = merge_chunk_errors(final_dir / f"{Path(f['path']).stem}.{entry.import_id}.errors.csv",
                                            outcomes)
            ledger.commit(entry, acc, error_file=error_file, **({"chunks": f["n_chunks"]} if f["n_chunks"] > 1
                                                                 else {}))
        except Exception as e:
            incomplete = sorted(o.index for o in outcomes) != list(range(f["n_chunks"]))
            if not (incomplete and entry.status == "failed"):  # a failed stage/validate/load has said why
                ledger.fail(entry, f"{e.__class__.__name__}: {e}")
                record_step(activity, f.get("activity"), "failed", step="commit",
                            error_code=getattr(e, "code", "internal"), message=f"{e.__class__.__name__}: {e}")
            raise
        for location in [*staged, *handed_over]:
            remove(location)
        for o in outcomes:
            for part in (o.transform_errors, o.load_errors):
                if part and part != error_file and not is_remote(part):
                    Path(part).unlink(missing_ok=True)
        record_step(activity, f.get("activity"), "done", step="committed", rows_in=acc.rows_in, loaded=acc.loaded,
                    rejected=acc.rejected, duplicates=acc.duplicates, error_file=error_file,
                    **({"updated": acc.updated} if acc.updated else {}))
        self.log.info("committed %s (%s chunk(s)): loaded=%s updated=%s rejected=%s duplicates=%s", f["path"],
                      f["n_chunks"], acc.loaded, acc.updated, acc.rejected, acc.duplicates)
        return {**f, "status": "committed", "rows_in": acc.rows_in, "loaded": acc.loaded, "rejected": acc.rejected,
                "duplicates": acc.duplicates, "updated": acc.updated, "error_file": error_file}
