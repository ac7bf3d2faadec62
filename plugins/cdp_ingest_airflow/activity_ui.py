"""The operators' console for the import activity log (``/cdp-activity/`` in the Airflow api-server).

Answers "what happened to file X" for every source family:

* ``/`` — search and filter (source, account, file / day / path, status, date), a chart of rows loaded /
  rejected per day per source (inline SVG, no JavaScript), one compact row per unit;
* ``/entry/{id}`` — a unit's own page: timeline (uploaded, waited, picked up, every task of its DAG run
  with a link to the task's log, committed / failed / timed out), counts, the error file, links to the
  DAG run, the notifications sent;
* ``/api/activity``, ``/api/activity/{id}``, ``/api/chart`` — the same as JSON;
* ``/api/activity/{id}/error-file`` — the unit's error CSV, streamed from the account's SFTP folder
  (``error_file_on == "sftp"``) or from this server's disk (CSV and partition error files).

Every route requires an authenticated Airflow user allowed to read DAG runs; an entry's own page and
its error file (it holds customer rows) additionally require access to the runs of the entry's DAG.
Pages are plain HTML + CSS (readable from 1280 px wide down, no horizontal scrolling).
"""

# No "from __future__ import annotations": FastAPI must see the real types of the route parameters
# (they are imported inside create_app, where string annotations could not be resolved).

import html
import logging
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from cdp_ingest_airflow.activity import (
    COUNTS,
    SOURCES,
    STATUS_LABELS,
    STATUSES,
    ActivityLog,
    ledger_row,
    public,
    view_entries,
)

if TYPE_CHECKING:
    from cdp_ingest.store import Store

log = logging.getLogger(__name__)
CHART_DAYS = 14
ERROR_SUFFIXES = (".csv", ".gz")

_CSS = """
*{box-sizing:border-box} body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:12px 16px;
font-size:14px;color:#1f2328;max-width:1400px} a{color:#0969da} h1{font-size:20px;margin:4px 0 10px}
h2{font-size:16px;margin:18px 0 8px} .muted{color:#59636e;font-size:12px}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;background:#f6f8fa;padding:10px;border-radius:6px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#59636e;gap:2px}
form.filters input,form.filters select{font-size:14px;padding:4px 6px;border:1px solid #d0d7de;border-radius:4px}
form.filters input[name=q]{width:220px} button{padding:5px 14px;font-size:14px;border-radius:4px;
border:1px solid #1f883d;background:#1f883d;color:#fff;cursor:pointer}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px;margin:10px 0}
.chart{border:1px solid #d0d7de;border-radius:6px;padding:6px 8px} .chart b{font-size:13px}
table{border-collapse:collapse;width:100%;table-layout:fixed} th,td{border-bottom:1px solid #d8dee4;padding:5px 6px;
text-align:left;vertical-align:top;overflow-wrap:anywhere} th{background:#f6f8fa;font-size:12px;color:#59636e}
td.num{font-variant-numeric:tabular-nums;font-size:12px} .msg{font-size:12px;color:#59636e}
.st{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;background:#eaeef2}
.s-done{background:#dafbe1;color:#116329} .s-failed,.s-timed_out{background:#ffebe9;color:#a40e26;font-weight:600}
.s-processing,.s-picked_up{background:#ddf4ff;color:#0550ae} .s-waiting_for_manifest,.s-waiting{background:#fff8c5;
color:#7d4e00} dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0} dt{color:#59636e}
dd{margin:0;overflow-wrap:anywhere} .cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));
gap:14px} .card{border:1px solid #d0d7de;border-radius:6px;padding:10px 12px}
.counts{display:flex;gap:18px;flex-wrap:wrap} .counts div{font-size:12px;color:#59636e}
.counts b{display:block;font-size:20px;color:#1f2328}
"""


