"""DAG factory for historical replays (SPEC §5; config/replays.yaml): one ``replay_<name>`` DAG each.

    wait_for_archive (sensor) → list_units
        → unit (task group mapped over the archive files: transform → validate → replay) → finalize

- ``wait_for_archive`` pokes until the archive location holds files (and its ``marker``, e.g. ``_SUCCESS``,
  when one is configured). Sources: a folder under the landing folder or an absolute path, ``s3://`` /
  ``gs://`` prefixes through an Airflow connection (Segment's own S3 archive layout: date folders of
  ``.gz`` JSON lines), or ``store:`` — the events already in our own store for a time window.
- ``transform`` fingerprints one file (the ledger's source unit), skips one already committed, and
  writes the replay plan (validated, rewritten messages in pre-built batches) to the staging folder.
- ``validate`` checks the plan's counts and reject ratio; with ``dry_run`` it logs the batch plan and
  stops there: nothing is sent.
- ``replay`` is the ``ReplayOperator`` (checkpointed, resumable sends; ledger commit after the accounting check).
- ``finalize`` sums the units, posts ``replay-finished`` to the webhook and returns the totals.

Parse time stays side-effect free: the YAML is read and checked, nothing is connected or imported.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import DAG, Param, PokeReturnValue, task, task_group

from cdp_ingest_airflow.config_checks import mapping_of, ratio_of, sensor_of
from cdp_ingest_airflow.dag_base import mapped_outputs
from cdp_ingest_airflow.defaults import DEFAULT_ARGS
from cdp_ingest_airflow.notify import WEBHOOK_CONN_ID, on_task_failure, post_webhook
from cdp_ingest_airflow.objectstore import Readable, object_path, open_path
from cdp_ingest_airflow.operators import staging_root
from cdp_ingest_airflow.replay_operator import ReplayOperator, record_activity

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SETTING_KEYS = ("historical", "integrations", "max_batch_bytes", "max_batch_messages", "max_message_bytes",
                "rate_limit", "concurrency", "max_retries", "backoff_seconds", "max_backoff_seconds",
                "dedup_window", "workers", "source_id")
DAY_RE = r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?)?$"


def landing_root() -> Path:
    return Path(os.environ.get("CDP_LANDING_DIR", ROOT / "landing"))


def config_path() -> Path:
    return Path(os.environ.get("CDP_REPLAYS", ROOT / "config" / "replays.yaml"))


# ---- configuration --------------------------------------------------------------------------------
def validate_replay(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Check one replay entry and fill in defaults (pure: no connection, no network)."""
    from cdp_ingest.segment import ReplaySettings

    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"replay name {name!r}: use lowercase letters, digits and _")
    where = f"replay {name}"
    source = dict(mapping_of(cfg.get("source"), f"{where}: source"))
    url = str(source.get("url") or "")
    if not url:
        raise ValueError(f"replay {name}: source.url is required (a folder, s3://, gs:// or store:)")
    if url != "store:" and "://" not in url and not os.path.isabs(url):
        url = str(landing_root() / url)
    if url.startswith(("s3://", "gs://")) and not source.get("conn_id"):
        raise ValueError(f"replay {name}: source.conn_id (aws / google_cloud_platform connection) is required")
    dest = dict(mapping_of(cfg.get("destination"), f"{where}: destination"))
    if dest.get("type") not in ("segment", "tracardi"):
        raise ValueError(f"replay {name}: destination.type must be segment or tracardi")
    if not dest.get("conn_id"):
        raise ValueError(f"replay {name}: destination.conn_id (an http connection) is required")
    settings = {k: dest[k] for k in SETTING_KEYS if k in dest}
    settings.update(mapping_of(cfg.get("settings"), f"{where}: settings"))
    if "integrations" in cfg:
        settings["integrations"] = cfg["integrations"]
    # refuses historical: false, bad limits and unknown settings at parse time, before any run
    ReplaySettings.from_dict(name, {k: v for k, v in settings.items() if k != "source_id"})
    ratio = ratio_of(cfg.get("max_reject_ratio", 0.1), f"{where}: max_reject_ratio")
    sensor = sensor_of(cfg.get("sensor"), where, {"mode": "reschedule", "poke_interval": 60, "timeout": 3600})
    window = mapping_of(source.get("window"), f"{where}: source.window")
    return {
        "name": name, "description": cfg.get("description", ""), "url": url.rstrip("/") if url != "store:" else url,
        "conn_id": source.get("conn_id"), "marker": source.get("marker"), "mapping": source.get("mapping"),
        "window": window, "destination": dest["type"], "http_conn_id": dest["conn_id"],
        "settings": settings, "store_conn_id": cfg.get("store_conn_id", "cdp_opensearch"),
        "schedule": cfg.get("schedule"), "max_reject_ratio": ratio, "sensor": sensor,
        "error_dir": str(cfg.get("error_dir") or landing_root() / "replays" / name / "errors"),
        "webhook_conn_id": cfg.get("webhook_conn_id", WEBHOOK_CONN_ID),
    }


