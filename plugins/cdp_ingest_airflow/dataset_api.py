"""REST API for datasets (SPEC §4), served by the Airflow api-server through ``plugins/datasets_plugin.py``.

Routes (under ``/cdp-datasets``), all behind Airflow auth (401 without a token, 403 without the right):

    POST   /api/datasets                  create (registry entry + DAG + first job)       may trigger DAG runs
    GET    /api/datasets                  list                                            may read DAG runs
    GET    /api/datasets/{name}           source, target, rows, size, last/next sync, state
    DELETE /api/datasets/{name}           index/alias, schedule (DAG), registry entry, state and jobs
    POST   /api/datasets/{name}/sync      force sync: a new job (DAG run with ``force``)
    GET    /api/jobs?dataset=&state=      jobs, newest first
    GET    /api/jobs/{job_id}             one job

Jobs are DAG runs of ``dataset_sync_<name>`` (job id = run id). A job's state comes from its run and the
job document its tasks write: queued (run queued or not started) → importing → complete | failure
(error_code, error_message).

Creating a dataset writes the registry file the DAG file reads, then parses ``dags/dataset_sync.py`` here
(what the dag-processor would do at its next pass) and stores the result in the metadata DB, so the first
job can be triggered at once — no restart, no file edit.

The helpers below need Airflow's ORM but no FastAPI; ``create_app`` imports FastAPI lazily.
"""

# No "from __future__ import annotations": FastAPI must see the real types of the route parameters.

import contextlib
import logging
import re
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp_ingest.datasets.spec import (
    DatasetError,
    DatasetSpec,
    all_datasets,
    parse_spec,
    remove_registry_entry,
    write_registry_entry,
)
from cdp_ingest.datasets.state import COMPLETE, FAILURE, IMPORTING, JOB_STATES, QUEUED

log = logging.getLogger(__name__)

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILE = DAGS_DIR / "dataset_sync.py"
DAG_PREFIX = "dataset_sync_"
# A write that meets a locked SQLite metadata DB (the single-machine default: the scheduler, the dag-processor
# and the task runners write to it too) is tried again after these pauses (each attempt also waits out
# SQLite's own 5 s busy timeout, and Airflow's DAG sync retries its own writes); then the request answers
# 503 "metadata_db_busy" instead of a bare 500.
DB_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def with_db_retry(session, fn, what: str):
    """``fn()`` (writes to the metadata DB through ``session``), again after a rollback while the DB is
    locked (SQLite); a :class:`DatasetError` ``metadata_db_busy`` once ``DB_RETRY_DELAYS`` are used up."""
    from sqlalchemy.exc import OperationalError

    for attempt, delay in enumerate((*DB_RETRY_DELAYS, None), start=1):
        try:
            return fn()
        except OperationalError as e:
            if "database is locked" not in str(e).lower():
                raise
            session.rollback()
            if delay is None:
                raise DatasetError(f"{what}: the Airflow metadata DB stayed locked (SQLite under concurrent "
                                   f"writers; {attempt} attempt(s)); nothing was changed: try again, or use "
                                   "PostgreSQL", "metadata_db_busy") from e
            log.warning("%s: the metadata DB is locked (attempt %d); trying again in %.1f s", what, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _store(spec: DatasetSpec):
    from cdp_ingest_airflow.connections import store_from_connection

    return store_from_connection(spec.store_conn_id)


# ---- Airflow side: DAGs and runs ------------------------------------------------------------------------
def register_dags(session) -> list[str]:
    """Parse the dataset DAG file and store its DAGs in the metadata DB, as the dag-processor (or
    ``airflow dags reserialize``) does, so a new dataset's DAG can be triggered at once."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db(session=session)
    session.flush()
    bundle = next((b for b in manager.get_all_dag_bundles() if (Path(b.path) / DAG_FILE.name).exists()), None)
    if bundle is None:
        raise DatasetError(f"no DAG bundle holds {DAG_FILE.name}", "internal")
    if not bundle.is_initialized:
        bundle.initialize()
    with quiet_thread_signal_warnings():
        bag = DagBag(dag_folder=str(Path(bundle.path) / DAG_FILE.name), bundle_path=Path(bundle.path),
                     bundle_name=bundle.name)
    if bag.import_errors:
        raise DatasetError(f"the dataset DAG file failed to parse: {next(iter(bag.import_errors.values()))[-500:]}",
                           "internal")
    sync_bag_to_db(bag, bundle.name, bundle.version, session=session)
    session.flush()
    return sorted(bag.dags)


# What Airflow's DAG importer logs when it parses a file outside the main thread, as a request thread of the
# API server does here: that it cannot set its SIGSEGV handler or its import timeout (signals work in the main
# thread only), the second with a traceback. On every dataset created or re-registered, that looked like a
# failure in the API server's log; the file (this project's dataset DAG file) is parsed all the same.
_IMPORTER_LOGGER = "airflow.dag_processing.importers.python_importer"
_THREAD_SIGNAL_WARNINGS = ("SIGSEGV signal handler registration failed", "timeout can't be used in the current context")


class _ThreadSignalWarnings(logging.Filter):
    """Drops the importer's two signal warnings logged by one thread (``thread``: its ident)."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread == self.thread and isinstance(record.msg, str)
                    and record.msg.startswith(_THREAD_SIGNAL_WARNINGS))


