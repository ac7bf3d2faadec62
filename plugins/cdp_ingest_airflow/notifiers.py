"""Client notifications for SFTP imports (SPEC §2): email to the manifest's ``clientEmail`` and the webhook.

Four events, each sent once per uploaded manifest (the activity log remembers what was sent, so a
retried task does not repeat itself):

* ``picked_up`` — the manifest is valid, its data file was found, and the import starts;
* ``still_processing`` — sent every 2 hours while the import runs, by the DAG's deadline alerts
  (``still_processing`` below is their ``AsyncCallback``; Airflow 3 has no SLAs);
* ``succeeded`` — with the counts; when rows were rejected the error CSV is attached;
* ``failed`` — with the reason, what to do about it, and the error CSV when one exists.

Email goes through the smtp provider's ``SmtpHook`` on connection ``cdp_smtp``; the body is rendered
here (HTML-escaped), not by Jinja, so nothing from a client's file names can inject template code.
The webhook is ``notify.post_webhook`` (connection ``cdp_webhook``, bearer token) at
``/cdp-ingest/sftp-<event>``. A missing connection only logs. Messages contain file names, counts
and our own error messages, never row values; logs never contain the client's address.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import logging
import shutil
from pathlib import Path
from typing import Any

from cdp_ingest_airflow.notify import post_webhook

log = logging.getLogger(__name__)

SMTP_CONN_ID = "cdp_smtp"
WEBHOOK_CONN_ID = "cdp_webhook"
EVENTS = ("picked_up", "still_processing", "succeeded", "failed")
STILL_PROCESSING_EVERY_HOURS = 2
MAX_ATTACHMENT_BYTES = 10 << 20

HINTS = {
    "bad_manifest": "Correct the manifest and upload it again; as nothing was imported, the same manifest name "
                    "may be used again.",
    "no_data_file": "Upload the data file named in the manifest's fileName to the same folder first, then upload "
                    "the manifest again.",
    "manifest_reused": "Every manifest needs a name that was never used before: upload it again under a new name.",
    "too_large": "Split the data into files under the limit and upload each with its own manifest.",
    "unreadable": "Check that the data file is a UTF-8 CSV file with a header row, then upload it and its "
                  "manifest again.",
    "internal": "This was a problem on our side and was retried automatically. Upload the manifest again to "
                "retry; rows already imported will not be duplicated.",
}


# ---- content ------------------------------------------------------------------------------------------


def compose(event: str, entry: dict[str, Any], *, hours: int | None = None,
            attachment: str | None = None) -> tuple[str, str]:
    """``(subject, html body)`` for one notification about one activity entry."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}")
    e = html.escape
    manifest = entry.get("manifest") or "(unknown manifest)"
    data = entry.get("file_name") or "the data file"
    what = f"<b>{e(data)}</b> (manifest <b>{e(manifest)}</b>, account {e(str(entry.get('account')))})"
    lines: list[str]
    if event == "picked_up":
        subject = f"[cdp-ingest] {manifest}: picked up, importing {data}"
        lines = [f"We picked up {what} and started importing it as a {e(str(entry.get('type') or ''))} file.",
                 f"You will get an email when it is done, and one every {STILL_PROCESSING_EVERY_HOURS} hours "
                 "while it is still running."]
    elif event == "still_processing":
        subject = f"[cdp-ingest] {manifest}: still processing after {hours} h"
        lines = [f"{what} is still being imported ({hours} hours since it was picked up). No action is needed;",
                 "you will get an email when it is done."]
    elif event == "succeeded":
        rejected = entry.get("rejected") or 0
        if entry.get("already_imported"):
            subject = f"[cdp-ingest] {manifest}: nothing to import, {data} was already imported"
            lines = [f"{what}: this exact file was already imported before, so nothing was changed."]
        else:
            subject = (f"[cdp-ingest] {manifest}: imported, {entry.get('loaded') or 0} loaded, {rejected} rejected, "
                       f"{entry.get('duplicates') or 0} duplicates")
            lines = [f"{what} was imported.", _counts_table(entry)]
            if rejected:
                lines.append(_error_file_line(entry, attachment))
        if entry.get("archived_to"):
            lines.append(_archived_line(entry))
    else:
        code = entry.get("error_code") or "internal"
        message = entry.get("message") or "internal error"
        subject = f"[cdp-ingest] {manifest}: import failed ({code.replace('_', ' ')})"
        lines = [f"{what} could not be imported.", f"Reason: <b>{e(message)}</b> (code <code>{e(code)}</code>)",
                 e(HINTS.get(code, HINTS["internal"]))]
        if entry.get("rows_in"):
            lines.append(_counts_table(entry))
        if entry.get("error_file"):
            lines.append(_error_file_line(entry, attachment))
        if entry.get("archived_to"):
            lines.append(_archived_line(entry))
    body = "<html><body>" + "".join(f"<p>{line}</p>" for line in lines) + (
        f"<p style='color:#666'>Import {e(str(entry.get('id') or ''))} · cdp-ingest</p></body></html>")
    return subject, body