# ---- task bodies (module level: importable by tests) -----------------------------------------------
def _path(url: str, conn_id: str | None) -> Any:
    """A local path, or an ObjectStoragePath for s3:// / gs:// through the source's connection."""
    if "://" not in url:
        return Path(url)
    return object_path(url, conn_id)


def archive_location(rp: dict[str, Any], params: dict[str, Any] | None) -> str:
    path = (params or {}).get("path")
    if not path:
        return rp["url"]
    if "://" not in path and path != "store:" and not os.path.isabs(path):
        path = str(landing_root() / path)
    return str(path)


def list_units(rp: dict[str, Any], params: dict[str, Any] | None) -> list[str]:
    """The archive files to replay (sorted); for ``store:`` one unit for the time window."""
    from cdp_ingest.segment import is_archive_name

    location = archive_location(rp, params)
    if location == "store:":
        start, end = store_window(rp, params)
        return [f"store:{start.isoformat()}/{end.isoformat()}"]
    base = _path(location, rp["conn_id"])
    if rp["marker"] and not (base / rp["marker"]).exists():
        return []
    if base.is_file():
        return [str(location)]
    if not base.exists():
        return []
    files = [p for p in base.rglob("*") if p.is_file() and is_archive_name(p.name)]
    return sorted(p.as_uri() if "://" in location else str(p) for p in files)


def store_window(rp: dict[str, Any], params: dict[str, Any] | None) -> tuple[datetime, datetime]:
    from datetime import UTC

    params = params or {}
    start = params.get("start") or rp["window"].get("start")
    end = params.get("end") or rp["window"].get("end")
    if not start or not end:
        raise ValueError(f"replay {rp['name']}: a store replay needs a time window (params start and end)")
    s, e = (datetime.fromisoformat(str(v)).replace(tzinfo=UTC) for v in (start, end))
    if e <= s:
        raise ValueError(f"replay {rp['name']}: the window end {e} is not after its start {s}")
    return s, e


