"""The import activity log (SPEC §2): what happened to every uploaded file, for clients' operators.

``ActivityLog`` keeps one document per uploaded manifest (and one per data file still waiting for
its manifest) in ``<prefix>sftp-activity``, next to the import ledger in the store, so every worker
and the api-server see the same log. Statuses: ``waiting_for_manifest`` → ``picked_up`` →
``processing`` → ``done`` | ``failed``. An entry links to its ledger entry (``unit_id``/``import_id``),
carries the counts (rows_in, loaded, rejected, duplicates), timings, the remote error-file path and
which notifications were sent (so a retried task never sends one twice). It also answers "was this
manifest name used before?": a name is *used* once an import under it is done.

``create_app`` builds the FastAPI app the ``activity_log_plugin`` mounts in the Airflow api-server:
an HTML page and a JSON endpoint listing these entries plus the plain ledger entries of the other
sources, and a download of an entry's error CSV (fetched from the account's SFTP ``errors/`` folder).
Every route requires an authenticated Airflow user allowed to read DAG runs; the error file (it holds
customer rows) additionally requires access to the runs of the entry's own DAG.

The class needs only a ``Store``; FastAPI and Airflow are imported inside ``create_app``.
"""

# No "from __future__ import annotations": FastAPI must see the real types of the route parameters
# (they are imported inside create_app, where string annotations could not be resolved).

import html
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cdp_ingest.documents import iso

if TYPE_CHECKING:
    from cdp_ingest.sftp_rows import RemoteFile
    from cdp_ingest.store import Store

log = logging.getLogger(__name__)

WAITING, PICKED_UP, PROCESSING, DONE, FAILED = "waiting_for_manifest", "picked_up", "processing", "done", "failed"
STATUSES = (WAITING, PICKED_UP, PROCESSING, DONE, FAILED)
STATUS_LABELS = {WAITING: "waiting for manifest", PICKED_UP: "picked up", PROCESSING: "processing", DONE: "done",
                 FAILED: "failed"}
LEDGER_STATUS = {"loading": PROCESSING, "committed": DONE, "failed": FAILED}
COUNTS = ("rows_in", "loaded", "rejected", "duplicates")
# Fields never shown by the plugin (the client's contact address is only used for notifications).
PRIVATE_FIELDS = ("client_email",)

_KW = {"type": "keyword"}
_DATE = {"type": "date", "format": "strict_date_optional_time||epoch_second"}
_LONG = {"type": "long"}
ACTIVITY_MAPPING = {
    "dynamic": False,
    "properties": {
        "id": _KW, "account": _KW, "folder": _KW, "manifest": _KW, "file_name": _KW, "type": _KW, "status": _KW,
        "uploaded_at": _DATE, "picked_up_at": _DATE, "started_at": _DATE, "finished_at": _DATE, "updated_at": _DATE,
        "seconds": {"type": "double"}, "size": _LONG, **{c: _LONG for c in COUNTS},
        "error_file": _KW, "error_code": _KW, "import_id": _KW, "unit_id": _KW, "dag_id": _KW, "run_id": _KW,
        "notified": _KW,
    },
}


def _now() -> datetime:
    return datetime.now(UTC)