def _archived_line(entry: dict[str, Any]) -> str:
    """Where the files went, naming only those that really moved (``archived_files``): after a reused
    manifest name or a missing data file only the manifest moves, and the data file stays for the next
    manifest."""
    e = html.escape
    where = f"<code>{e(entry['archived_to'])}/</code> in your SFTP folder"
    moved = entry.get("archived_files")
    manifest, data = entry.get("manifest"), entry.get("file_name")
    if moved is None:  # entries finalised before archived_files was recorded
        return f"The files were moved to {where}."
    if data and data in moved:
        return f"The manifest and the data file <b>{e(data)}</b> were moved to {where}."
    if manifest in moved:
        if data and entry.get("error_code") != "no_data_file":
            return (f"Only the manifest was moved to {where}; the data file <b>{e(data)}</b> was not moved "
                    "and stays in the folder.")
        return f"Only the manifest was moved to {where}."
    return f"No file was moved (archive folder {where})."


def _counts_table(entry: dict[str, Any]) -> str:
    rows = [("Rows in the file", entry.get("rows_in")), ("Loaded", entry.get("loaded")),
            ("Rejected (see the error file)", entry.get("rejected")),
            ("Duplicates (already imported, skipped)", entry.get("duplicates"))]
    return "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td><b>{v or 0}</b></td></tr>" for k, v in rows) + \
        "</table>"


def _error_file_line(entry: dict[str, Any], attachment: str | None) -> str:
    where = html.escape(entry.get("error_file") or "")
    if attachment:
        return (f"The rejected rows are attached as <code>{html.escape(Path(attachment).name)}</code> (the original "
                f"columns plus a <i>Failure Description</i>) and are in <code>{where}</code> in your SFTP folder.")
    return f"The rejected rows (original columns plus a <i>Failure Description</i>) are in <code>{where}</code>."


def webhook_payload(event: str, entry: dict[str, Any], *, hours: int | None = None) -> dict[str, Any]:
    keys = ("account", "manifest", "file_name", "type", "status", "rows_in", "loaded", "rejected", "duplicates",
            "error_file", "error_code", "message", "dag_id", "run_id", "import_id", "archived_to", "archived_files",
            "already_imported")
    payload = {k: entry.get(k) for k in keys}
    payload["activity_id"] = entry.get("id")
    if hours is not None:
        payload["hours"] = hours
    return payload


def compose_wait_timed_out(entry: dict[str, Any]) -> tuple[str, str]:
    """``(subject, html body)`` when the folder watch timed out with a file still waiting: names the file
    (or manifest) and what is missing (its manifest, or the data file a manifest names)."""
    e = html.escape
    name = entry.get("manifest") or entry.get("file_name") or "a file"
    missing = entry.get("missing") or "its manifest"
    subject = f"[cdp-ingest] {name}: not imported yet, waiting for {missing}"
    since = str(entry.get("uploaded_at") or "")[:16].replace("T", " ")
    lines = [f"<b>{e(name)}</b> (account {e(str(entry.get('account')))}) has been in your SFTP folder since "
             f"{e(since)} UTC and is not imported yet: <b>{e(missing)}</b> is missing.",
             "Upload a .manifest naming the data file (fileName) to import it."
             if entry.get("status") == "waiting_for_manifest"
             else f"Upload {e(missing)} to the same folder; the manifest is imported once it is there."]
    return subject, "<html><body>" + "".join(f"<p>{line}</p>" for line in lines) + "</body></html>"


