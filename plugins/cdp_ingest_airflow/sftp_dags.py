"""DAG factory for SFTP drop-folder imports (SPEC §2): one DAG per client account of
``config/sftp_accounts.yaml`` (or ``$CDP_SFTP_ACCOUNTS``), dag id ``sftp_import_<account>``.

Each run imports the oldest ready manifest of the account folder (upload order; ``max_active_runs=1``
keeps the order across runs):

    wait_for_manifest (sensor) → parse_manifest (ManifestParseOperator) → transform → validate
    → load (ManifestLoadOperator) → finalize (error CSV to errors/, archive, activity log, notification)

``finalize`` runs even when an earlier step failed (not when the sensor found nothing) so every
picked-up manifest ends done or failed, archived, logged and notified. Deadline alerts send the
"still processing" notification every ``still_processing_hours`` while a run lasts.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, task

from cdp_ingest_airflow.activity_hooks import sftp_wait_timed_out
from cdp_ingest_airflow.dag_base import ImportDAG
from cdp_ingest_airflow.defaults import DEFAULT_ARGS
from cdp_ingest_airflow.manifest_operator import ManifestLoadOperator, ManifestParseOperator, ManifestSensor
from cdp_ingest_airflow.notifiers import on_run_failure, still_processing

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {
    "sftp_conn_id": "cdp_sftp",
    "store_conn_id": "cdp_opensearch",
    "smtp_conn_id": "cdp_smtp",
    "webhook_conn_id": "cdp_webhook",
    "schedule": "*/5 * * * *",
    "max_file_bytes": 5 * 1024**3,
    "settle_seconds": 30,
    "data_file_grace_seconds": 900,
    "poke_interval": 30,
    "sensor_timeout": 240,
    "sensor_mode": "reschedule",
    "still_processing_hours": 2,
    "max_run_hours": 24,
    "contact_email": None,
    "description": "",
}
KEYS = {*DEFAULTS, "folder"}
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def account_config(name: str, raw: dict[str, Any] | None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """One account's settings over the file's ``defaults`` over ``DEFAULTS``; unknown keys are refused."""
    if not ACCOUNT_NAME.fullmatch(name):
        raise ValueError(f"sftp account {name!r}: use letters, digits, '_', '-' or '.' (it becomes part of a dag id)")
    raw = dict(raw or {})
    unknown = set(raw) - KEYS
    if unknown:
        raise ValueError(f"sftp account {name}: unknown keys {sorted(unknown)} (allowed: {sorted(KEYS)})")
    cfg = {**DEFAULTS, **(defaults or {}), **raw}
    cfg.setdefault("folder", name)
    folder = str(cfg["folder"]).strip("/")
    if not folder or ".." in folder.split("/"):
        raise ValueError(f"sftp account {name}: folder must be a path inside the SFTP root, got {cfg['folder']!r}")
    cfg["folder"] = folder
    if cfg["still_processing_hours"] <= 0 or cfg["max_run_hours"] <= cfg["still_processing_hours"]:
        raise ValueError(f"sftp account {name}: need 0 < still_processing_hours < max_run_hours")
    return cfg


def _doc(name: str, cfg: dict[str, Any]) -> str:
    return f"""### SFTP import `{name}`

{cfg.get('description') or ''}

Imports the files client account **{name}** uploads to SFTP folder `{cfg['folder']}/` (connection
`{cfg['sftp_conn_id']}`): a CSV data file, then a JSON `.manifest` naming it (`fileName`, `type` =
`profile` | `event`, `clientEmail`, optional `columns`). Each run takes the **oldest** ready manifest
(upload order) and imports its file into the store of connection `{cfg['store_conn_id']}`.

Steps:

- `wait_for_manifest`: waits for a `.manifest` whose data file is there and unchanged for
  {cfg['settle_seconds']} s (a missing data file is waited for {cfg['data_file_grace_seconds']} s);
- `parse_manifest`: validates the manifest, refuses reused names, pairs and downloads the data file,
  opens the ledger entry;
- `transform`: maps every row (SPEC §2 rules) to profile operations or events: staged Parquet + error CSV;
- `validate`: the counts add up;
- `load`: bulk load (profiles merged in file order; events into monthly indices), accounting check, commit;
- `finalize`: error CSV to `{cfg['folder']}/errors/`, files to `processed/<day>/<manifest>/` (or `failed/`),
  activity log, email + webhook.