@contextlib.contextmanager
def quiet_thread_signal_warnings():
    """Outside the main thread: keep the importer's two signal warnings (above) out of the log while this
    thread parses a DAG file; every other record, and every other thread's, is logged as before. In the
    main thread (where the importer sets its signals) nothing changes."""
    if threading.current_thread() is threading.main_thread():
        yield
        return
    logger = logging.getLogger(_IMPORTER_LOGGER)
    only_here = _ThreadSignalWarnings(threading.get_ident())
    logger.addFilter(only_here)
    try:
        yield
    finally:
        logger.removeFilter(only_here)


def _dag_model(session, dag_id: str):
    from airflow.models.dag import DagModel
    from sqlalchemy import select

    return session.scalar(select(DagModel).where(DagModel.dag_id == dag_id))


def trigger_job(session, spec: DatasetSpec, *, force: bool, user_name: str | None) -> str:
    """Create a queued DAG run (= job) of the dataset's DAG; returns its run id (the job id)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    dm = _dag_model(session, spec.dag_id)
    if dm is None or dm.is_stale:
        register_dags(session)
        dm = _dag_model(session, spec.dag_id)
    if dm is None:
        raise DatasetError(f"DAG {spec.dag_id} is not known to Airflow", "internal")
    if dm.is_paused:
        dm.is_paused = False
    now = datetime.now(UTC)
    run_id = f"job__{now:%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"
    trigger_dag(spec.dag_id, triggered_by=DagRunTriggeredByType.REST_API, run_id=run_id, conf={"force": force},
                triggering_user_name=user_name, run_after=now, session=session)
    session.commit()
    _job_index(spec).update_job(run_id, spec.name, state=QUEUED, dag_id=spec.dag_id, run_id=run_id, force=force)
    return run_id


def _job_index(spec: DatasetSpec):
    from cdp_ingest.datasets.state import DatasetIndex

    return DatasetIndex(_store(spec))


def job_view(run: Any, doc: dict | None, dataset: str) -> dict[str, Any]:
    """One job: the run's state combined with the job document the tasks wrote."""
    doc = doc or {}
    rs = str(getattr(run, "state", "") or "") if run is not None else ""
    if run is None:
        state = doc.get("state") or QUEUED
    elif rs in ("queued", ""):
        state = QUEUED
    elif rs == "running":
        state = IMPORTING if doc.get("state") in (IMPORTING, FAILURE, COMPLETE) or doc.get("started") else QUEUED
        if doc.get("state") == COMPLETE:
            state = IMPORTING  # the finish task wrote it; the run ends a moment later
    elif rs == "success":
        state = COMPLETE
    else:
        state = FAILURE
    view = {"job_id": getattr(run, "run_id", None) or doc.get("job_id"), "dataset": dataset,
            "dag_id": getattr(run, "dag_id", None) or doc.get("dag_id"), "state": state,
            "run_state": rs or None, "run_type": str(getattr(run, "run_type", "") or "") or None,
            "queued_at": _iso(getattr(run, "queued_at", None)) or doc.get("created"),
            "started_at": _iso(getattr(run, "start_date", None)) or doc.get("started"),
            "finished_at": _iso(getattr(run, "end_date", None)) or doc.get("finished"),
            "force": bool(doc.get("force") or ((getattr(run, "conf", None) or {}).get("force"))),
            "changed": doc.get("changed"), "reason": doc.get("reason"), "result": doc.get("result"),
            "error_code": None, "error_message": None}
    if state == FAILURE:
        view["error_code"] = doc.get("error_code") or "run_failed"
        view["error_message"] = doc.get("error_message") or f"the run ended {rs or 'failed'} before the sync finished"
    return view


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def list_jobs(session, specs: dict[str, DatasetSpec], *, dataset: str | None = None, state: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    wanted = {s.dag_id: s for s in specs.values() if dataset is None or s.name == dataset}
    if not wanted:
        return []
    runs = session.scalars(select(DagRun).where(DagRun.dag_id.in_(list(wanted)))
                           .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(max(limit * 4, 200))).all()
    docs: dict[str, dict] = {}
    by_store: dict[str, list[DatasetSpec]] = {}
    for s in wanted.values():
        by_store.setdefault(s.store_conn_id, []).append(s)
    for group in by_store.values():
        try:
            for d in _job_index(group[0]).jobs_by_ids([r.run_id for r in runs if r.dag_id in
                                                       {s.dag_id for s in group}]):
                docs[d["job_id"]] = d
        except Exception:  # the store being down must not hide the runs
            log.warning("could not read job documents from %s", group[0].store_conn_id)
    out = [job_view(r, docs.get(r.run_id), wanted[r.dag_id].name) for r in runs]
    if state:
        out = [j for j in out if j["state"] == state]
    return out[:limit]


def get_job(session, specs: dict[str, DatasetSpec], job_id: str) -> dict[str, Any] | None:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    by_dag = {s.dag_id: s for s in specs.values()}
    runs = session.scalars(select(DagRun).where(DagRun.run_id == job_id, DagRun.dag_id.in_(list(by_dag)))).all()
    if not runs:
        return None
    run = runs[0]
    spec = by_dag[run.dag_id]
    return job_view(run, _job_index(spec).job(job_id), spec.name)


def describe(session, spec: DatasetSpec) -> dict[str, Any]:
    """What ``GET /api/datasets/{name}`` returns."""
    from cdp_ingest.datasets.raw import index_stats

    out: dict[str, Any] = {**spec.to_dict(), "dag_id": spec.dag_id}
    out["origin"] = spec.origin
    try:
        state = _job_index(spec).state(spec.name)
        stats = index_stats(_store(spec), spec.name) if spec.target.kind == "raw" else {}
    except Exception as e:
        log.warning("dataset %s: store unavailable: %s", spec.name, e.__class__.__name__)
        state, stats = {}, {}
    last_result = state.get("last_result") or {}
    out.update({
        "rows": stats.get("rows", last_result.get("loaded")),
        "size_bytes": stats.get("size_bytes"),
        "index": stats.get("index"),
        "last_sync": state.get("last_sync"),
        "last_change": state.get("last_change"),
        "last_error": state.get("last_error"),
        "last_job": state.get("last_job"),
    })
    dm = _dag_model(session, spec.dag_id)
    out["paused"] = bool(dm.is_paused) if dm is not None else None
    nxt = getattr(dm, "next_dagrun_create_after", None) if dm is not None and not dm.is_paused else None
    out["next_sync"] = _iso(nxt) if spec.sync_interval else None
    jobs = list_jobs(session, {spec.name: spec}, dataset=spec.name, limit=1)
    if jobs:
        out["state"] = jobs[0]["state"]
        out["latest_job"] = jobs[0]
    else:
        out["state"] = state.get("last_status") or "new"
        out["latest_job"] = None
    return out


def delete(session, spec: DatasetSpec) -> dict[str, Any]:
    from airflow.api.common.delete_dag import delete_dag

    from cdp_ingest.datasets.sync import delete_dataset

    if spec.origin != "api":
        raise DatasetError(f"dataset {spec.name} is declared in config/datasets.yaml: remove it there",
                           "declared_in_config")
    removed_file = remove_registry_entry(spec.name)

    def remove_dag() -> bool:
        dm = _dag_model(session, spec.dag_id)
        if dm is not None:
            dm.is_paused = True
            session.flush()
            delete_dag(spec.dag_id, session=session)
        session.commit()
        return dm is not None

    try:
        dag_removed = with_db_retry(session, remove_dag, f"deleting dataset {spec.name}")
    except DatasetError:  # the DB stayed locked: the dataset stays as it was (its entry back), as the 503 says
        if removed_file:
            write_registry_entry(spec)
        raise
    dropped = delete_dataset(_store(spec), spec.name)
    return {"dataset": spec.name, "deleted": True, "registry_entry_removed": removed_file,
            "dag_removed": dag_removed, **dropped}


# ---- the FastAPI app ------------------------------------------------------------------------------------
def create_app():
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from fastapi import Body, Depends, FastAPI, HTTPException, Query
    from fastapi.responses import JSONResponse

    can_read = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
    can_run = Depends(requires_access_dag("POST", DagAccessEntity.RUN))
    can_delete = Depends(requires_access_dag("DELETE"))
    app = FastAPI(title="cdp-ingest datasets", dependencies=[can_read],
                  description="Dataset import and sync (SPEC §4): datasets, jobs, force sync.")

    @app.exception_handler(DatasetError)
    def dataset_error(request, exc: DatasetError):
        status = {"not_found": 404, "exists": 409, "declared_in_config": 409, "internal": 500,
                  "metadata_db_busy": 503}.get(exc.code, 400)
        return JSONResponse(status_code=status, content={"detail": {"code": exc.code, "message": exc.message}})

    def specs() -> dict[str, DatasetSpec]:
        return all_datasets()

    def spec_or_404(name: str) -> DatasetSpec:
        found = specs().get(name)
        if found is None:
            raise HTTPException(status_code=404, detail={"code": "not_found", "message": f"no dataset {name!r}"})
        return found

    @app.get("/api/datasets")
    def list_datasets(user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return {"datasets": [describe(session, s) for _, s in sorted(specs().items())]}

    @app.post("/api/datasets", status_code=201, dependencies=[can_run])
    def create(user: GetUserDep, session: SessionDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        name = str(body.get("name") or "")
        if name in specs():
            raise DatasetError(f"dataset {name!r} exists already", "exists")
        decl = {k: v for k, v in body.items() if k != "name"}
        decl.update(origin="api", created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        spec = parse_spec(name, decl)
        path = write_registry_entry(spec)

        def register_and_trigger() -> str:
            register_dags(session)
            return trigger_job(session, spec, force=True, user_name=user.get_name())

        try:
            job_id = with_db_retry(session, register_and_trigger, f"creating dataset {name}")
        except Exception:
            path.unlink(missing_ok=True)
            session.rollback()
            raise
        log.info("dataset %s created by %s; first job %s", name, user.get_name(), job_id)
        return {**describe(session, spec), "job_id": job_id}

    @app.get("/api/datasets/{name}")
    def get_dataset(name: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return describe(session, spec_or_404(name))

    @app.delete("/api/datasets/{name}", dependencies=[can_delete])
    def delete_dataset_route(name: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return delete(session, spec_or_404(name))

    @app.post("/api/datasets/{name}/sync", status_code=202, dependencies=[can_run])
    def force_sync(name: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        spec = spec_or_404(name)
        job_id = with_db_retry(session, lambda: trigger_job(session, spec, force=True, user_name=user.get_name()),
                               f"syncing dataset {name}")
        found = get_job(session, {name: spec}, job_id)
        return found or {"job_id": job_id, "dataset": name, "state": QUEUED}

    @app.get("/api/jobs")
    def jobs(user: GetUserDep, session: SessionDep, dataset: str | None = None, state: str | None = None,
             limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        if state is not None and state not in JOB_STATES:
            raise DatasetError(f"state must be one of {', '.join(JOB_STATES)}", "invalid_filter")
        all_specs = specs()
        if dataset is not None and dataset not in all_specs:
            raise HTTPException(status_code=404, detail={"code": "not_found", "message": f"no dataset {dataset!r}"})
        return {"jobs": list_jobs(session, all_specs, dataset=dataset, state=state, limit=limit)}

    @app.get("/api/jobs/{job_id:path}")
    def job(job_id: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        if not re.fullmatch(r"[\w:+.\-]{1,250}", job_id):
            raise HTTPException(status_code=404, detail={"code": "not_found", "message": "no such job"})
        found = get_job(session, specs(), job_id)
        if found is None:
            raise HTTPException(status_code=404, detail={"code": "not_found", "message": f"no job {job_id!r}"})
        return found

    return app