class ActivityLog:
    def __init__(self, store: "Store"):
        self.store = store
        self.index = f"{store.prefix}sftp-activity"
        self._ready = False

    # ---- index ---------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the index with its mapping once (a concurrent creator's 400 is fine)."""
        if self._ready:
            return
        if self.store._request("HEAD", f"/{self.index}", ok_statuses=(404,)) is True:
            self._ready = True
            return
        self.store._request("PUT", f"/{self.index}", body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": ACTIVITY_MAPPING},
            ok_statuses=(400,))
        self._ready = True

    # ---- single entries ------------------------------------------------------------------------------
    def get(self, entry_id: str) -> dict[str, Any] | None:
        found = self.store.get(self.index, entry_id)
        return found["_source"] if found else None

    def put(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.ensure()
        entry["updated_at"] = iso(_now())
        self.store._request("PUT", f"/{self.index}/_doc/{entry['id']}", body=entry, params={"refresh": "true"})
        return entry

    def update(self, entry_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into an entry (created if missing) and return the result."""
        self.ensure()
        entry = self.get(entry_id) or {"id": entry_id}
        entry.update(fields)
        return self.put(entry)

    def mark_notified(self, entry_id: str, event: str) -> None:
        entry = self.get(entry_id) or {"id": entry_id}
        sent = list(entry.get("notified") or [])
        if event not in sent:
            sent.append(event)
            self.update(entry_id, notified=sent)

    # ---- queries -------------------------------------------------------------------------------------
    def _search(self, filters: list[dict], *, size: int = 100, must_not: list[dict] | None = None,
                sort: list | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"size": size, "query": {"bool": {"filter": filters, "must_not": must_not or []}}}
        if sort:
            body["sort"] = sort
        resp = self.store._request("POST", f"/{self.index}/_search", body=body, ok_statuses=(404,))
        return [h["_source"] for h in (resp or {}).get("hits", {}).get("hits", [])]

    def used_manifest(self, account: str, manifest: str, *, exclude_id: str) -> dict[str, Any] | None:
        """The done import that already used this manifest name in this account, if any."""
        hits = self._search([{"term": {"account": account}}, {"term": {"manifest": manifest}},
                             {"term": {"status": DONE}}], size=1, must_not=[{"ids": {"values": [exclude_id]}}])
        return hits[0] if hits else None

    def by_run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        hits = self._search([{"term": {"dag_id": dag_id}}, {"term": {"run_id": run_id}}],
                            size=1, must_not=[{"term": {"status": WAITING}}])
        return hits[0] if hits else None

    def list(self, *, limit: int = 100, account: str | None = None, status: str | None = None) -> list[dict]:
        filters: list[dict] = []
        if account:
            filters.append({"term": {"account": account}})
        if status:
            filters.append({"term": {"status": status}})
        return self._search(filters, size=limit, sort=[{"updated_at": {"order": "desc", "unmapped_type": "date"}}])

    # ---- data files waiting for their manifest -------------------------------------------------------
    def sync_waiting(self, account: str, files: Iterable["RemoteFile"], *, dag_id: str | None = None) -> None:
        """Make the ``waiting_for_manifest`` entries of ``account`` match the files seen now."""
        from cdp_ingest.sftp_rows import waiting_id

        self.ensure()
        wanted = {waiting_id(account, f): f for f in files}
        existing = {e["id"] for e in self._search([{"term": {"account": account}}, {"term": {"status": WAITING}}],
                                                  size=1000)}
        for stale in existing - set(wanted):
            self._delete(stale)
        for entry_id in set(wanted) - existing:
            f = wanted[entry_id]
            self.put({"id": entry_id, "account": account, "file_name": f.name, "size": f.size, "status": WAITING,
                      "uploaded_at": iso(datetime.fromtimestamp(f.mtime, UTC)), "dag_id": dag_id})

    def clear_waiting(self, account: str, file_name: str) -> None:
        """The file's manifest arrived: drop its waiting entry (search + delete: the store may lack the
        reindex module that serves _delete_by_query)."""
        self.ensure()
        for e in self._search([{"term": {"account": account}}, {"term": {"file_name": file_name}},
                               {"term": {"status": WAITING}}], size=100):
            self._delete(e["id"])

    def _delete(self, entry_id: str) -> None:
        self.store._request("DELETE", f"/{self.index}/_doc/{entry_id}", params={"refresh": "true"},
                            ok_statuses=(404,))


# ------------------------------------------------------------------------------------------------ views


def view_entries(store: "Store", *, limit: int = 200, account: str | None = None,
                 status: str | None = None) -> list[dict[str, Any]]:
    """SFTP activity plus the ledger entries of every other source, newest first, in one shape."""
    from cdp_ingest.ledger import Ledger

    if status and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    rows = [_public(e, "sftp") for e in ActivityLog(store).list(limit=limit, account=account, status=status)]
    ledger_status = {v: k for k, v in LEDGER_STATUS.items()}.get(status) if status else None
    if not status or ledger_status:
        for e in Ledger(store).list(limit=limit, account=account, status=ledger_status):
            if e.source.startswith("sftp:"):
                continue  # already shown through its activity entry
            rows.append({"id": e.unit_id, "source": e.source, "account": e.account, "manifest": None,
                         "file_name": e.path, "type": e.kind, "status": LEDGER_STATUS.get(e.status, e.status),
                         "uploaded_at": None, "picked_up_at": None, "started_at": e.started,
                         "finished_at": e.finished, "seconds": _seconds(e.started, e.finished),
                         **{c: getattr(e, c) for c in COUNTS}, "error_file": e.error_file, "error_code": None,
                         "message": e.message, "import_id": e.import_id, "dag_id": None, "run_id": None})
    rows.sort(key=lambda r: r.get("finished_at") or r.get("started_at") or r.get("picked_up_at")
              or r.get("uploaded_at") or "", reverse=True)
    return rows[:limit]


def _public(entry: dict[str, Any], source: str) -> dict[str, Any]:
    row = {k: v for k, v in entry.items() if k not in PRIVATE_FIELDS}
    row["source"] = source
    for c in COUNTS:
        row.setdefault(c, None)
    return row


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)
    except ValueError:
        return None


def render_html(rows: list[dict[str, Any]], *, base: str = "") -> str:
    """The activity page: a plain table (it is shown inside the Airflow UI)."""
    e = html.escape
    head = ("When", "Account", "File", "Manifest", "Type", "Status", "Rows in", "Loaded", "Rejected",
            "Duplicates", "Took", "Error file", "Message")
    body = []
    for r in rows:
        when = r.get("finished_at") or r.get("started_at") or r.get("picked_up_at") or r.get("uploaded_at") or ""
        link = ""
        if r.get("error_file") and r.get("source") == "sftp":
            link = f'<a href="{e(base)}api/activity/{e(r["id"])}/error-file">{e(r["error_file"])}</a>'
        elif r.get("error_file"):
            link = e(str(r["error_file"]))
        took = f"{r['seconds']:.1f} s" if isinstance(r.get("seconds"), int | float) else ""
        status = r.get("status") or ""
        cells = [e(str(when)[:19].replace("T", " ")), e(str(r.get("account") or "")),
                 e(str(r.get("file_name") or "")), e(str(r.get("manifest") or "")), e(str(r.get("type") or "")),
                 f'<span class="s-{e(status)}">{e(STATUS_LABELS.get(status, status))}</span>',
                 *(e("" if r.get(c) is None else str(r[c])) for c in COUNTS), e(took), link,
                 e(str(r.get("message") or ""))]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(head)}">No imports yet.</td></tr>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Import activity</title>
<meta http-equiv="refresh" content="60">
<style>
body{{font-family:system-ui,sans-serif;margin:1rem;font-size:14px}}
table{{border-collapse:collapse;width:100%}} th,td{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}
th{{background:#f4f4f4}} .s-done{{color:#1a7f37}} .s-failed{{color:#cf222e;font-weight:600}}
.s-processing,.s-picked_up{{color:#0969da}} .s-waiting_for_manifest{{color:#9a6700}}
</style></head><body>
<h2>Import activity</h2>
<p>Every uploaded file: waiting for manifest, picked up, processing, done or failed, with its counts.
JSON: <a href="{e(base)}api/activity">{e(base)}api/activity</a></p>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>{"".join(body)}</tbody></table></body></html>"""


def create_app(*, store_conn_id: str = "cdp_opensearch"):
    """The FastAPI app mounted by the plugin. Every route depends on Airflow's auth."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, StreamingResponse

    can_read_runs = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
    app = FastAPI(title="cdp-ingest import activity", dependencies=[can_read_runs])

    def store() -> "Store":
        from cdp_ingest_airflow.connections import store_from_connection

        return store_from_connection(store_conn_id)

    def visible(rows: list[dict[str, Any]], user: Any) -> list[dict[str, Any]]:
        from airflow.api_fastapi.app import get_auth_manager

        dag_ids = {r["dag_id"] for r in rows if r.get("dag_id")}
        if not dag_ids:
            return rows
        allowed = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
        return [r for r in rows if not r.get("dag_id") or r["dag_id"] in allowed]

    def load(user: Any, limit: int, account: str | None, status: str | None) -> list[dict[str, Any]]:
        try:
            rows = view_entries(store(), limit=limit, account=account, status=status)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        return visible(rows, user)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user: GetUserDep, limit: int = Query(200, ge=1, le=1000),
             account: str | None = None, status: str | None = None) -> HTMLResponse:
        base = str(request.url.path)
        base = base if base.endswith("/") else base + "/"
        return HTMLResponse(render_html(load(user, limit, account, status), base=base))

    @app.get("/api/activity")
    def activity(user: GetUserDep, limit: int = Query(200, ge=1, le=1000), account: str | None = None,
                 status: str | None = None) -> dict[str, Any]:
        rows = load(user, limit, account, status)
        return {"entries": rows, "total": len(rows), "statuses": list(STATUSES)}

    @app.get("/api/activity/{entry_id}/error-file")
    def error_file(entry_id: str, user: GetUserDep) -> StreamingResponse:
        from airflow.api_fastapi.app import get_auth_manager

        entry = ActivityLog(store()).get(entry_id)
        if not entry or not entry.get("error_file"):
            raise HTTPException(status_code=404, detail="no error file for this entry")
        if entry.get("dag_id") and not get_auth_manager().is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=entry["dag_id"]), user=user):
            raise HTTPException(status_code=403, detail="not allowed to read this import's runs")
        return StreamingResponse(_sftp_chunks(entry), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{entry["error_file"].rsplit("/", 1)[-1]}"'})

    return app


def _sftp_chunks(entry: dict[str, Any], block: int = 1 << 20):
    """Stream an error CSV from the account's SFTP folder (never held whole in memory)."""
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    hook = SFTPHook(ssh_conn_id=entry.get("sftp_conn_id") or "cdp_sftp")
    with hook.get_managed_conn() as sftp, sftp.open(entry["error_file"], "rb") as fh:
        while chunk := fh.read(block):
            yield chunk
