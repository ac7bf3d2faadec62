"""DAG factory for daily event partitions in S3 / GCS (SPEC §3; config/partition_sources.yaml).

One DAG per configured source, ``partition_import_<name>``::

    resolve_partition → wait_for_success (sensor) → list_files
        → file (task group mapped over the day's files: transform → validate → load) → record_accounting

- The partition day comes from the run's data interval, never the wall clock: the schedule is a daily
  ``CronDataIntervalTimetable`` in the source's time zone, and a run covers the local day on which its
  interval starts (the day before the run fires). The ``date`` param overrides it for manual runs.
- ``wait_for_success`` pokes for ``dt=<day>/_SUCCESS`` through ``ObjectStoragePath`` with the source's
  Airflow connection (aws or google_cloud_platform). It is not the provider's S3KeySensor or
  GCSObjectExistenceSensor: one sensor serves both stores, and those modules import boto3 / google-cloud
  at DAG parse time. ``list_files`` checks the marker again, so a partition without it is never read.
- ``transform`` downloads one object to the staging folder while hashing it (the ledger fingerprint:
  URL, size, SHA-256), skips a file the ledger already committed, and stages its events with the
  pipeline's ``transform_unit``. A changed file (same name, new content) is a new source unit.
- A deadline alert (``DeadlineReference.DAGRUN_LOGICAL_DATE`` + the interval up to ``load_deadline``
  local time on the run day) calls ``partition_deadline_missed`` in the triggerer, which posts
  ``partition-deadline-missed`` to the ``cdp_webhook`` connection (or only logs when there is none).

Nothing here opens a connection or imports pyarrow/boto3 at parse time: every engine import is
inside a task.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pendulum
import yaml
from airflow.sdk import (
    DAG,
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    PokeReturnValue,
    task,
    task_group,
)

from cdp_ingest_airflow import activity_hooks
from cdp_ingest_airflow.config_checks import number_of, ratio_of, sensor_of
from cdp_ingest_airflow.dag_base import ImportDAG, mapped_outputs
from cdp_ingest_airflow.defaults import DEFAULT_ARGS
from cdp_ingest_airflow.notify import WEBHOOK_CONN_ID, on_task_failure, post_webhook, send_to_connection
from cdp_ingest_airflow.objectstore import object_path, open_path
from cdp_ingest_airflow.operators import BulkIndexOperator, staging_root

if TYPE_CHECKING:
    from cdp_ingest.ledger import SourceUnit

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ("s3", "gs", "file")
DAY_RE = r"^\d{4}-\d{2}-\d{2}$"
_CRON_PRESETS = {"@daily": "0 0 * * *", "@midnight": "0 0 * * *"}
DOWNLOAD_CHUNK = 8 << 20


def landing_root() -> Path:
    return Path(os.environ.get("CDP_LANDING_DIR", ROOT / "landing"))


# ---- configuration --------------------------------------------------------------------------------
def daily_time(schedule: str) -> tuple[int, int]:
    """(hour, minute) of a daily cron (``M H * * *`` or ``@daily``); anything else is refused:
    a partition is a day, so the DAG runs once a day."""
    cron = _CRON_PRESETS.get(schedule.strip(), schedule.strip())
    parts = cron.split()
    if len(parts) != 5 or parts[2:] != ["*", "*", "*"] or not (parts[0].isdigit() and parts[1].isdigit()):
        raise ValueError(f"schedule must be a daily cron 'M H * * *' or @daily, not {schedule!r}")
    hour, minute = int(parts[1]), int(parts[0])
    if hour > 23 or minute > 59:
        raise ValueError(f"schedule {schedule!r} is not a valid time of day")
    return hour, minute


def deadline_interval(schedule: str, load_deadline: str) -> timedelta:
    """Time from a scheduled run's logical date (= start of its data interval: the partition day at the
    scheduled local time) to ``load_deadline`` local time on the following day, i.e. the run day.

    The alert is evaluated as logical date + this interval, so on the night a DST change falls in, the
    deadline moves by the change (one hour)."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(load_deadline).strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"load_deadline must be a local time HH:MM, not {load_deadline!r}")
    hour, minute = daily_time(schedule)
    interval = timedelta(days=1, hours=int(m[1]) - hour, minutes=int(m[2]) - minute)
    if interval <= timedelta(days=1):
        raise ValueError(f"load_deadline {load_deadline} must be later in the day than the scheduled run "
                         f"({hour:02d}:{minute:02d}), which is when the day can first be loaded")
    return interval