# ------------------------------------------------------------------------------------------------ pieces


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _t(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


def _status(status: str | None) -> str:
    if not status:
        return ""
    s = status
    return f'<span class="st s-{_e(s)}">{_e(STATUS_LABELS.get(s, s))}</span>'


def _num(v: Any) -> str:
    return "–" if v is None else f"{int(v):,}"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>{body}</body></html>")


def chart_svg(series: list[dict[str, Any]], *, width: int = 280, height: int = 84) -> str:
    """Bars per day: rows loaded upwards (green), rejected downwards (red), each scaled to its own
    maximum so a spike of rejects shows even next to large loads. Inline SVG, no script."""
    n = max(len(series), 1)
    slot = width / n
    mid = height * 0.62
    top_h, bottom_h = mid - 12, height - mid - 12
    top_l = max((s["loaded"] for s in series), default=0)
    top_r = max((s["rejected"] for s in series), default=0)
    max_l, max_r = top_l or 1, top_r or 1
    bars = [f'<line x1="0" y1="{mid:.1f}" x2="{width}" y2="{mid:.1f}" stroke="#8c959f" stroke-width="0.5"/>']
    for i, s in enumerate(series):
        x = i * slot + slot * 0.15
        w = slot * 0.7
        title = f"{s['day']}: {s['loaded']:,} loaded, {s['rejected']:,} rejected ({s['units']} units)"
        hl = top_h * s["loaded"] / max_l
        hr = bottom_h * s["rejected"] / max_r
        bars.append(f'<g><title>{_e(title)}</title>'
                    f'<rect x="{x:.1f}" y="{mid - hl:.1f}" width="{w:.1f}" height="{hl:.1f}" fill="#2da44e"/>'
                    f'<rect x="{x:.1f}" y="{mid + 1:.1f}" width="{w:.1f}" height="{hr:.1f}" fill="#cf222e"/>'
                    f'<rect x="{i * slot:.1f}" y="0" width="{slot:.1f}" height="{height}" fill="transparent"/></g>')
    if series:
        bars.append(f'<text x="0" y="{height - 1}" font-size="9" fill="#59636e">{_e(series[0]["day"][5:])}</text>')
        bars.append(f'<text x="{width}" y="{height - 1}" font-size="9" fill="#59636e" text-anchor="end">'
                    f'{_e(series[-1]["day"][5:])}</text>')
    bars.append(f'<text x="0" y="9" font-size="9" fill="#116329">max {top_l:,} loaded</text>')
    bars.append(f'<text x="{width}" y="9" font-size="9" fill="#a40e26" text-anchor="end">'
                f'max {top_r:,} rejected</text>')
    return (f'<svg role="img" aria-label="rows loaded and rejected per day" viewBox="0 0 {width} {height}" '
            f'width="100%" height="{height}" preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">'
            + "".join(bars) + "</svg>")


def render_charts(charts: dict[str, list[dict[str, Any]]]) -> str:
    if not charts:
        return '<p class="muted">No finished imports in the last two weeks.</p>'
    cards = []
    for source, series in charts.items():
        loaded = sum(s["loaded"] for s in series)
        rejected = sum(s["rejected"] for s in series)
        cards.append(f'<div class="chart" data-source="{_e(source)}"><b>{_e(source)}</b> '
                     f'<span class="muted">{loaded:,} loaded · {rejected:,} rejected in {len(series)} days</span>'
                     f"{chart_svg(series)}</div>")
    return f'<div class="charts">{"".join(cards)}</div>'


def _filters_form(f: dict[str, Any], accounts: list[str]) -> str:
    def options(values: tuple[str, ...] | list[str], current: str | None, labels: dict | None = None) -> str:
        opts = ['<option value="">all</option>']
        for v in values:
            sel = " selected" if v == current else ""
            opts.append(f'<option value="{_e(v)}"{sel}>{_e((labels or {}).get(v, v))}</option>')
        return "".join(opts)

    sources = list(dict.fromkeys([*SOURCES, *([f["source"]] if f.get("source") else [])]))
    return (
        '<form class="filters" method="get" action="" id="filters">'
        f'<label>Source<select name="source">{options(sources, f.get("source"))}</select></label>'
        f'<label>Account / source name<input name="account" list="accounts" value="{_e(f.get("account"))}">'
        f'<datalist id="accounts">{"".join(f"<option value={chr(34)}{_e(a)}{chr(34)}>" for a in accounts)}'
        '</datalist></label>'
        f'<label>File, day or path<input name="q" type="search" placeholder="orders.csv, dt=2026-01-05"'
        f' value="{_e(f.get("q"))}"></label>'
        f'<label>Status<select name="status">{options(STATUSES, f.get("status"), STATUS_LABELS)}</select></label>'
        f'<label>From<input name="date_from" type="date" value="{_e(f.get("date_from"))}"></label>'
        f'<label>To<input name="date_to" type="date" value="{_e(f.get("date_to"))}"></label>'
        '<button type="submit" id="search">Search</button> <a href="?">reset</a></form>')


def render_list(rows: list[dict[str, Any]], *, base: str, filters: dict[str, Any], accounts: list[str],
                charts: dict[str, list[dict[str, Any]]]) -> str:
    """The console's main page."""
    body = []
    for r in rows:
        eid = quote(str(r["id"]), safe="")
        detail = f"{base}entry/{eid}"
        unit = r.get("unit") or r.get("file_name") or ""
        sub = []
        if r.get("manifest") and r.get("manifest") != unit:
            sub.append(f"manifest {_e(r['manifest'])}")
        if r.get("file_name") and r.get("file_name") != unit:
            sub.append(f"file {_e(r['file_name'])}")
        if r.get("day") and r.get("day") not in unit:
            sub.append(f"day {_e(r['day'])}")
        if r.get("type"):
            sub.append(_e(r["type"]))
        status = _status(r.get("status"))
        if r.get("missing") and r.get("status") in ("waiting", "timed_out", "waiting_for_manifest"):
            status += f'<div class="msg">missing: {_e(r["missing"])}</div>'
        updated = f' · {_num(r.get("updated"))} updated' if r.get("updated") else ""
        counts = (f'{_num(r.get("rows_in"))} in<br>{_num(r.get("loaded"))} loaded{updated}<br>'
                  f'{_num(r.get("rejected"))} rejected · {_num(r.get("duplicates"))} dup'
                  if any(r.get(c) is not None for c in COUNTS) else "")
        links = [f'<a href="{_e(detail)}">details</a>']
        if r.get("error_file"):
            links.append(f'<a href="{_e(base)}api/activity/{eid}/error-file" download>error file</a>')
        msg = str(r.get("message") or "")
        last = r.get("updated_at") or r.get("finished_at") or r.get("started_at")
        body.append(
            f'<tr data-id="{_e(r["id"])}"><td>{_e(_t(last))}'
            f'</td><td>{_e(r.get("source"))}<div class="msg">{_e(r.get("account"))}</div></td>'
            f'<td><a href="{_e(detail)}" class="unit">{_e(unit)}</a><div class="msg">{" · ".join(sub)}</div></td>'
            f'<td>{status}</td><td class="num">{counts}</td>'
            f'<td><div class="msg">{_e(msg[:300])}{"…" if len(msg) > 300 else ""}</div>{" · ".join(links)}</td></tr>')
    if not body:
        body.append('<tr><td colspan="6">Nothing matches these filters.</td></tr>')
    query = urlencode({k: v for k, v in filters.items() if v})
    return _page("Import activity", f"""
<h1>Import activity</h1>
<p class="muted">Every unit of every source: CSV files, SFTP uploads, partition days and files, replays, datasets —
waiting, picked up, processing, done, failed or timed out. JSON: <a href="{_e(base)}api/activity?{_e(query)}">
{_e(base)}api/activity</a></p>
{_filters_form(filters, accounts)}
<h2>Rows loaded / rejected per day (last {CHART_DAYS} days, UTC)</h2>
{render_charts(charts)}
<h2>Units <span class="muted">({len(rows)} shown, newest first)</span></h2>
<table id="entries"><colgroup><col style="width:12%"><col style="width:11%"><col style="width:27%">
<col style="width:12%"><col style="width:12%"><col style="width:26%"></colgroup>
<thead><tr><th>Last activity (UTC)</th><th>Source · account</th><th>Unit</th><th>Status</th><th>Rows</th>
<th>Message · links</th></tr></thead><tbody>{"".join(body)}</tbody></table>""")


def ui_links(entry: dict[str, Any], ui_root: str) -> dict[str, Any]:
    """Links into the Airflow UI: the DAG run and each task instance (whose page shows its log)."""
    if not entry.get("dag_id"):
        return {}
    dag = f"{ui_root}dags/{quote(entry['dag_id'], safe='')}"
    out: dict[str, Any] = {"dag": dag}
    if entry.get("run_id"):
        out["dag_run"] = f"{dag}/runs/{quote(entry['run_id'], safe='')}"
    return out


def task_link(run_link: str, task_id: str, map_index: int | None) -> str:
    link = f"{run_link}/tasks/{quote(task_id, safe='')}"
    return f"{link}/mapped/{map_index}" if map_index is not None and map_index >= 0 else link


def timeline(entry: dict[str, Any], tasks: list[dict[str, Any]], run_link: str | None) -> list[dict[str, Any]]:
    """The entry's own events plus the task instances of its DAG run, in time order."""
    items = []
    if entry.get("uploaded_at") and not any(e.get("step") == "uploaded" for e in entry.get("events") or []):
        items.append({"at": entry["uploaded_at"], "step": "uploaded", "status": None, "note": None})
    for e in entry.get("events") or []:
        step = e.get("step")
        items.append({"at": e.get("at"), "step": STATUS_LABELS.get(step, step), "status": e.get("status"),
                      "note": e.get("note"),
                      "task_id": e.get("task_id")})
    for t in tasks:
        name = t["task_id"] + (f"[{t['label'] or t['map_index']}]" if t["map_index"] >= 0 else "")
        items.append({"at": t.get("start_date") or t.get("end_date"), "step": f"task {name}", "status": t["state"],
                      "note": f"try {t['try_number']}, ended {_t(t['end_date'])}" if t.get("end_date") else
                      f"try {t['try_number']}", "task_id": t["task_id"],
                      "link": task_link(run_link, t["task_id"], t["map_index"]) if run_link else None})
    return sorted(items, key=lambda i: str(i.get("at") or "9999")[:26].replace(" ", "T"))


def render_entry(entry: dict[str, Any], items: list[dict[str, Any]], links: dict[str, Any], *, base: str) -> str:
    eid = quote(str(entry["id"]), safe="")
    fields = [("Source", entry.get("source")), ("Account / source name", entry.get("account")),
              ("Unit", entry.get("unit")), ("Manifest", entry.get("manifest")), ("Data file", entry.get("file_name")),
              ("Path", entry.get("path")), ("Day", entry.get("day")), ("Type", entry.get("type")),
              ("Missing", entry.get("missing")), ("Uploaded", _t(entry.get("uploaded_at"))),
              ("Picked up", _t(entry.get("picked_up_at"))), ("Started", _t(entry.get("started_at"))),
              ("Finished", _t(entry.get("finished_at"))),
              ("Took", f"{entry['seconds']:.1f} s" if isinstance(entry.get("seconds"), int | float) else None),
              ("Archived to", entry.get("archived_to")), ("Error code", entry.get("error_code")),
              ("Message", entry.get("message")), ("Import id", entry.get("import_id"))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in fields if v not in (None, ""))
    counts = "".join(f"<div><b>{_num(entry.get(c))}</b>{_e(c.replace('_', ' '))}</div>" for c in COUNTS)
    err = (f'<p><a id="error-file" href="{_e(base)}api/activity/{eid}/error-file" download>Download the error file'
           f'</a> <span class="muted">({_e(entry["error_file"])})</span></p>' if entry.get("error_file")
           else '<p class="muted">No error file.</p>')
    run = (f'<p><a target="_top" id="dag-run" href="{_e(links["dag_run"])}">DAG run {_e(entry.get("run_id"))}</a> of '
           f'<a target="_top" href="{_e(links["dag"])}">{_e(entry.get("dag_id"))}</a></p>' if links.get("dag_run")
           else f'<p class="muted">DAG {_e(entry.get("dag_id") or "unknown")}; no run recorded.</p>')
    notes = "".join(f"<li>{_e(n)}</li>" for n in entry.get("notified") or []) or "<li class='muted'>none</li>"
    rows = []
    for i in items:
        step = _e(i.get("step"))
        if i.get("link"):
            step = f'<a target="_top" href="{_e(i["link"])}" title="task instance and its log">{step}</a>'
        rows.append(f"<tr><td>{_e(_t(i.get('at')))}</td><td>{step}</td><td>{_status(i.get('status'))}</td>"
                    f"<td class='msg'>{_e(i.get('note'))}</td></tr>")
    return _page(f"{entry.get('unit')} · import activity", f"""
<p><a href="{_e(base)}">← all imports</a></p>
<h1>{_e(entry.get("unit"))} {_status(entry.get("status"))}</h1>
<div class="cards"><div class="card"><h2>What</h2><dl>{dl}</dl></div>
<div class="card"><h2>Rows</h2><div class="counts">{counts}</div>{err}<h2>Airflow</h2>{run}
<h2>Notifications sent</h2><ul id="notified">{notes}</ul></div></div>
<h2>Timeline</h2><table id="timeline"><colgroup><col style="width:16%"><col style="width:30%"><col style="width:12%">
<col style="width:42%"></colgroup><thead><tr><th>When (UTC)</th><th>Step</th><th>Status</th><th>Note</th></tr></thead>
<tbody>{"".join(rows) or "<tr><td colspan=4>No events.</td></tr>"}</tbody></table>""")


# ------------------------------------------------------------------------------------------------- data


def find_entry(store: "Store", entry_id: str) -> dict[str, Any] | None:
    """An activity entry, else a ledger entry of that unit id (units the activity log does not know)."""
    from cdp_ingest.ledger import Ledger

    entry = ActivityLog(store).get(entry_id)
    if entry is not None:
        return public(entry) | {"sftp_conn_id": entry.get("sftp_conn_id"),
                                "error_file_conn_id": entry.get("error_file_conn_id")}
    led = Ledger(store).get(entry_id)
    return ledger_row(led) if led is not None else None


def task_instances(dag_id: str | None, run_id: str | None) -> list[dict[str, Any]]:
    """The task instances of a DAG run from Airflow's metadata DB (empty when unknown)."""
    if not dag_id or not run_id:
        return []
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                             TaskInstance.run_id == run_id)).all()
            return [{"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state or "none"),
                     "try_number": ti.try_number, "label": getattr(ti, "rendered_map_index", None),
                     "start_date": ti.start_date.isoformat() if ti.start_date else None,
                     "end_date": ti.end_date.isoformat() if ti.end_date else None} for ti in tis]
    except Exception:
        log.warning("could not read the task instances of %s %s", dag_id, run_id, exc_info=True)
        return []


