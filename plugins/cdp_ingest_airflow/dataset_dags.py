"""DAG factory for dataset syncs (SPEC §4): one DAG ``dataset_sync_<name>`` per dataset.

Datasets come from ``config/datasets.yaml`` (``$CDP_DATASETS``) and from the registry folder
``$CDP_DATASETS_DIR/registry/`` where the REST API writes one JSON file per dataset. Both are local file
reads: parsing opens no connection and touches neither the store nor the network, and a dataset created
through the API appears at the dag-processor's next parse of ``dags/dataset_sync.py`` (the API also parses
that file itself, so its first job can start at once). A registry file that cannot be read is skipped
and logged, never hiding the other datasets.

Each run is one *job* (job id = run id)::

    fetch (change detection + download) → transform → validate → load → finish

- ``fetch`` compares ETag / Last-Modified / content hash (files, URLs, buckets) or ``count``/``max`` of the
  watermark column (tables, queries) with the last successful sync; an unchanged source flows through the
  other tasks as a no-op and the job completes as *nothing changed*. The ``force`` param skips the check.
- raw targets load a new index and swap the alias atomically; mapped targets go through the pipeline.
- The job document (``<prefix>datasets-jobs``) is written by the tasks: ``importing`` when ``fetch`` starts,
  ``complete`` at ``finish``, ``failure`` with ``error_code`` / ``error_message`` from the failure callback
  once a task has no retries left. Source errors that a retry cannot fix (file not found, unreadable,
  bad query) fail at once; a source or store that is unavailable is retried with backoff.
- A deadline alert calls ``dataset_deadline_missed`` when a run is still going ``deadline_seconds`` after
  it was queued (default: the sync interval, at most 2 h, or 1 h without one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, Param, task

from cdp_ingest.datasets.spec import DatasetSpec, all_datasets, load_config, load_registry
from cdp_ingest_airflow.dag_base import ImportDAG
from cdp_ingest_airflow.defaults import DEFAULT_ARGS
from cdp_ingest_airflow.notify import WEBHOOK_CONN_ID, on_task_failure

if TYPE_CHECKING:
    from cdp_ingest.store import Store

log = logging.getLogger(__name__)

RETRYABLE_CODES = ("internal", "source_unavailable", "store_unavailable")


# ---- task bodies ---------------------------------------------------------------------------------------
def _store(spec: DatasetSpec) -> Store:
    from cdp_ingest_airflow.connections import store_from_connection

    return store_from_connection(spec.store_conn_id)


def _connect(spec: DatasetSpec):
    """A DB-API connection factory from the source's Airflow connection (any common-sql hook)."""
    from airflow.sdk import BaseHook

    def connect():
        return BaseHook.get_connection(str(spec.source.conn_id)).get_hook().get_conn()

    return connect


def _fs(spec: DatasetSpec):
    if spec.source.kind not in ("s3", "gs") or not spec.source.conn_id:
        return None
    from cdp_ingest_airflow.objectstore import object_path

    return object_path(str(spec.source.url), spec.source.conn_id).fs


def activity(spec: DatasetSpec, job_id: str, **fields: Any) -> None:
    """One step of this job on the import activity console (one entry per job; never raises)."""
    from cdp_ingest_airflow.activity import entry_id_for, record_activity

    record_activity(store_conn_id=spec.store_conn_id, source="dataset", unit=spec.name, account=spec.name,
                    entry_id=entry_id_for("dataset", spec.name, job_id), path=spec.source.describe(),
                    type=spec.target.kind, **fields)


def run_step(spec: DatasetSpec, job_id: str, step: str, fn, /, *args: Any, **kwargs: Any) -> Any:
    """Run one engine step; record its error on the job and fail at once when a retry cannot help."""
    from airflow.sdk.exceptions import AirflowFailException

    from cdp_ingest.datasets.sync import error_code, fail_job

    try:
        return fn(*args, **kwargs)
    except Exception as e:
        code = error_code(e)
        try:
            fail_job(_store(spec), spec.name, job_id, e, final=False)
        except Exception:  # the store may be what failed; the callback records the failure again
            log.warning("dataset %s: could not record the %s error of job %s", spec.name, step, job_id)
        if code not in RETRYABLE_CODES:
            text = str(e)
            raise AirflowFailException(text if text.startswith(f"[{code}]") else f"[{code}] {text}") from e
        raise