def validate_source(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Check one source entry and fill in defaults (pure: no connection, no network)."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"partition source name {name!r}: use lowercase letters, digits and _")
    url = str(cfg.get("url") or "")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES or not url.split("://", 1)[1].strip("/"):
        raise ValueError(f"partition source {name}: url must be s3://bucket/prefix or gs://bucket/prefix, "
                         f"not {url!r}")
    if scheme != "file" and not cfg.get("conn_id"):
        raise ValueError(f"partition source {name}: conn_id (an aws or google_cloud_platform connection) is "
                         f"required")
    tz = str(cfg.get("timezone", "UTC"))
    try:
        ZoneInfo(tz)
    except (KeyError, ValueError) as e:
        raise ValueError(f"partition source {name}: unknown timezone {tz!r}") from e
    schedule = str(cfg.get("schedule", "0 2 * * *"))
    daily_time(schedule)
    deadline = cfg.get("load_deadline")
    if deadline is not None:
        deadline_interval(schedule, deadline)
    where = f"partition source {name}"
    sensor = sensor_of(cfg.get("sensor"), where, {"mode": "reschedule", "poke_interval": 300, "timeout": 20 * 3600})
    ratio = ratio_of(cfg.get("max_reject_ratio", 0.5), f"{where}: max_reject_ratio")
    runs = number_of(cfg.get("max_active_runs", 1), f"{where}: max_active_runs", whole=True)
    if runs < 1:
        raise ValueError(f"{where}: max_active_runs must be >= 1, not {runs!r}")
    start = cfg.get("start_date", "2025-01-01")
    start = start if isinstance(start, date) else date.fromisoformat(str(start))
    loads = cfg.get("parallel_loads", 2)
    if isinstance(loads, bool) or not isinstance(loads, int) or loads < 1:
        raise ValueError(f"partition source {name}: parallel_loads must be a whole number >= 1, not {loads!r}")
    write_mode = str(cfg.get("write_mode", "create"))
    if write_mode not in ("create", "overwrite"):
        raise ValueError(f"partition source {name}: write_mode must be create or overwrite, not {write_mode!r}")
    return {
        "name": name, "url": url.rstrip("/"), "scheme": scheme, "conn_id": cfg.get("conn_id"),
        "store_conn_id": cfg.get("store_conn_id", "cdp_opensearch"), "source_id": cfg.get("source_id", name),
        "schedule": schedule, "timezone": tz, "load_deadline": deadline, "start_date": start,
        "max_reject_ratio": ratio, "max_active_runs": runs, "sensor": sensor,
        "description": cfg.get("description", ""),
        "error_dir": str(cfg.get("error_dir") or landing_root() / "partitions" / name / "errors"),
        "webhook_conn_id": cfg.get("webhook_conn_id", WEBHOOK_CONN_ID), "write_mode": write_mode,
        "parallel_loads": loads,
    }


# ---- task bodies (module level: importable by tests and the benchmark) ---------------------------------
def resolve_partition(src: dict[str, Any], data_interval_start: datetime | None,
                      params: dict[str, Any] | None) -> dict[str, Any]:
    """Which day this run imports: the ``date`` param, else the local day its data interval starts."""
    from cdp_ingest.partition_days import MARKER, day_of_interval, parse_day, partition_prefix

    params = params or {}
    if params.get("date"):
        day, origin = parse_day(str(params["date"])), "date param"
    elif data_interval_start is not None:
        day, origin = day_of_interval(data_interval_start, ZoneInfo(src["timezone"])), "data interval"
    else:
        raise ValueError("this run has no data interval (no logical date): set the 'date' param (YYYY-MM-DD)")
    prefix = partition_prefix(src["url"], day)
    log.info("partition day %s (from the %s): %s", day, origin, prefix)
    return {"source": src["name"], "day": day.isoformat(), "prefix": prefix, "marker": prefix + MARKER,
            "force": bool(params.get("force")), "dry_run": bool(params.get("dry_run"))}


def marker_present(src: dict[str, Any], partition: dict[str, Any]) -> bool:
    return object_path(partition["marker"], src["conn_id"]).exists()


def list_partition_files(src: dict[str, Any], partition: dict[str, Any]) -> list[str]:
    """The day's Parquet files (sorted URLs); refuses to list a partition that has no ``_SUCCESS``."""
    from cdp_ingest.errors import FileLevelError
    from cdp_ingest.partition_days import is_data_file

    if not marker_present(src, partition):
        raise FileLevelError("no_data_file", f"{partition['marker']} is missing: the partition is incomplete "
                                             f"and is not read")
    base = object_path(partition["prefix"], src["conn_id"])
    files = sorted(p.as_uri() for p in base.iterdir() if is_data_file(p.name))
    if not files:
        log.warning("partition %s has a _SUCCESS marker but no Parquet files", partition["prefix"])
    log.info("partition %s: %s Parquet file(s)", partition["prefix"], len(files))
    activity_hooks.partition_day(src["store_conn_id"], src["name"], partition, activity_hooks.PICKED_UP,
                                 step="files listed", note=f"{len(files)} Parquet file(s)")
    return files


def download(src_path: Any, url: str, dest: Path) -> SourceUnit:
    """Copy one object to ``dest`` in bounded chunks, hashing it on the way (one read of the object,
    then random access on local disk, which Parquet needs)."""
    from cdp_ingest.errors import FileLevelError
    from cdp_ingest.ledger import SourceUnit

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open_path(src_path) as fh, open(tmp, "wb") as out:
            while chunk := fh.read(DOWNLOAD_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except FileNotFoundError as e:  # listed, then deleted (s3fs may only notice at the first read)
        tmp.unlink(missing_ok=True)
        raise FileLevelError("no_data_file", f"object not found: {url}") from e
    os.replace(tmp, dest)
    return SourceUnit(url, size, "sha256:" + digest.hexdigest())


def stage_partition_file(src: dict[str, Any], partition: dict[str, Any], file_url: str, *,
                         now: datetime | None = None) -> dict[str, Any]:
    """Fingerprint one partition file, open its ledger entry and stage its events (the transform step).

    Returns the staged dict ``BulkIndexOperator`` loads, or ``status: skipped`` when the ledger already
    committed this exact file (same URL, size and checksum) and ``force`` is off."""
    from cdp_ingest.errors import FileLevelError
    from cdp_ingest.ledger import Ledger
    from cdp_ingest.partitions import PartitionMapper, read_partition_file
    from cdp_ingest.pipeline import transform_unit
    from cdp_ingest_airflow.connections import store_from_connection

    store = store_from_connection(src["store_conn_id"])
    store.ensure_templates()
    ledger = Ledger(store)
    activity = activity_hooks.ActivityLog(store)
    name = file_url.rsplit("/", 1)[-1]
    local = (staging_root() / "partitions" / src["name"] / partition["day"] /
             f"{hashlib.sha256(file_url.encode()).hexdigest()[:12]}-{name}")
    unit_name = f"dt={partition['day']}/{name}"
    ref = activity_hooks.unit_ref(source="partition", unit=unit_name, account=src["name"],
                                  entry_id=activity_hooks.entry_id_for("partition", src["name"], unit_name),
                                  path=file_url, day=partition["day"], type="event")
    try:
        try:
            unit = download(object_path(file_url, src["conn_id"]), file_url, local)
        except Exception as e:
            activity_hooks.record_step(activity, ref, activity_hooks.FAILED, step="download",
                                       message=f"could not download {file_url}: {e.__class__.__name__}: {e}")
            raise
        entry = ledger.begin(unit, kind="event", source=f"partition:{src['name']}", account=src["name"],
                             force=bool(partition.get("force")))
        ref = {**ref, "entry_id": entry.import_id, "import_id": entry.import_id, "unit_id": entry.unit_id}
        base = {"import_id": entry.import_id, "unit_id": entry.unit_id, "path": file_url, "kind": "event",
                "day": partition["day"], "activity": ref}
        if entry.committed:
            log.info("%s already imported by %s (same size and checksum): skipped", file_url, entry.import_id)
            activity_hooks.record_step(activity, ref, activity_hooks.DONE, step="skipped",
                                       note=f"same file already imported by {entry.import_id}")
            return {**base, "status": "skipped", "rows_in": 0}
        activity_hooks.record_step(activity, ref, activity_hooks.PROCESSING, step="transform")
        work = staging_root() / entry.import_id
        mapper = PartitionMapper(source_id=src["source_id"], now=now or pendulum.now("UTC"))
        try:
            result = transform_unit(read_partition_file(str(local)), mapper.map_row, prefix=store.prefix,
                                    import_id=entry.import_id, staged_path=work / "staged.parquet",
                                    error_path=work / "transform-errors.csv", max_cell_bytes=store.max_cell_bytes,
                                    write_mode=src.get("write_mode", "create"))
        except Exception as e:
            ledger.fail(entry, f"{e.__class__.__name__}: {e}")
            activity_hooks.record_step(activity, ref, activity_hooks.FAILED, step="transform",
                                       error_code=getattr(e, "code", "internal"),
                                       message=f"{e.__class__.__name__}: {e}")
            if isinstance(e, FileLevelError) and e.code != "internal":
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(str(e)) from e  # retrying cannot fix the file
            raise
    finally:
        local.unlink(missing_ok=True)
    log.info("staged %s: rows_in=%s accepted=%s rejected=%s", file_url, result.rows_in, result.accepted,
             result.rejected)
    activity_hooks.record_step(activity, ref, activity_hooks.PROCESSING, step="staged", rows_in=result.rows_in,
                               rejected=result.rejected)
    from cdp_ingest_airflow.staging import publish  # CDP_STAGING_URL: the load may run on another host

    result.staged = publish(result.staged, entry.import_id)
    result.error_file = publish(result.error_file, entry.import_id)
    return {**base, **result.to_dict(), "status": "staged"}


def record_day(src: dict[str, Any], partition: dict[str, Any], staged: list[dict[str, Any]],
               loaded: list[dict[str, Any]]) -> dict[str, Any]:
    """The day's accounting: per-file ledger entries re-read and checked, totals logged and notified."""
    from cdp_ingest.errors import AccountingError
    from cdp_ingest.ledger import Ledger
    from cdp_ingest.partition_days import summarize_day
    from cdp_ingest_airflow.connections import store_from_connection

    head = {"source": src["name"], "day": partition["day"], "prefix": partition["prefix"]}
    if partition.get("dry_run"):
        from cdp_ingest_airflow.staging import remove

        for s in staged:  # nothing will load them; a real run stages the files again (local or CDP_STAGING_URL)
            remove(s.get("staged"))
            if s.get("error_file") and "://" in s["error_file"]:
                remove(s["error_file"])
        summary = {**head, "dry_run": True, "files": len(staged),
                   **{k: sum(int(s.get(k) or 0) for s in staged) for k in ("rows_in", "accepted", "rejected")}}
        log.info("dry run of %s %s: files=%s rows_in=%s accepted=%s rejected=%s", src["name"], partition["day"],
                 summary["files"], summary["rows_in"], summary["accepted"], summary["rejected"])
        activity_hooks.partition_day(src["store_conn_id"], src["name"], partition, activity_hooks.DONE,
                                     step="dry run", message="dry run: staged and validated, nothing loaded")
        return summary
    ledger = Ledger(store_from_connection(src["store_conn_id"]))
    for r in loaded:
        entry = ledger.get(r["unit_id"])
        if entry is None or not entry.committed:
            raise AccountingError(f"{r['path']}: ledger entry {r['unit_id']} is not committed")
        entry.accounting.check()
    summary = {**head, **summarize_day(loaded)}
    log.info("partition %s %s: files=%s (skipped %s) rows_in=%s loaded=%s rejected=%s duplicates=%s",
             src["name"], partition["day"], summary["files"], summary["skipped"], summary["rows_in"],
             summary["loaded"], summary["rejected"], summary["duplicates"])
    sent = False
    try:
        sent = post_webhook("partition-loaded", summary, conn_id=src["webhook_conn_id"])
    except Exception:  # the day is loaded and recorded; a lost notification must not undo that
        log.exception("could not send the partition-loaded notification")
    activity_hooks.partition_day(src["store_conn_id"], src["name"], partition, activity_hooks.DONE,
                                 step="committed", note=f"{summary['files']} file(s), {summary['skipped']} skipped",
                                 **{c: summary[c] for c in ("rows_in", "loaded", "rejected", "duplicates")},
                                 **({"notified": "partition-loaded"} if sent else {}))
    return summary


# ---- deadline alert callback (runs in the triggerer) ------------------------------------------------
async def partition_deadline_missed(context: dict[str, Any] | None = None, *, source: str, timezone: str,
                                    load_deadline: str, webhook_conn_id: str = WEBHOOK_CONN_ID) -> dict[str, Any]:
    """Deadline alert callback: the day was not loaded by ``load_deadline`` local time.

    ``context`` is what the scheduler hands over (``{"dag_run": <DAGRunResponse as JSON>, "deadline": ...}``).
    Backfill runs are only logged: a past day cannot meet a deadline that passed before it was requested."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from cdp_ingest.partition_days import day_of_interval, local_deadline, parse_day

    context = context or {}
    run = context.get("dag_run") or {}
    tz = ZoneInfo(timezone)
    conf = run.get("conf") or {}
    day: date | None = None
    if conf.get("date"):
        day = parse_day(str(conf["date"]))
    elif run.get("data_interval_start"):
        day = day_of_interval(pendulum.parse(str(run["data_interval_start"])), tz)
    due = local_deadline(day, load_deadline, tz) if day else None
    payload = {"source": source, "dag_id": run.get("dag_id"), "run_id": run.get("run_id"),
               "run_type": run.get("run_type"), "state": run.get("state"), "day": day.isoformat() if day else None,
               "deadline_local": due.isoformat() if due else None,
               "deadline_time": str((context.get("deadline") or {}).get("deadline_time"))}
    if run.get("run_type") == "backfill":
        log.info("deadline passed for backfill run %s of %s (day %s): not notified", payload["run_id"], source,
                 payload["day"])
        return {**payload, "notified": False}
    log.warning("partition %s day %s not loaded by %s (run %s)", source, payload["day"], payload["deadline_local"],
                payload["run_id"])
    try:
        conn = await BaseHook.aget_connection(webhook_conn_id)
    except AirflowNotFoundException:
        log.info("no %s connection: deadline alert only logged", webhook_conn_id)
        return {**payload, "notified": False}
    await asyncio.to_thread(send_to_connection, conn, "partition-deadline-missed", payload)
    return {**payload, "notified": True}


# ---- the DAG --------------------------------------------------------------------------------------
def _doc(src: dict[str, Any]) -> str:
    deadline = (f"by **{src['load_deadline']} {src['timezone']}** on the day after the partition day; a "
                f"deadline alert posts `partition-deadline-missed` to `{src['webhook_conn_id']}` otherwise"
                if src["load_deadline"] else "no load deadline configured")
    return f"""### Daily partition import `{src['name']}`

{src['description']}

Imports the Parquet event partitions `{src['url']}/dt=YYYY-MM-DD/*.parquet` (connection
`{src['conn_id']}`) into the Tracardi event indices of connection `{src['store_conn_id']}`
(`<prefix>event-YYYY-MM`, by event time). Schedule `{src['schedule']}` ({src['timezone']}); each run
imports the **local day on which its data interval starts** (the day before the run), once
`dt=<day>/_SUCCESS` exists — a partition without it is never read. Load deadline: {deadline}.

Each file is one source unit in the ledger (URL + size + SHA-256): an unchanged file is skipped on a
rerun, a replaced file is imported again, and every event is written with `_id = insert_id`, so reruns
and backfills leave exactly one document per insert_id. Rejected rows go to
`{src['error_dir']}/<file>.<import>.errors.csv` with a `Failure Description`.

Params: `date` (YYYY-MM-DD, overrides the data interval), `dry_run` (stage and validate only),
`force` (re-import files the ledger already committed). Backfill: `airflow backfill create --dag-id
partition_import_{src['name']} --from-date <first day> --to-date <last day>`.
"""


def build_dag(name: str, cfg: dict[str, Any]) -> DAG:
    src = validate_source(name, cfg)
    tags = ["cdp-ingest", "partitions", "import", {"s3": "s3", "gs": "gcs"}.get(src["scheme"], "local")]
    deadline = None
    if src["load_deadline"]:
        deadline = DeadlineAlert(
            reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
            interval=deadline_interval(src["schedule"], src["load_deadline"]),
            callback=AsyncCallback(partition_deadline_missed, kwargs={
                "source": name, "timezone": src["timezone"], "load_deadline": src["load_deadline"],
                "webhook_conn_id": src["webhook_conn_id"]}),
            name=f"{name}-loaded-by-{src['load_deadline']}",
        )
    start = src["start_date"]
    sensor = src["sensor"]
    with ImportDAG(
        dag_id=f"partition_import_{name}",
        schedule=CronDataIntervalTimetable(_CRON_PRESETS.get(src["schedule"], src["schedule"]),
                                           timezone=src["timezone"]),
        start_date=pendulum.datetime(start.year, start.month, start.day, tz=src["timezone"]),
        catchup=False,
        max_active_runs=src["max_active_runs"],
        default_args=DEFAULT_ARGS,
        tags=tags,
        doc_md=_doc(src),
        deadline=deadline,
        params={
            "date": Param(None, type=["null", "string"], pattern=DAY_RE,
                          description="Partition day YYYY-MM-DD; empty = the day of the run's data interval"),
            "dry_run": Param(False, type="boolean", description="Stage and validate only; load nothing"),
            "force": Param(False, type="boolean", description="Re-import files the ledger already committed"),
        },
    ) as dag:

        # multiple_outputs=False: a returned dict is one XCom. Airflow infers multiple outputs from a dict return
        # annotation and would push each key as an XCom of its own too (an execution-API call and a row per key).
        @task(task_id="resolve_partition", multiple_outputs=False)
        def resolve(data_interval_start: datetime | None = None, params: dict[str, Any] | None = None) -> dict:
            return resolve_partition(src, data_interval_start, params)

        # a day that is never picked up (no _SUCCESS in time, unlistable) is recorded and notified
        not_picked_up = [on_task_failure, functools.partial(
            activity_hooks.partition_day_failed, source=name, store_conn_id=src["store_conn_id"],
            webhook_conn_id=src["webhook_conn_id"], timeout=float(sensor["timeout"]))]

        @task.sensor(task_id="wait_for_success", mode=sensor["mode"], poke_interval=float(sensor["poke_interval"]),
                     timeout=float(sensor["timeout"]), on_failure_callback=not_picked_up)
        def wait_for_success(partition: dict[str, Any]) -> PokeReturnValue:
            done = marker_present(src, partition)
            if not done:
                log.info("waiting for %s", partition["marker"])
                activity_hooks.partition_waiting(src["store_conn_id"], name, partition)
            return PokeReturnValue(is_done=done)

        @task(task_id="list_files", on_failure_callback=not_picked_up)
        def list_files(partition: dict[str, Any]) -> list[str]:
            return list_partition_files(src, partition)

        @task(task_id="transform", map_index_template="{{ file_name }}", multiple_outputs=False)
        def transform(file_url: str, partition: dict[str, Any]) -> dict[str, Any]:
            from airflow.sdk import get_current_context

            get_current_context()["file_name"] = file_url.rsplit("/", 1)[-1]  # type: ignore[typeddict-unknown-key]
            return stage_partition_file(src, partition, file_url)

        @task(task_id="validate", map_index_template="{{ file_name }}", multiple_outputs=False)
        def validate(result: dict[str, Any], partition: dict[str, Any]) -> dict[str, Any]:
            from airflow.sdk import get_current_context
            from airflow.sdk.exceptions import AirflowSkipException

            get_current_context()["file_name"] = result["path"].rsplit("/", 1)[-1]  # type: ignore[typeddict-unknown-key]
            checked = activity_hooks.validated(result, max_reject_ratio=src["max_reject_ratio"],
                                               store_conn_id=src["store_conn_id"])
            if partition.get("dry_run"):
                raise AirflowSkipException(f"dry run: {result['path']} staged and validated, not loaded")
            return checked

        outputs: dict[str, Any] = {}

        # A mapped task group, not three mapped tasks: file i's load waits for file i's validate only,
        # so one bad file fails its own chain while the other files of the day are still loaded.
        @task_group(group_id="file")
        def import_file(file_url: str, partition: dict[str, Any]):
            staged = outputs["staged"] = transform(file_url, partition)
            # The store is what a day's load waits on: more loads at once than it can take only make them
            # fight over it, while the next files' transforms (CPU on the worker) run ahead meanwhile.
            load = BulkIndexOperator(task_id="load", store_conn_id=src["store_conn_id"], error_dir=src["error_dir"],
                                     staged=validate(staged, partition),
                                     max_active_tis_per_dagrun=src["parallel_loads"])
            return load.output

        @task(task_id="record_accounting", trigger_rule="none_failed", multiple_outputs=False)
        def record_accounting(partition: dict[str, Any], loaded: list[dict[str, Any]] | None = None,
                              staged: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            return record_day(src, partition, mapped_outputs(staged), mapped_outputs(loaded))

        partition = resolve()
        files = list_files(partition)
        wait_for_success(partition) >> files
        loaded = import_file.partial(partition=partition).expand(file_url=files)
        record_accounting(partition, loaded, outputs["staged"])
    return dag


def config_path() -> Path:
    return Path(os.environ.get("CDP_PARTITION_SOURCES", ROOT / "config" / "partition_sources.yaml"))


def build_all(path: str | Path | None = None) -> dict[str, DAG]:
    cfg = yaml.safe_load(Path(path or config_path()).read_text()) or {}
    return {f"partition_import_{name}": build_dag(name, c) for name, c in (cfg.get("sources") or {}).items()}