def accounts(store: "Store") -> list[str]:
    resp = store._request("POST", f"/{ActivityLog(store).index}/_search", ok_statuses=(404,), body={
        "size": 0, "aggs": {"a": {"terms": {"field": "account", "size": 200}}}}) or {}
    return sorted(b["key"] for b in resp.get("aggregations", {}).get("a", {}).get("buckets", []))


def local_error_file(entry: dict[str, Any]) -> Path:
    """The error CSV of a CSV / partition unit on this server's disk (only CSV files the entry names)."""
    path = Path(str(entry["error_file"]).removeprefix("file://"))
    if not path.is_absolute() or not path.name.endswith(ERROR_SUFFIXES) or not path.is_file():
        raise FileNotFoundError(str(path))
    return path


def _object_chunks(entry: dict[str, Any], block: int = 1 << 20):
    """Stream an error CSV from an object store URL (s3://, gs://, file://) with the entry's connection."""
    from cdp_ingest_airflow.objectstore import object_path, open_path

    with open_path(object_path(entry["error_file"], entry.get("error_file_conn_id"))) as fh:
        while chunk := fh.read(block):
            yield chunk


def _sftp_chunks(entry: dict[str, Any], block: int = 1 << 20):
    """Stream an error CSV from the account's SFTP folder (never held whole in memory)."""
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    hook = SFTPHook(ssh_conn_id=entry.get("sftp_conn_id") or "cdp_sftp")
    with hook.get_managed_conn() as sftp, sftp.open(entry["error_file"], "rb") as fh:
        while chunk := fh.read(block):
            yield chunk