def dataset_task_failed(context: dict[str, Any], *, dataset: str, store_conn_id: str) -> None:
    """Task failure callback (no retries left): the job ends ``failure`` with the error code and message the
    task recorded (or the exception's), then the usual task-failed webhook."""
    from airflow.sdk.exceptions import AirflowFailException

    from cdp_ingest.datasets.state import DatasetIndex
    from cdp_ingest.datasets.sync import fail_job
    from cdp_ingest_airflow.connections import store_from_connection

    ti = context.get("task_instance") or context.get("ti")
    run_id = getattr(ti, "run_id", None)
    try:
        exc = context.get("exception") or RuntimeError("task failed")
        if isinstance(exc, AirflowFailException) and exc.__cause__ is not None:
            exc = exc.__cause__
        store = store_from_connection(store_conn_id)
        job = DatasetIndex(store).job(str(run_id)) or {}
        if job.get("error_code") and job.get("state") != "failure":
            from cdp_ingest.datasets.spec import DatasetError

            exc = DatasetError(job.get("error_message") or str(exc), job["error_code"])
        if job.get("state") != "failure":
            job = fail_job(store, dataset, str(run_id), exc)
        from cdp_ingest_airflow.activity import entry_id_for, record_activity

        record_activity(store_conn_id=store_conn_id, source="dataset", unit=dataset, account=dataset,
                        entry_id=entry_id_for("dataset", dataset, str(run_id)), status="failed",
                        error_code=job.get("error_code"), message=job.get("error_message"))
    except Exception:  # a callback must never raise
        log.exception("could not record the failure of dataset %s job %s", dataset, run_id)
    on_task_failure(context)


def dataset_run_failed(context: dict[str, Any], *, dataset: str, store_conn_id: str) -> None:
    """DAG-level safety net: a run that ended failed (timed out, stopped by hand) without a task recording it."""
    from cdp_ingest.datasets.spec import DatasetError
    from cdp_ingest.datasets.state import DatasetIndex
    from cdp_ingest.datasets.sync import fail_job
    from cdp_ingest_airflow.connections import store_from_connection

    run_id = getattr(context.get("dag_run"), "run_id", None)
    if not run_id:
        return
    try:
        store = store_from_connection(store_conn_id)
        job = DatasetIndex(store).job(run_id) or {}
        if job.get("state") not in ("failure", "complete"):
            fail_job(store, dataset, run_id, DatasetError(context.get("reason") or "the run ended before the sync "
                                                          "finished (timed out or stopped)", "run_failed"))
    except Exception:
        log.exception("could not record the failed run %s of dataset %s", run_id, dataset)


async def dataset_deadline_missed(context: dict[str, Any] | None = None, *, dataset: str, deadline_seconds: int,
                                  webhook_conn_id: str = WEBHOOK_CONN_ID) -> dict[str, Any]:
    """Deadline alert (runs in the triggerer): a sync is still running ``deadline_seconds`` after it was
    queued. Posts ``dataset-sync-late`` to the webhook connection (only logged when there is none)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from cdp_ingest_airflow.notify import send_to_connection

    run = (context or {}).get("dag_run") or {}
    payload = {"dataset": dataset, "dag_id": run.get("dag_id"), "run_id": run.get("run_id"),
               "state": run.get("state"), "deadline_seconds": deadline_seconds}
    log.warning("dataset %s: job %s still running %s s after it was queued", dataset, payload["run_id"],
                deadline_seconds)
    try:
        conn = await BaseHook.aget_connection(webhook_conn_id)
    except AirflowNotFoundException:
        return {**payload, "notified": False}
    await asyncio.to_thread(send_to_connection, conn, "dataset-sync-late", payload)
    return {**payload, "notified": True}


# ---- the DAG --------------------------------------------------------------------------------------------
def deadline_seconds(spec: DatasetSpec) -> int:
    explicit = spec.extra.get("deadline_seconds")
    if explicit:
        return int(explicit)
    return min(spec.sync_interval, 7200) if spec.sync_interval else 3600


def _incremental(spec: DatasetSpec) -> str:
    if not spec.watermark_column or spec.target.kind == "raw":
        return ""
    back = f", less {spec.watermark_lookback}" if spec.watermark_lookback else ""
    return (f"\nA sync reads the rows whose `{spec.watermark_column}` is at or above the last sync's maximum{back};"
            f" rows added below that window since are named in the job's reason.")


def _doc(spec: DatasetSpec) -> str:
    target = (f"a raw dataset: alias `<prefix>dataset-{spec.name}`, replaced atomically by every sync"
              if spec.target.kind == "raw" else f"**{spec.target.kind}s** through the mapping `{spec.target.mapping}`")
    every = f"every **{spec.sync_interval} s**" if spec.sync_interval else "on demand only (no sync_interval)"
    change = (f"`count(*)` and `max({spec.watermark_column})`" if spec.watermark_column else
              "ETag / Last-Modified / SHA-256 of the content" if not spec.source.is_sql else "SHA-256 of the result")
    return f"""### Dataset `{spec.name}`

{spec.description}

Source: `{spec.source.describe()}` ({spec.format or 'format from the name'}; declared in
{'the registry (REST API)' if spec.origin == 'api' else 'config/datasets.yaml'}). Target: {target}.
Synced {every}; an unchanged source ({change}) ends the job as *nothing changed*.{_incremental(spec)}

