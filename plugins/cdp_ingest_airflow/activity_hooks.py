"""Activity-log wiring shared by the DAG families: what the operators record, and the callbacks for
waits that end without a unit being picked up (a partition day whose ``_SUCCESS`` never came, an SFTP
data file whose manifest never came, a manifest whose data file never came).

Every function here only logs when the store is unreachable: the activity log is informative and must
never fail (or hide the failure of) an import.
"""

from __future__ import annotations

import logging
from typing import Any

from cdp_ingest_airflow.activity import (
    DONE,
    FAILED,
    PICKED_UP,
    PROCESSING,
    TIMED_OUT,
    WAITING,
    WAITING_FOR,
    ActivityLog,
    current_run_ids,
    entry_id_for,
    run_ids,
)

log = logging.getLogger(__name__)
MARKER = "_SUCCESS"


def _log(store_conn_id: str) -> ActivityLog:
    from cdp_ingest_airflow.connections import store_from_connection

    return ActivityLog(store_from_connection(store_conn_id))


def unit_ref(*, source: str, unit: str, account: str | None, entry_id: str, **more: Any) -> dict[str, Any]:
    """The small dict a staged result carries (``staged["activity"]``) so later tasks of the unit
    (``BulkIndexOperator``) record into the same entry."""
    return {"source": source, "unit": unit, "account": account, "entry_id": entry_id, **more}


def record_step(activity: ActivityLog, ref: dict[str, Any] | None, status: str, **fields: Any) -> None:
    """Record a step of the unit ``ref`` (from ``unit_ref``) with the running task's ids. A failed file of
    a partition day also marks the day failed (its roll-up would otherwise stay "picked up")."""
    if not ref:
        return
    ids = current_run_ids()
    activity.record_safely(**ref, status=status, **{**ids, **fields})
    if status == FAILED and ref.get("source") == "partition" and ref.get("day") and not ref.get("rollup"):
        unit = f"dt={ref['day']}"
        activity.record_safely(source="partition", unit=unit, account=ref.get("account"), day=ref["day"],
                               entry_id=entry_id_for("partition", ref.get("account"), unit), rollup=True,
                               status=FAILED, error_code=fields.get("error_code") or "file_failed",
                               message=f"{ref['unit']}: {fields.get('message') or 'failed'}",
                               step=f"file failed: {ref['unit'].rsplit('/', 1)[-1]}", **ids)


# ---- partitions: the day entry ------------------------------------------------------------------------
def day_ref(src_name: str, partition: dict[str, Any]) -> dict[str, Any]:
    unit = f"dt={partition['day']}"
    return unit_ref(source="partition", unit=unit, account=src_name, entry_id=entry_id_for("partition", src_name, unit),
                    day=partition["day"], path=partition["prefix"], rollup=True)


def partition_waiting(store_conn_id: str, src_name: str, partition: dict[str, Any]) -> None:
    """First poke without the marker: the day waits (recorded once, not on every poke)."""
    try:
        activity = _log(store_conn_id)
        ref = day_ref(src_name, partition)
        current = activity.get(ref["entry_id"]) or {}
        if current.get("status") == WAITING_FOR and current.get("run_id") == current_run_ids().get("run_id"):
            return
        record_step(activity, ref, WAITING_FOR, missing=MARKER, step="waiting for _SUCCESS",
                    note=f"waiting for {partition['marker']}")
    except Exception:
        log.warning("could not record the partition wait", exc_info=True)


def partition_day(store_conn_id: str, src_name: str, partition: dict[str, Any], status: str, **fields: Any) -> None:
    try:
        record_step(_log(store_conn_id), day_ref(src_name, partition), status, **fields)
    except Exception:
        log.warning("could not record the partition day", exc_info=True)