# -------------------------------------------------------------------------------------------------- app


def create_app(*, store_conn_id: str = "cdp_opensearch"):
    """The FastAPI app mounted by the plugin. Every route depends on Airflow's auth."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse

    can_read_runs = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
    app = FastAPI(title="cdp-ingest import activity", dependencies=[can_read_runs])

    def store() -> "Store":
        from cdp_ingest_airflow.connections import store_from_connection

        return store_from_connection(store_conn_id)

    def allowed(dag_id: str | None, user: Any) -> bool:
        from airflow.api_fastapi.app import get_auth_manager

        return not dag_id or get_auth_manager().is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user)

    def visible(rows: list[dict[str, Any]], user: Any) -> list[dict[str, Any]]:
        from airflow.api_fastapi.app import get_auth_manager

        if not any(r.get("dag_id") for r in rows):
            return rows
        ok = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
        return [r for r in rows if not r.get("dag_id") or r["dag_id"] in ok]

    def bases(request: Request) -> tuple[str, str]:
        """(this app's base path, the Airflow UI's base path), both ending in /."""
        root = str(request.scope.get("root_path") or "").rstrip("/")
        ui = root[: -len("/cdp-activity")] if root.endswith("/cdp-activity") else ""
        return root + "/", ui + "/"

    def load(user: Any, limit: int, **filters: Any) -> list[dict[str, Any]]:
        try:
            rows = view_entries(store(), limit=limit, **filters)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        return visible(rows, user)

    def entry_or_404(entry_id: str, user: Any) -> dict[str, Any]:
        entry = find_entry(store(), entry_id)
        if entry is None:
            raise HTTPException(status_code=404, detail="no such activity entry")
        if not allowed(entry.get("dag_id"), user):
            raise HTTPException(status_code=403, detail="not allowed to read this import's runs")
        return entry

    def detail(entry: dict[str, Any], request: Request) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        _, ui = bases(request)
        links = ui_links(entry, ui)
        tasks = task_instances(entry.get("dag_id"), entry.get("run_id"))
        items = timeline(entry, tasks, links.get("dag_run"))
        if links.get("dag_run"):
            links["tasks"] = {f"{t['task_id']}" + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""):
                              task_link(links["dag_run"], t["task_id"], t["map_index"]) for t in tasks}
        return items, links

    def filter_params(source: str | None, account: str | None, q: str | None, status: str | None,
                      date_from: str | None, date_to: str | None) -> dict[str, Any]:
        try:
            return {"source": source or None, "account": account or None, "q": q or None, "status": status or None,
                    "date_from": date.fromisoformat(date_from) if date_from else None,
                    "date_to": date.fromisoformat(date_to) if date_to else None}
        except ValueError as e:
            raise HTTPException(status_code=400, detail="dates must be YYYY-MM-DD") from e

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user: GetUserDep, limit: int = Query(200, ge=1, le=1000), source: str | None = None,
             account: str | None = None, q: str | None = None, status: str | None = None,
             date_from: str | None = None, date_to: str | None = None) -> HTMLResponse:
        base, _ = bases(request)
        f = filter_params(source, account, q, status, date_from, date_to)
        rows = load(user, limit, **f)
        st = store()
        charts = ActivityLog(st).daily_counts(days=CHART_DAYS, source=f["source"], account=f["account"])
        shown = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in f.items()}
        return HTMLResponse(render_list(rows, base=base, filters=shown, accounts=accounts(st), charts=charts))

    @app.get("/entry/{entry_id}", response_class=HTMLResponse)
    def entry_page(entry_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
        base, _ = bases(request)
        entry = entry_or_404(entry_id, user)
        items, links = detail(entry, request)
        return HTMLResponse(render_entry(entry, items, links, base=base))

    @app.get("/api/activity")
    def activity(user: GetUserDep, limit: int = Query(200, ge=1, le=1000), source: str | None = None,
                 account: str | None = None, q: str | None = None, status: str | None = None,
                 date_from: str | None = None, date_to: str | None = None) -> dict[str, Any]:
        rows = load(user, limit, **filter_params(source, account, q, status, date_from, date_to))
        for r in rows:
            r.pop("events", None)
        return {"entries": rows, "total": len(rows), "statuses": list(STATUSES), "sources": list(SOURCES)}

    @app.get("/api/chart")
    def chart(user: GetUserDep, days: int = Query(CHART_DAYS, ge=1, le=92), source: str | None = None,
              account: str | None = None) -> dict[str, Any]:
        return {"days": days, "series": ActivityLog(store()).daily_counts(days=days, source=source, account=account)}

    @app.get("/api/activity/{entry_id}")
    def activity_entry(entry_id: str, request: Request, user: GetUserDep) -> dict[str, Any]:
        entry = entry_or_404(entry_id, user)
        items, links = detail(entry, request)
        entry.pop("sftp_conn_id", None)
        entry.pop("error_file_conn_id", None)
        return {"entry": entry, "timeline": items, "links": links, "notified": entry.get("notified") or []}

    @app.get("/api/activity/{entry_id}/error-file")
    def error_file(entry_id: str, user: GetUserDep):
        entry = entry_or_404(entry_id, user)
        if not entry.get("error_file"):
            raise HTTPException(status_code=404, detail="no error file for this entry")
        name = str(entry["error_file"]).rsplit("/", 1)[-1]
        if entry.get("error_file_on") in ("sftp", "object"):
            chunks = _sftp_chunks(entry) if entry["error_file_on"] == "sftp" else _object_chunks(entry)
            try:
                first = next(chunks, b"")
            except (FileNotFoundError, OSError) as e:
                raise HTTPException(status_code=404, detail="the error file is gone from where it was written") from e

            def stream():
                yield first
                yield from chunks

            return StreamingResponse(stream(), media_type="text/csv", headers={
                "Content-Disposition": f'attachment; filename="{name}"'})
        try:
            path = local_error_file(entry)
        except FileNotFoundError as e:
            raise HTTPException(status_code=404, detail="the error file is not on this server (removed, or "
                                                        "written on another worker)") from e
        return FileResponse(path, media_type="text/csv" if name.endswith(".csv") else "application/gzip",
                            filename=name)

    return app
