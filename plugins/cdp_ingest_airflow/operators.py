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
            return {**staged, **entry.accounting.__dict__, "error_file": entry.error_file}
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
