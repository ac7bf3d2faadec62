"""The import activity log: what happened to every unit of every source (SPEC §2, §7).

One document per *unit* in ``<prefix>sftp-activity`` (the index kept its first family's name), next to
the import ledger in the store, so every worker and the api-server see the same log:

* ``csv``        one landing file (entry id = its ledger ``import_id``);
* ``sftp``       one uploaded manifest, plus one entry per data file still waiting for its manifest;
* ``partition``  one entry per partition day (``dt=YYYY-MM-DD``: waiting for ``_SUCCESS``, timed out,
  picked up, done) and one per Parquet file of the day;
* ``replay`` / ``dataset`` (and any later family): whatever they call a unit (archive file, sync run).

Statuses: ``waiting_for_manifest`` | ``waiting`` (for a marker or data, with ``missing``) →
``picked_up`` → ``processing`` → ``done`` | ``failed`` | ``timed_out``. Each entry carries the counts
(rows_in, loaded, rejected, duplicates), the error file (``error_file`` + ``error_file_on``: ``local``
path on the workers/api-server, ``object`` store URL, or ``sftp`` path in the account folder), the Airflow ``dag_id`` /
``run_id`` / ``task_id``, the notifications sent (``notified``) and a timeline (``events``: one item
per status change or step, ``{"at", "status", "step", "note", "task_id"}``).

Usage for a source family (replays, datasets...) — one call per step, from inside a task. Shortest
form (store from the connection, the running task's dag_id/run_id/task_id added, never raises)::

    from cdp_ingest_airflow.activity import record_activity

    record_activity(source="replay", unit="archive-2026-01.jsonl.gz", account="segment-prod", status="done",
                    rows_in=1000, loaded=990, rejected=10, duplicates=0, error_file="/abs/archive.errors.csv")

or with an ``ActivityLog`` of your own store::

    from cdp_ingest_airflow.activity import ActivityLog
    from cdp_ingest_airflow.connections import store_from_connection

    activity = ActivityLog(store_from_connection("cdp_opensearch"))
    ids = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id}   # or run_ids(context)
    activity.record(source="replay", unit="archive-2026-01.jsonl.gz", account="segment-prod",
                    status="processing", step="send", path="s3://bucket/archive-2026-01.jsonl.gz", **ids)
    ...
    activity.record(source="replay", unit="archive-2026-01.jsonl.gz", account="segment-prod",
                    status="done", rows_in=1000, loaded=990, rejected=10, duplicates=0,
                    error_file="/abs/path/archive-2026-01.errors.csv", **ids)
    # a wait that gave up, before anything was picked up:
    activity.record(source="dataset", unit="orders", status="timed_out", missing="table public.orders",
                    message="the source table did not appear within 1 h", **ids)

``record`` merges into the entry ``entry_id`` (default: a stable id of ``source``, ``account`` and
``unit``, so the same unit always lands in the same entry), never raises for a missing index, and
returns the entry. ``record_safely`` is the same but only logs on error (for callbacks: the log is
informative and must never fail an import). Only keyword arguments; unknown extra keywords are stored
(not indexed). Counts are only set when given, so a later step may add them.

``cdp_ingest_airflow.activity_ui.create_app`` builds the console the ``activity_log_plugin`` mounts in
the Airflow api-server. This module needs only a ``Store``: Airflow is imported inside functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cdp_ingest.documents import iso

if TYPE_CHECKING:
    from cdp_ingest.sftp_rows import FolderPlan, RemoteFile
    from cdp_ingest.store import Store

log = logging.getLogger(__name__)

INDEX_SUFFIX = "sftp-activity"
WAITING = "waiting_for_manifest"  # an SFTP data file no manifest names yet
WAITING_FOR = "waiting"  # a unit whose marker / data file / source is not there yet (see ``missing``)
PICKED_UP, PROCESSING, DONE, FAILED, TIMED_OUT = "picked_up", "processing", "done", "failed", "timed_out"
STATUSES = (WAITING, WAITING_FOR, PICKED_UP, PROCESSING, DONE, FAILED, TIMED_OUT)
FINAL = (DONE, FAILED, TIMED_OUT)
STATUS_LABELS = {WAITING: "waiting for manifest", WAITING_FOR: "waiting", PICKED_UP: "picked up",
                 PROCESSING: "processing", DONE: "done", FAILED: "failed", TIMED_OUT: "timed out"}
LEDGER_STATUS = {"loading": PROCESSING, "committed": DONE, "failed": FAILED}
SOURCES = ("csv", "sftp", "partition", "replay", "dataset")  # known families; others are accepted
COUNTS = ("rows_in", "loaded", "updated", "rejected", "duplicates")  # updated: overwrite-mode replacements
MAX_EVENTS = 200
# Fields never shown by the console (the client's contact address is only used for notifications).
PRIVATE_FIELDS = ("client_email", "sftp_conn_id", "error_file_conn_id")
_SOURCE_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")

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
        # every family (added later: ``ensure`` puts them into an existing index's mapping)
        "source": _KW, "unit": _KW, "path": _KW, "day": _KW, "missing": _KW, "task_id": _KW,
        "rollup": {"type": "boolean"}, "error_file_on": _KW, "events": {"type": "object", "enabled": False},
    },
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime | str | None) -> str:
    if isinstance(at, str):
        return at
    return iso(at or _now()) or ""


def entry_id_for(source: str, account: str | None, unit: str) -> str:
    """The default entry id of a unit: stable, so every step of one unit lands in one entry."""
    from cdp_ingest.sftp_rows import stable_id

    return stable_id("activity", source, account or "", unit)


def run_ids(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """``dag_id``, ``run_id``, ``task_id`` (and ``map_index`` when mapped) of a task's context."""
    ti = (context or {}).get("ti") or (context or {}).get("task_instance")
    if ti is None:
        return {}
    out = {"dag_id": getattr(ti, "dag_id", None), "run_id": getattr(ti, "run_id", None),
           "task_id": getattr(ti, "task_id", None)}
    map_index = getattr(ti, "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        out["map_index"] = map_index
    return out


def current_run_ids() -> dict[str, Any]:
    """``run_ids`` of the running task, or ``{}`` outside a task (tests, CLI)."""
    try:
        from airflow.sdk import get_current_context

        return run_ids(get_current_context())
    except Exception:
        return {}


def record_activity(*, store_conn_id: str = "cdp_opensearch", **fields: Any) -> dict[str, Any] | None:
    """``ActivityLog.record(**fields)`` on the store of ``store_conn_id``, with the running task's
    ``dag_id``/``run_id``/``task_id`` unless given. Only logs on error (returns None then)."""
    try:
        from cdp_ingest_airflow.connections import store_from_connection

        activity = ActivityLog(store_from_connection(store_conn_id))
    except Exception:
        log.warning("could not open the activity log (%s)", store_conn_id, exc_info=True)
        return None
    return activity.record_safely(**{**current_run_ids(), **fields})


class ActivityLog:
    def __init__(self, store: Store):
        self.store = store
        self.index = f"{store.prefix}{INDEX_SUFFIX}"
        self._ready = False

    # ---- index ---------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the index with its mapping once (a concurrent creator's 400 is fine); an index made by
        an older version gets the newer fields added to its mapping (additions only)."""
        if self._ready:
            return
        if self.store._request("HEAD", f"/{self.index}", ok_statuses=(404,)) is True:
            current = self.store._request("GET", f"/{self.index}/_mapping") or {}
            known = next(iter(current.values()), {}).get("mappings", {}).get("properties", {})
            missing = {k: v for k, v in ACTIVITY_MAPPING["properties"].items() if k not in known}
            if missing:  # only additions: an existing field's mapping cannot change
                self.store._request("PUT", f"/{self.index}/_mapping", body={"properties": missing})
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
        entry.setdefault("source", "sftp")  # the SFTP adapters write through update()/put() directly
        entry.setdefault("unit", entry.get("manifest") or entry.get("file_name") or entry.get("id"))
        self.store._request("PUT", f"/{self.index}/_doc/{entry['id']}", body=entry, params={"refresh": "true"})
        return entry

    def update(self, entry_id: str, *, step: str | None = None, note: str | None = None,
               at: datetime | str | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into an entry (created if missing) and return the result. A status change (or a
        ``step``) adds a timeline event; leaving the waiting states clears ``missing``."""
        self.ensure()
        entry = self.get(entry_id) or {"id": entry_id}
        before = entry.get("status")
        entry.update(fields)
        status = entry.get("status")
        if status and status != before or step or note:
            when = _iso(at)
            event = {"at": when, "status": status, "step": step or status, "note": note}
            for k in ("task_id", "run_id", "map_index"):
                if fields.get(k) is not None:
                    event[k] = fields[k]
            entry["events"] = [*(entry.get("events") or []), {k: v for k, v in event.items() if v is not None}][
                -MAX_EVENTS:]
            if status == PICKED_UP and not entry.get("picked_up_at"):
                entry["picked_up_at"] = when
            if status == PROCESSING and not entry.get("started_at"):
                entry["started_at"] = when
            if status in FINAL and status != before:
                entry["finished_at"] = fields.get("finished_at") or when
        if status not in (WAITING, WAITING_FOR, TIMED_OUT) and "missing" not in fields:
            entry.pop("missing", None)
        return self.put(entry)

    def record(self, *, source: str, unit: str, status: str, account: str | None = None,
               entry_id: str | None = None, step: str | None = None, note: str | None = None,
               at: datetime | str | None = None, rows_in: int | None = None, loaded: int | None = None,
               rejected: int | None = None, duplicates: int | None = None, error_file: str | None = None,
               error_file_on: str | None = None, error_code: str | None = None, message: str | None = None,
               missing: str | None = None, path: str | None = None, day: str | None = None,
               type: str | None = None, file_name: str | None = None, dag_id: str | None = None,
               run_id: str | None = None, task_id: str | None = None, map_index: int | None = None,
               import_id: str | None = None, unit_id: str | None = None, notified: str | None = None,
               **extra: Any) -> dict[str, Any]:
        """Record one step of one unit of any source family (see the module docstring). Returns the entry.

        ``source``: the family (``csv``, ``sftp``, ``partition``, ``replay``, ``dataset``...); ``unit``: what
        operators search for (a file name, ``dt=YYYY-MM-DD``, a dataset name); ``status``: one of ``STATUSES``;
        ``missing``: what a waiting / timed-out unit waits for (``_SUCCESS``, a data file, a manifest);
        ``error_file``: a local path (``error_file_on="local"``, the default), an object-store URL
        (``s3://``, ``gs://``, ``file://``: ``"object"``, read with ``error_file_conn_id=<Airflow connection>``)
        or an SFTP path (``"sftp"``, with ``sftp_conn_id``), downloadable from the console; ``notified``: a
        notification just sent (appended to ``notified``).
        """
        if not _SOURCE_RE.fullmatch(source or ""):
            raise ValueError(f"activity source must be a short lowercase name, not {source!r}")
        if status not in STATUSES:
            raise ValueError(f"activity status must be one of {', '.join(STATUSES)}, not {status!r}")
        if not unit:
            raise ValueError("activity unit must name the file, day or dataset")
        eid = entry_id or entry_id_for(source, account, unit)
        fields: dict[str, Any] = {"source": source, "unit": unit, "status": status}
        given = {"account": account, "rows_in": rows_in, "loaded": loaded, "rejected": rejected,
                 "duplicates": duplicates, "error_file": error_file, "error_code": error_code, "message": message,
                 "missing": missing, "path": path, "day": day, "type": type, "dag_id": dag_id, "run_id": run_id,
                 "task_id": task_id, "map_index": map_index, "import_id": import_id, "unit_id": unit_id, **extra}
        fields.update({k: v for k, v in given.items() if v is not None})
        fields["file_name"] = file_name or (path or unit).rstrip("/").rsplit("/", 1)[-1]
        if error_file:
            fields["error_file_on"] = error_file_on or ("object" if "://" in error_file else "local")
        if message is not None:
            fields["message"] = str(message)[:2000]
        if status not in (FAILED, TIMED_OUT) and error_code is None:
            fields["error_code"] = None
        if notified:
            current = self.get(eid) or {}
            fields["notified"] = [*[n for n in current.get("notified") or [] if n != notified], notified]
        return self.update(eid, step=step, note=note, at=at, **fields)

    def record_safely(self, **kwargs: Any) -> dict[str, Any] | None:
        """``record`` that only logs on error: the log is informative and must never fail an import."""
        try:
            return self.record(**kwargs)
        except Exception:
            log.warning("could not write the activity log (%s %s)", kwargs.get("source"), kwargs.get("status"),
                        exc_info=True)
            return None

    def mark_notified(self, entry_id: str, event: str) -> None:
        entry = self.get(entry_id) or {"id": entry_id}
        sent = list(entry.get("notified") or [])
        if event not in sent:
            sent.append(event)
            self.update(entry_id, notified=sent, step="notified", note=event)

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
        """The unit a run picked up (entries that only waited are not it)."""
        hits = self._search([{"term": {"dag_id": dag_id}}, {"term": {"run_id": run_id}}], size=1,
                            must_not=[{"terms": {"status": [WAITING, WAITING_FOR, TIMED_OUT]}}])
        return hits[0] if hits else None

    def list(self, *, limit: int = 100, account: str | None = None, status: str | None = None,
             source: str | None = None, q: str | None = None, date_from: date | None = None,
             date_to: date | None = None) -> list[dict]:
        """Newest first; ``q`` matches unit, file, manifest or path (case-insensitive substring);
        ``date_from``/``date_to`` (inclusive days, UTC) the entry's last activity."""
        return self._search(_filters(account=account, status=status, source=source, q=q, date_from=date_from,
                                     date_to=date_to), size=limit,
                            sort=[{"updated_at": {"order": "desc", "unmapped_type": "date"}}])

    def daily_counts(self, *, days: int = 14, today: date | None = None, source: str | None = None,
                     account: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rows loaded / rejected per finished day (UTC) per source over the last ``days`` days:
        ``{source: [{"day", "loaded", "rejected", "units"}, ...]}`` with every day present. Roll-up entries
        (a partition day summing its files) are left out so nothing is counted twice."""
        today = today or _now().date()
        first = today - timedelta(days=days - 1)
        filters = _filters(account=account, source=source, date_from=None, date_to=None, status=None, q=None)
        filters.append({"range": {"finished_at": {"gte": first.isoformat(), "lt": (today + timedelta(days=1))
                                                  .isoformat()}}})
        body = {"size": 0, "query": {"bool": {"filter": filters, "must_not": [{"term": {"rollup": True}}]}},
                "aggs": {"src": {"terms": {"field": "source", "missing": "sftp", "size": 50}, "aggs": {
                    "day": {"date_histogram": {"field": "finished_at", "calendar_interval": "day",
                                               "format": "yyyy-MM-dd"},
                            "aggs": {"loaded": {"sum": {"field": "loaded"}},
                                     "rejected": {"sum": {"field": "rejected"}}}}}}}}
        resp = self.store._request("POST", f"/{self.index}/_search", body=body, ok_statuses=(404,)) or {}
        out: dict[str, list[dict[str, Any]]] = {}
        for b in resp.get("aggregations", {}).get("src", {}).get("buckets", []):
            by_day = {d["key_as_string"]: d for d in b["day"]["buckets"]}
            series = []
            for i in range(days):
                d = (first + timedelta(days=i)).isoformat()
                hit = by_day.get(d) or {}
                series.append({"day": d, "loaded": int((hit.get("loaded") or {}).get("value") or 0),
                               "rejected": int((hit.get("rejected") or {}).get("value") or 0),
                               "units": int(hit.get("doc_count") or 0)})
            out[b["key"]] = series
        return dict(sorted(out.items()))

    # ---- SFTP: data files waiting for their manifest, manifests waiting for their data file -----------
    def sync_waiting(self, account: str, files: Iterable[RemoteFile], *, dag_id: str | None = None) -> None:
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
            uploaded = iso(datetime.fromtimestamp(f.mtime, UTC))
            self.put({"id": entry_id, "source": "sftp", "unit": f.name, "account": account, "file_name": f.name,
                      "size": f.size, "status": WAITING, "uploaded_at": uploaded, "dag_id": dag_id,
                      "missing": "a .manifest naming this file",
                      "events": [{"at": uploaded, "status": WAITING, "step": "uploaded"}]})

    def sftp_manifest_waiting(self, account: str, folder: str, plan: FolderPlan, *, dag_id: str | None = None,
                              run_id: str | None = None) -> None:
        """The oldest manifest names a data file that is not there yet: its entry (the one the import will
        use) says so, with the missing file's name."""
        from cdp_ingest.sftp_rows import WAIT_DATA, activity_id

        if plan.manifest is None or plan.state != WAIT_DATA or not plan.data_file:
            return
        eid = activity_id(account, plan.manifest.name, plan.manifest.mtime)
        current = self.get(eid) or {}
        if current.get("status") in (WAITING_FOR, TIMED_OUT) and current.get("missing") == plan.data_file:
            return
        if current.get("status") in (PICKED_UP, PROCESSING, DONE, FAILED):
            return
        self.update(eid, source="sftp", unit=plan.manifest.name, account=account, folder=folder,
                    manifest=plan.manifest.name, file_name=plan.data_file, status=WAITING_FOR,
                    missing=plan.data_file, uploaded_at=iso(datetime.fromtimestamp(plan.manifest.mtime, UTC)),
                    dag_id=dag_id, run_id=run_id, step="waiting for data file",
                    note=f"the manifest names {plan.data_file}, which is not in the folder yet")

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


def _wildcard_escape(text: str) -> str:
    return re.sub(r"([\\*?])", r"\\\1", text)


def _filters(*, account: str | None, status: str | None, source: str | None, q: str | None,
             date_from: date | None, date_to: date | None) -> list[dict]:
    filters: list[dict] = []
    if account:
        filters.append({"term": {"account": account}})
    if status:
        filters.append({"term": {"status": status}})
    if source == "sftp":  # entries written before the log had a source field are SFTP's
        filters.append({"bool": {"should": [{"term": {"source": "sftp"}},
                                            {"bool": {"must_not": [{"exists": {"field": "source"}}]}}]}})
    elif source:
        filters.append({"term": {"source": source}})
    if q:
        pattern = f"*{_wildcard_escape(q.strip())}*"
        filters.append({"bool": {"minimum_should_match": 1, "should": [
            {"wildcard": {f: {"value": pattern, "case_insensitive": True}}}
            for f in ("unit", "file_name", "manifest", "path")]}})
    if date_from or date_to:
        rng: dict[str, str] = {}
        if date_from:
            rng["gte"] = date_from.isoformat()
        if date_to:
            rng["lt"] = (date_to + timedelta(days=1)).isoformat()
        filters.append({"range": {"updated_at": rng}})
    return filters


# ------------------------------------------------------------------------------------------------ views


def source_family(ledger_source: str) -> str:
    """The family of a ledger entry's ``source`` (``file:<mapping>`` = a CSV import)."""
    head = (ledger_source or "").split(":", 1)[0]
    return {"file": "csv"}.get(head, head or "other")


def view_entries(store: Store, *, limit: int = 200, account: str | None = None, status: str | None = None,
                 source: str | None = None, q: str | None = None, date_from: date | None = None,
                 date_to: date | None = None) -> list[dict[str, Any]]:
    """The activity entries of every family, plus ledger entries the activity log does not know (units
    imported before it covered their family, or by the CLI), newest first, in one shape."""
    from cdp_ingest.ledger import Ledger

    if status and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    if date_from and date_to and date_from > date_to:
        raise ValueError("date_from must not be after date_to")
    entries = ActivityLog(store).list(limit=limit, account=account, status=status, source=source, q=q,
                                      date_from=date_from, date_to=date_to)
    rows = [public(e) for e in entries]
    known = {e.get("import_id") for e in entries if e.get("import_id")}
    ledger_status = {v: k for k, v in LEDGER_STATUS.items()}.get(status) if status else None
    if (not status or ledger_status) and source != "sftp":
        needle = (q or "").strip().lower()
        for e in Ledger(store).list(limit=limit, account=account, status=ledger_status):
            family = source_family(e.source)
            if family == "sftp" or e.import_id in known or (source and family != source):
                continue
            if needle and needle not in e.path.lower():
                continue
            day = (e.finished or e.started or "")[:10]
            if (date_from and day < date_from.isoformat()) or (date_to and day > date_to.isoformat()):
                continue
            rows.append(ledger_row(e))
    rows.sort(key=when, reverse=True)
    return rows[:limit]


def ledger_row(e: Any) -> dict[str, Any]:
    """A ledger entry in the activity shape (id = its unit id)."""
    name = e.path.rstrip("/").rsplit("/", 1)[-1]
    return {"id": e.unit_id, "source": source_family(e.source), "account": e.account, "manifest": None,
            "unit": name, "file_name": name, "path": e.path, "type": e.kind,
            "status": LEDGER_STATUS.get(e.status, e.status), "uploaded_at": None, "picked_up_at": None,
            "started_at": e.started, "finished_at": e.finished, "seconds": _seconds(e.started, e.finished),
            **{c: getattr(e, c) for c in COUNTS}, "error_file": e.error_file,
            "error_file_on": "local" if e.error_file else None, "error_code": None, "message": e.message,
            "import_id": e.import_id, "unit_id": e.unit_id, "dag_id": None, "run_id": None, "from_ledger": True,
            "events": [x for x in ({"at": e.started, "status": PROCESSING, "step": "started"},
                                   {"at": e.finished, "status": LEDGER_STATUS.get(e.status, e.status),
                                    "step": e.status}) if x["at"]]}


def public(entry: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in entry.items() if k not in PRIVATE_FIELDS}
    row.setdefault("source", "sftp")
    row.setdefault("unit", row.get("manifest") or row.get("file_name") or row.get("id"))
    if row.get("error_file") and not row.get("error_file_on"):
        row["error_file_on"] = "sftp" if row["source"] == "sftp" else "local"
    if row.get("seconds") is None:
        row["seconds"] = _seconds(row.get("started_at") or row.get("picked_up_at"), row.get("finished_at"))
    for c in COUNTS:
        row.setdefault(c, None)
    return row


def when(row: Mapping[str, Any]) -> str:
    return str(row.get("updated_at") or row.get("finished_at") or row.get("started_at") or row.get("picked_up_at")
               or row.get("uploaded_at") or "")


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a, b = datetime.fromisoformat(start), datetime.fromisoformat(end)
        if (a.tzinfo is None) != (b.tzinfo is None):
            a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
        return round((b - a).total_seconds(), 3)
    except ValueError:
        return None