def plan_unit(rp: dict[str, Any], unit_path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fingerprint one archive file (or store window), open its ledger entry, write its replay plan."""
    from cdp_ingest.errors import FileLevelError
    from cdp_ingest.ledger import Ledger, SourceUnit
    from cdp_ingest.replay import ReplaySettings, csv_records, jsonl_records, plan_replay, store_records
    from cdp_ingest_airflow.connections import store_from_connection

    params = params or {}
    settings = ReplaySettings.from_dict(rp["name"], {k: v for k, v in rp["settings"].items() if k != "source_id"})
    store = store_from_connection(rp["store_conn_id"])
    store.ensure_templates()
    ledger = Ledger(store)
    if unit_path.startswith("store:"):
        start, end = store_window(rp, params)
        events = store_from_connection(rp["window"].get("conn_id") or rp["store_conn_id"])
        count = events.count(f"{events.prefix}event-*", {"range": {"metadata.time.insert": {
            "gte": start.isoformat(), "lt": end.isoformat()}}})
        unit = SourceUnit(unit_path, count, "window:" + hashlib.sha256(unit_path.encode()).hexdigest())
        records: Any = store_records(events, start=start, end=end)
    else:
        src = _path(unit_path, rp["conn_id"])
        try:
            unit = SourceUnit.from_file(unit_path, opener=lambda _p, mode: open_path(src, mode))
        except FileNotFoundError as e:
            raise FileLevelError("no_data_file", f"archive file not found: {unit_path}") from e
        if unit_path.lower().removesuffix(".gz").endswith(".csv"):
            if not rp["mapping"]:
                raise FileLevelError("bad_manifest", f"{unit_path}: CSV archives need source.mapping")
            with open(rp["mapping"] if os.path.isabs(rp["mapping"]) else ROOT / rp["mapping"]) as fh:
                records = csv_records(Readable(src), yaml.safe_load(fh))
        else:
            records = jsonl_records(Readable(src))
    entry = ledger.begin(unit, kind="replay", source=f"replay:{rp['name']}", account=rp["name"],
                         force=bool(params.get("force")))
    base = {"replay": rp["name"], "import_id": entry.import_id, "unit_id": entry.unit_id, "path": unit_path,
            "kind": "replay", "dry_run": bool(params.get("dry_run"))}
    if entry.committed:
        log.info("%s already replayed by %s: skipped", unit_path, entry.import_id)
        return {**base, "status": "skipped", "rows_in": 0}
    record_activity(store, rp["name"], unit_path, "processing", step="transform", import_id=entry.import_id,
                    unit_id=entry.unit_id)
    work = staging_root() / "replays" / entry.import_id
    try:
        plan = plan_replay(records, settings, unit=unit_path, staged_path=work / "plan.parquet",
                           error_path=work / "plan-errors.csv", source_label=unit_path)
    except Exception as e:
        ledger.fail(entry, f"{e.__class__.__name__}: {e}")
        record_activity(store, rp["name"], unit_path, "failed", step="transform", message=str(e)[:500],
                        error_code=getattr(e, "code", None) or "internal")
        raise
    return {**base, "status": "planned", "rows_in": plan.rows_in, "plan": plan.to_dict()}


def check_plan(rp: dict[str, Any], staged: dict[str, Any]) -> dict[str, Any]:
    """The validate step: counts add up, the reject ratio is acceptable; a dry run stops here."""
    if staged.get("status") == "skipped":
        return staged
    p = staged["plan"]
    if p["rows_in"] != p["accepted"] + p["rejected"] + p["duplicates"]:
        raise ValueError(f"{staged['path']}: rows_in={p['rows_in']} != accepted {p['accepted']} + rejected "
                         f"{p['rejected']} + duplicates {p['duplicates']}")
    if p["rows_in"] and p["rejected"] / p["rows_in"] > rp["max_reject_ratio"]:
        raise ValueError(f"{staged['path']}: {p['rejected']} of {p['rows_in']} messages refused, above the "
                         f"{rp['max_reject_ratio']:.0%} limit; see {p['error_file']}")
    log.info("plan for %s: rows_in=%s accepted=%s rejected=%s duplicates=%s missing_timestamp=%s, %s batches, "
             "%s bytes (largest %s)", staged["path"], p["rows_in"], p["accepted"], p["rejected"], p["duplicates"],
             p["missing_timestamp"], p["batches"], p["payload_bytes"], p["largest_batch_bytes"])
    return staged


def summarize(rp: dict[str, Any], planned: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rows_in", "sent", "rejected", "duplicates", "missing_timestamp")
    if any(p.get("dry_run") for p in planned):
        totals = {k: sum(int((p.get("plan") or {}).get(k) or 0) for p in planned)
                  for k in ("rows_in", "accepted", "rejected", "duplicates", "missing_timestamp", "batches")}
        summary = {"replay": rp["name"], "dry_run": True, "units": len(planned), **totals}
        log.info("dry run of replay %s: %s", rp["name"], summary)
        return summary
    summary = {"replay": rp["name"], "destination": rp["destination"], "units": len(replayed),
               "skipped": sum(r.get("status") == "skipped" for r in replayed),
               **{k: sum(int(r.get(k) or 0) for r in replayed) for k in keys},
               "error_files": [r["error_file"] for r in replayed if r.get("error_file")]}
    log.info("replay %s: units=%s rows_in=%s sent=%s rejected=%s duplicates=%s missing_timestamp=%s", rp["name"],
             summary["units"], summary["rows_in"], summary["sent"], summary["rejected"], summary["duplicates"],
             summary["missing_timestamp"])
    try:
        post_webhook("replay-finished", summary, conn_id=rp["webhook_conn_id"])
    except Exception:  # the replay is done and recorded; a lost notification must not undo that
        log.exception("could not send the replay-finished notification")
    return summary


def archive_wait_failed(context: dict[str, Any], *, rp: dict[str, Any]) -> None:
    """Failure callback of the sensor: the archive (or its marker) never came; on the activity log."""
    try:
        from cdp_ingest_airflow.connections import store_from_connection

        params = (context or {}).get("params") or {}
        location = archive_location(rp, params)
        missing = f"{location}/{rp['marker']}" if rp["marker"] else f"archive files under {location}"
        record_activity(store_from_connection(rp["store_conn_id"]), rp["name"], location, "timed_out",
                        step="wait_for_archive", missing=missing,
                        message=f"nothing to replay: {missing} did not appear within {rp['sensor']['timeout']} s")
    except Exception:
        log.warning("could not record the replay wait timeout", exc_info=True)


# ---- the DAG --------------------------------------------------------------------------------------
def _doc(rp: dict[str, Any]) -> str:
    source = ("the events already in this store (`<prefix>event-*`) for the window in params `start`/`end`"
              if rp["url"] == "store:" else f"`{rp['url']}`")
    return f"""### Historical replay `{rp['name']}`

{rp['description']}

Replays the Segment-spec messages of {source} to the **{rp['destination']}** receiver of connection
`{rp['http_conn_id']}`, keeping each message's original `timestamp`. Archived `sentAt`/`messageId`/
`projectId` are dropped, every message gets a deterministic new `messageId` (a rerun is deduplicated by
the receiver), `sentAt` is set at send time, batches stay ≤ 500 KB and ≤ 2500 messages.

Refused messages (no identity, > 32 KB, bad timestamp, or a 400 from the receiver, isolated by
bisection) go to `{rp['error_dir']}/<file>.<import>.errors.csv`. A killed or retried `replay` task
resumes after its last acknowledged batch. Params: `path` (another archive), `start`/`end` (store
window), `dry_run` (counts, validation and the batch plan; nothing sent), `force` (replay again).
"""


def build_dag(name: str, cfg: dict[str, Any]) -> DAG:
    rp = validate_replay(name, cfg)
    sensor = rp["sensor"]
    with DAG(
        dag_id=f"replay_{name}",
        schedule=rp["schedule"],
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["cdp-ingest", "replay", rp["destination"]],
        doc_md=_doc(rp),
        dagrun_timeout=timedelta(hours=24),
        params={
            "path": Param(None, type=["null", "string"], description="Archive file/folder/URL instead of the "
                                                                     "configured one ('store:' = our own events)"),
            "start": Param(None, type=["null", "string"], pattern=DAY_RE, description="Store window start (UTC)"),
            "end": Param(None, type=["null", "string"], pattern=DAY_RE, description="Store window end (UTC)"),
            "dry_run": Param(False, type="boolean", description="Validate and plan only; send nothing"),
            "force": Param(False, type="boolean", description="Replay units the ledger already committed"),
        },
    ) as dag:

        @task.sensor(task_id="wait_for_archive", mode=sensor["mode"], poke_interval=float(sensor["poke_interval"]),
                     timeout=float(sensor["timeout"]),
                     on_failure_callback=[on_task_failure, functools.partial(archive_wait_failed, rp=rp)])
        def wait_for_archive(params: dict[str, Any] | None = None) -> PokeReturnValue:
            units = list_units(rp, params)
            if not units:
                log.info("waiting for archive files under %s", archive_location(rp, params))
            return PokeReturnValue(is_done=bool(units))

        @task(task_id="list_units")
        def list_archive_units(params: dict[str, Any] | None = None) -> list[str]:
            return list_units(rp, params)

        # multiple_outputs=False: a returned dict is one XCom. Airflow infers multiple outputs from a dict return
        # annotation and would push each key as an XCom of its own too (an execution-API call and a row per key).
        @task(task_id="transform", map_index_template="{{ unit_name }}", multiple_outputs=False)
        def transform(unit_path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            from airflow.sdk import get_current_context

            get_current_context()["unit_name"] = unit_path.rsplit("/", 1)[-1]  # type: ignore[typeddict-unknown-key]
            return plan_unit(rp, unit_path, params)

        @task(task_id="validate", multiple_outputs=False)
        def validate(staged: dict[str, Any]) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowSkipException

            checked = check_plan(rp, staged)
            if staged.get("dry_run"):
                raise AirflowSkipException(f"dry run: {staged['path']} planned and validated, nothing sent")
            return checked

        outputs: dict[str, Any] = {}

        @task_group(group_id="unit")
        def replay_unit(unit_path: str):
            planned = outputs["planned"] = transform(unit_path)
            sent = ReplayOperator(task_id="replay", staged=validate(planned), destination=rp["destination"],
                                  http_conn_id=rp["http_conn_id"], settings=rp["settings"],
                                  store_conn_id=rp["store_conn_id"], error_dir=rp["error_dir"])
            return sent.output

        @task(task_id="finalize", trigger_rule="none_failed", multiple_outputs=False)
        def finalize(replayed: list[dict[str, Any]] | None = None,
                     planned: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            return summarize(rp, mapped_outputs(planned), mapped_outputs(replayed))

        units = list_archive_units()
        wait_for_archive() >> units
        replayed = replay_unit.expand(unit_path=units)
        finalize(replayed, outputs["planned"])
    return dag


def build_all(path: str | Path | None = None) -> dict[str, DAG]:
    cfg = yaml.safe_load(Path(path or config_path()).read_text()) or {}
    return {f"replay_{name}": build_dag(name, c) for name, c in (cfg.get("replays") or {}).items()}