def partition_day_failed(context: dict[str, Any], *, source: str, store_conn_id: str = "cdp_opensearch",
                         webhook_conn_id: str = "cdp_webhook", timeout: float | None = None) -> None:
    """``on_failure_callback`` of ``wait_for_success`` / ``list_files``: the day was not picked up.

    A sensor timeout is recorded as ``timed_out`` with ``missing = _SUCCESS`` and posts
    ``partition-wait-timed-out`` to the webhook, naming the day and the missing marker."""
    from cdp_ingest_airflow.notify import post_webhook

    try:
        ti = context.get("ti") or context.get("task_instance")
        partition = ti.xcom_pull(task_ids="resolve_partition") if ti is not None else None
        if not partition:
            return
        exc = context.get("exception")
        ids = run_ids(context)
        timed_out = type(exc).__name__ == "AirflowSensorTimeout"
        waited = f" within {timeout / 3600:g} h" if timeout else ""
        if timed_out:
            message = (f"partition {source} day {partition['day']}: {partition['marker']} did not appear{waited}; "
                       f"the day was not imported (missing: {MARKER})")
        else:
            message = f"partition {source} day {partition['day']} was not picked up: {str(exc)[:500]}"
        activity = _log(store_conn_id)
        ref = day_ref(source, partition)
        activity.record_safely(**ref, status=TIMED_OUT if timed_out else FAILED, missing=MARKER,
                               error_code="wait_timed_out" if timed_out else "not_picked_up", message=message,
                               step="wait timed out" if timed_out else "failed before pickup", **ids)
        event = "partition-wait-timed-out" if timed_out else "partition-not-picked-up"
        payload = {"source": source, "day": partition["day"], "marker": partition["marker"], "missing": MARKER,
                   "prefix": partition["prefix"], "message": message, "dag_id": ids.get("dag_id"),
                   "run_id": ids.get("run_id"), "task_id": ids.get("task_id")}
        if post_webhook(event, payload, conn_id=webhook_conn_id):
            activity.record_safely(**ref, status=TIMED_OUT if timed_out else FAILED, notified=event,
                                   step="notified", note=f"webhook {event}")
    except Exception:  # a callback must never raise
        log.exception("could not report the partition day that was not picked up")


# ---- SFTP: waits that time out -----------------------------------------------------------------------------
def sftp_wait_timed_out(context: dict[str, Any], *, account: str, store_conn_id: str = "cdp_opensearch",
                        smtp_conn_id: str = "cdp_smtp", webhook_conn_id: str = "cdp_webhook",
                        contact_email: str | None = None) -> None:
    """``on_skipped_callback`` of ``wait_for_manifest`` (``soft_fail``: a timeout skips the run).

    Nothing waiting = nothing to say (an empty folder is normal). Otherwise each data file still
    waiting for its manifest, and a manifest whose data file is still missing, gets a timeline event
    naming what is missing, and one notification (webhook ``sftp-wait-timed-out``; e-mail to the
    account's ``contact_email`` when configured — the manifest's clientEmail is not known yet)."""
    from cdp_ingest_airflow.notifiers import compose_wait_timed_out, send_email
    from cdp_ingest_airflow.notify import post_webhook

    try:
        activity = _log(store_conn_id)
        ids = run_ids(context)
        pending = activity._search([{"term": {"account": account}},
                                    {"terms": {"status": [WAITING, WAITING_FOR, TIMED_OUT]}}], size=200)
        for entry in pending:
            missing = entry.get("missing") or ("a .manifest naming this file" if entry.get("status") == WAITING
                                               else "the data file")
            status = entry["status"] if entry["status"] == WAITING else TIMED_OUT
            note = f"wait for {missing} timed out (run {ids.get('run_id')})"
            entry = activity.update(entry["id"], status=status, missing=missing, step="wait timed out", note=note,
                                    **({"run_id": ids["run_id"]} if status == TIMED_OUT and ids.get("run_id") else {}))
            if "wait_timed_out" in (entry.get("notified") or []):
                continue
            subject, body = compose_wait_timed_out(entry)
            if contact_email:
                send_email(contact_email, subject, body, smtp_conn_id=smtp_conn_id)
            post_webhook("sftp-wait-timed-out", {
                "account": account, "activity_id": entry["id"], "file_name": entry.get("file_name"),
                "manifest": entry.get("manifest"), "missing": missing, "status": entry.get("status"),
                "uploaded_at": entry.get("uploaded_at"), "message": subject.removeprefix("[cdp-ingest] "),
                "dag_id": ids.get("dag_id"), "run_id": ids.get("run_id")}, conn_id=webhook_conn_id)
            activity.mark_notified(entry["id"], "wait_timed_out")
    except Exception:  # a callback must never raise
        log.exception("could not report the SFTP wait that timed out")


__all__ = ["DONE", "FAILED", "PICKED_UP", "PROCESSING", "day_ref", "partition_day", "partition_day_failed",
           "partition_waiting", "record_step", "sftp_wait_timed_out", "unit_ref"]


def validated(result: dict[str, Any], *, max_reject_ratio: float, store_conn_id: str) -> dict[str, Any]:
    """``validate_stage`` that records a refused unit (too many rejected rows, counts not adding up)."""
    from cdp_ingest_airflow.operators import validate_stage

    try:
        return validate_stage(result, max_reject_ratio=max_reject_ratio)
    except Exception as e:
        try:
            record_step(_log(store_conn_id), result.get("activity"), FAILED, step="validate",
                        error_code="validation", message=str(e))
        except Exception:
            log.warning("could not record the failed validation", exc_info=True)
        raise