Notifications go to the manifest's `clientEmail` (fallback `{cfg.get('contact_email') or 'none'}`) and webhook
`{cfg['webhook_conn_id']}`: picked up, still processing every {cfg['still_processing_hours']} h, succeeded
with counts, failed with the reason and the error file. See docs/sftp.md.
"""


def build_dag(name: str, cfg: dict[str, Any]) -> DAG:
    conns = {k: cfg[k] for k in ("store_conn_id", "smtp_conn_id", "webhook_conn_id")}
    every = int(cfg["still_processing_hours"])
    deadlines = [
        DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(hours=h),
                      callback=AsyncCallback(still_processing, kwargs={"hours": h, **conns}),
                      name=f"still processing after {h} h")
        for h in range(every, int(cfg["max_run_hours"]), every)
    ]
    with ImportDAG(
        dag_id=f"sftp_import_{name}",
        schedule=cfg["schedule"],
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["cdp-ingest", "sftp", "import"],
        doc_md=_doc(name, cfg),
        dagrun_timeout=timedelta(hours=int(cfg["max_run_hours"])),
        deadline=deadlines,
        on_failure_callback=functools.partial(on_run_failure, contact_email=cfg.get("contact_email"), **conns),
    ) as dag:
        wait = ManifestSensor(
            task_id="wait_for_manifest", account=name, folder=cfg["folder"], sftp_conn_id=cfg["sftp_conn_id"],
            store_conn_id=cfg["store_conn_id"], settle_seconds=float(cfg["settle_seconds"]),
            data_file_grace_seconds=float(cfg["data_file_grace_seconds"]), poke_interval=float(cfg["poke_interval"]),
            timeout=float(cfg["sensor_timeout"]), mode=cfg["sensor_mode"], soft_fail=True,
            # a timeout skips the run; files still waiting (for a manifest, or a manifest's data file) are
            # recorded and notified with what is missing
            on_skipped_callback=functools.partial(sftp_wait_timed_out, account=name,
                                                  contact_email=cfg.get("contact_email"), **conns),
        )
        parse = ManifestParseOperator(
            task_id="parse_manifest", sensed=wait.output, account=name, folder=cfg["folder"],
            sftp_conn_id=cfg["sftp_conn_id"], contact_email=cfg.get("contact_email"),
            max_file_bytes=int(cfg["max_file_bytes"]), **conns,
        )

        # multiple_outputs=False: a returned dict is one XCom. Airflow infers multiple outputs from a dict return
        # annotation and would push each key as an XCom of its own too (an execution-API call and a row per key).
        @task(task_id="transform", multiple_outputs=False)
        def transform(ticket: dict[str, Any], logical_date: Any = None, dag_run: Any = None) -> dict[str, Any]:
            from cdp_ingest_airflow.manifest_operator import processing_time, stage_rows

            now = processing_time({"logical_date": logical_date, "dag_run": dag_run})
            return stage_rows(ticket, store_conn_id=cfg["store_conn_id"], now=now)

        @task(task_id="validate", multiple_outputs=False)
        def validate(staged: dict[str, Any]) -> dict[str, Any]:
            from cdp_ingest_airflow.operators import validate_stage

            # SPEC §2: rejected rows never stop a file, so no reject-ratio limit here.
            return validate_stage(staged, max_reject_ratio=1.0)

        staged = validate(transform(parse.output))
        load = ManifestLoadOperator(task_id="load", staged=staged, store_conn_id=cfg["store_conn_id"])

        @task(task_id="finalize", trigger_rule="none_skipped", multiple_outputs=False)
        def finalize(ti: Any = None, logical_date: Any = None, dag_run: Any = None) -> dict[str, Any]:
            from cdp_ingest_airflow.manifest_operator import finalize_import, processing_time

            return finalize_import(
                account=name, folder=cfg["folder"], sensed=ti.xcom_pull(task_ids="wait_for_manifest"),
                ticket=ti.xcom_pull(task_ids="parse_manifest"), loaded=ti.xcom_pull(task_ids="load"),
                when=processing_time({"logical_date": logical_date, "dag_run": dag_run}),
                sftp_conn_id=cfg["sftp_conn_id"], contact_email=cfg.get("contact_email"), **conns,
            )

        load >> finalize()
    return dag


def config_path() -> Path:
    return Path(os.environ.get("CDP_SFTP_ACCOUNTS", ROOT / "config" / "sftp_accounts.yaml"))


def build_all(path: str | Path | None = None) -> dict[str, DAG]:
    raw = yaml.safe_load(Path(path or config_path()).read_text()) or {}
    defaults = raw.get("defaults") or {}
    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"sftp accounts: unknown default keys {sorted(unknown)}")
    return {f"sftp_import_{name}": build_dag(name, account_config(name, cfg, defaults))
            for name, cfg in (raw.get("accounts") or {}).items()}