Each run is a job: `fetch → transform → validate → load → finish`. Param `force` re-imports even an
unchanged source. Jobs, state and error files: `cdp-ingest datasets jobs {spec.name}` or the REST API
`/cdp-datasets/api/jobs?dataset={spec.name}`. Rejected rows: `$CDP_DATASETS_DIR/errors/{spec.name}/`.
"""


def build_dag(spec: DatasetSpec) -> DAG:
    callback = functools.partial(dataset_task_failed, dataset=spec.name, store_conn_id=spec.store_conn_id)
    default_args = {**DEFAULT_ARGS, "on_failure_callback": callback}
    seconds = deadline_seconds(spec)
    start = datetime.fromisoformat(spec.created_at) if spec.created_at else datetime(2025, 1, 1)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if spec.origin == "api" and spec.created_at and spec.sync_interval:
        # the API triggers the first job itself; the schedule takes over one interval later
        start += timedelta(seconds=spec.sync_interval)
    with ImportDAG(
        dag_id=spec.dag_id,
        schedule=timedelta(seconds=spec.sync_interval) if spec.sync_interval else None,
        start_date=start,
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        tags=["cdp-ingest", "dataset", "sync", spec.source.kind, spec.target.kind],
        doc_md=_doc(spec),
        is_paused_upon_creation=False if spec.origin == "api" else None,
        dagrun_timeout=timedelta(hours=6),
        deadline=DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(seconds=seconds),
                               callback=AsyncCallback(dataset_deadline_missed, kwargs={
                                   "dataset": spec.name, "deadline_seconds": seconds}),
                               name=f"{spec.name}-synced-within-{seconds}s"),
        on_failure_callback=functools.partial(dataset_run_failed, dataset=spec.name,
                                              store_conn_id=spec.store_conn_id),
        params={"force": Param(False, type="boolean", description="Sync even when the source did not change")},
    ) as dag:

        # multiple_outputs=False: a returned dict is one XCom. Airflow infers multiple outputs from a dict return
        # annotation and would push each key as an XCom of its own too (an execution-API call and a row per key).
        @task(task_id="fetch", multiple_outputs=False)
        def fetch(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
            from cdp_ingest.datasets.sync import fetch_step

            force = bool((params or {}).get("force"))
            connect = _connect(spec) if spec.source.is_sql else None
            activity(spec, str(run_id), status="processing", step="fetch", note="forced" if force else None)
            got = run_step(spec, str(run_id), "fetch", fetch_step, spec, _store(spec), job_id=str(run_id),
                           force=force, dag_id=spec.dag_id, connect=connect, fs=_fs(spec))
            activity(spec, str(run_id), status="processing", step="fetched", note=got["reason"])
            return got

        @task(task_id="transform", multiple_outputs=False)
        def transform(fetched: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from cdp_ingest.datasets.sync import transform_step

            return run_step(spec, str(run_id), "transform", transform_step, spec, _store(spec), fetched,
                            job_id=str(run_id))

        @task(task_id="validate", multiple_outputs=False)
        def validate(staged: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from cdp_ingest.datasets.sync import validate_step

            return run_step(spec, str(run_id), "validate", validate_step, staged)

        @task(task_id="load", multiple_outputs=False)
        def load(staged: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from cdp_ingest.datasets.sync import load_step

            return run_step(spec, str(run_id), "load", load_step, spec, _store(spec), staged, job_id=str(run_id))

        @task(task_id="finish", multiple_outputs=False)
        def finish(fetched: dict[str, Any], loaded: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from cdp_ingest.datasets.sync import finish_step

            job = run_step(spec, str(run_id), "finish", finish_step, spec, _store(spec), fetched, loaded,
                           job_id=str(run_id))
            r = job.get("result") or {}
            activity(spec, str(run_id), status="done", note=job.get("reason"), rows_in=r.get("rows_in", 0),
                     loaded=r.get("loaded", 0), rejected=r.get("rejected", 0), duplicates=r.get("duplicates", 0),
                     error_file=r.get("error_file"))
            return {k: job.get(k) for k in ("job_id", "state", "changed", "reason", "result")}

        fetched = fetch()
        finish(fetched, load(validate(transform(fetched))))
    return dag


def build_all(config: str | None = None, registry: str | None = None) -> dict[str, DAG]:
    """Every dataset's DAG. An unreadable registry file is logged and skipped; an invalid
    config/datasets.yaml fails the DAG file (an import error in the UI), like the other families."""
    _, broken = load_registry(registry)
    for file_name, error in broken.items():
        log.error("dataset registry entry %s skipped: %s", file_name, error)
    load_config(config)  # raises on an invalid entry, with its message
    return {spec.dag_id: build_dag(spec) for spec in all_datasets(config, registry).values()}