def attachable(path: str | None, max_bytes: int = MAX_ATTACHMENT_BYTES) -> str | None:
    """The error file to attach: as is, gzipped when too big, or None when even that is too big."""
    if not path or not Path(path).exists():
        return None
    p = Path(path)
    if p.stat().st_size <= max_bytes:
        return str(p)
    gz = p.with_name(p.name + ".gz")
    with open(p, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return str(gz) if gz.stat().st_size <= max_bytes else None


# ---- sending ------------------------------------------------------------------------------------------


def send_email(to: str, subject: str, body: str, *, files: list[str] | None = None,
               smtp_conn_id: str = SMTP_CONN_ID) -> bool:
    """Send through the smtp provider's hook; False when the connection is not configured."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(smtp_conn_id)
    except AirflowNotFoundException:
        log.info("no %s connection: email not sent", smtp_conn_id)
        return False
    with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
        hook.send_email_smtp(to=to, subject=subject, html_content=body, files=files or None)
    return True


def notify(event: str, entry: dict[str, Any], *, activity: Any = None, hours: int | None = None,
           error_file: str | None = None, fallback_email: str | None = None, smtp_conn_id: str = SMTP_CONN_ID,
           webhook_conn_id: str = WEBHOOK_CONN_ID) -> bool:
    """Email + webhook for ``event`` unless the activity log says it was already sent. Returns whether
    it was sent now. ``error_file`` is the local copy of the error CSV to attach."""
    key = event if hours is None else f"{event}:{hours}"
    if key in (entry.get("notified") or []):
        log.info("notification %s for %s already sent", key, entry.get("id"))
        return False
    attachment = attachable(error_file) if event in ("succeeded", "failed") else None
    subject, body = compose(event, entry, hours=hours, attachment=attachment)
    to = entry.get("client_email") or fallback_email
    if to:
        send_email(to, subject, body, files=[attachment] if attachment else None, smtp_conn_id=smtp_conn_id)
    else:
        log.warning("no recipient for the %s email of %s (manifest unreadable, no contact_email)", event,
                    entry.get("id"))
    post_webhook(f"sftp-{event.replace('_', '-')}", webhook_payload(event, entry, hours=hours),
                 conn_id=webhook_conn_id)
    if activity is not None and entry.get("id"):
        activity.mark_notified(entry["id"], key)
    log.info("sent %s notification for %s", key, entry.get("id"))
    return True


# ---- deadline alert callback ----------------------------------------------------------------------------


async def still_processing(context: dict[str, Any] | None = None, *, hours: int, store_conn_id: str = "cdp_opensearch",
                           smtp_conn_id: str = SMTP_CONN_ID, webhook_conn_id: str = WEBHOOK_CONN_ID) -> str:
    """``AsyncCallback`` of the "still processing" deadline alerts (runs in the triggerer).

    Airflow passes ``context={"dag_run": {...}, "deadline": {...}}``. The entry of the run is looked up
    in the activity log; only an import that is still picked up / processing is reported.
    """
    run = (context or {}).get("dag_run") or {}
    dag_id, run_id = run.get("dag_id"), run.get("dag_run_id") or run.get("run_id")
    if not dag_id or not run_id:
        return "no dag run in the callback context"
    return await asyncio.to_thread(_still_processing, dag_id, run_id, hours, store_conn_id, smtp_conn_id,
                                   webhook_conn_id)


def _still_processing(dag_id: str, run_id: str, hours: int, store_conn_id: str, smtp_conn_id: str,
                      webhook_conn_id: str) -> str:
    from cdp_ingest_airflow.activity import PICKED_UP, PROCESSING, ActivityLog
    from cdp_ingest_airflow.connections import store_from_connection

    activity = ActivityLog(store_from_connection(store_conn_id))
    entry = activity.by_run(dag_id, run_id)
    if entry is None or entry.get("status") not in (PICKED_UP, PROCESSING):
        return "nothing in progress"
    sent = notify("still_processing", entry, activity=activity, hours=hours, smtp_conn_id=smtp_conn_id,
                  webhook_conn_id=webhook_conn_id)
    return "sent" if sent else "already sent"


# ---- DAG-level failure callback --------------------------------------------------------------------------


def on_run_failure(context: dict[str, Any], *, store_conn_id: str = "cdp_opensearch", smtp_conn_id: str = SMTP_CONN_ID,
                   webhook_conn_id: str = WEBHOOK_CONN_ID, contact_email: str | None = None) -> None:
    """Safety net when a run ends failed without ``finalize`` reporting it (timed out, stopped by hand):
    the picked-up manifest is marked failed and the client told. A plain function, not a notifier
    (a ``BaseNotifier`` as DAG-level callback breaks ``dag.test()``)."""
    from cdp_ingest_airflow.activity import DONE, FAILED, ActivityLog
    from cdp_ingest_airflow.connections import store_from_connection

    dag_run = context.get("dag_run")
    dag_id, run_id = getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", None)
    if not dag_id or not run_id:
        return
    try:
        activity = ActivityLog(store_from_connection(store_conn_id))
        entry = activity.by_run(dag_id, run_id)
        if entry is None or entry.get("status") in (DONE, FAILED):
            return
        entry = activity.update(entry["id"], status=FAILED, error_code=entry.get("error_code") or "internal",
                                message=entry.get("message") or "the import run stopped before it finished "
                                "(timed out or stopped); the files were left in place")
        notify("failed", entry, activity=activity, fallback_email=contact_email, smtp_conn_id=smtp_conn_id,
               webhook_conn_id=webhook_conn_id)
    except Exception:  # a callback must never raise
        log.exception("could not report the failed run %s", run_id)
