"""DAG factory for scheduled CSV imports from the landing folder (config/csv_imports.yaml).

Shape per import: wait_for_files (sensor) → for profile, then session, then event:
list_files → plan (per file: fingerprint, ledger entry, row-aligned chunks of ``chunk_mb``) → stage
(transform, mapped per chunk) → validate (per file) → load (mapped per chunk) → commit (per file, once
all its chunks loaded) → archive. A file no bigger than one chunk (the default: 256 MB) is one chunk.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import DAG, Param, PokeReturnValue, TaskGroup, task

from cdp_ingest_airflow.dag_base import pulled
from cdp_ingest_airflow.defaults import DEFAULT_ARGS
from cdp_ingest_airflow.operators import (
    CommitChunkedFilesOperator,
    LoadChunksOperator,
    PlanCsvFilesOperator,
    StageChunkOperator,
)

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "include" / "cdp_ingest" / "mappings"
KIND_ORDER = ("profile", "session", "event")


def landing_root() -> Path:
    return Path(os.environ.get("CDP_LANDING_DIR", ROOT / "landing"))


def find_files(folder: str, pattern: str) -> list[str]:
    """Files matching ``pattern`` under the import's landing folder, oldest first (upload order)."""
    base = landing_root() / folder
    files = [p for p in base.glob(pattern) if p.is_file() and not p.name.startswith(".")]
    return [str(p) for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name))]


def archive(results: list[dict[str, Any]], folder: str, day: str) -> list[str]:
    """Move committed (or already-imported) files to ``processed/<day>/``: never before commit."""
    moved = []
    target = landing_root() / folder / "processed" / day
    for r in results:
        src = Path(r["path"])
        if r.get("status") in ("committed", "skipped") and src.exists():
            target.mkdir(parents=True, exist_ok=True)
            dest = target / src.name
            if dest.exists():
                dest = target / f"{src.stem}.{r['import_id'][:12]}{src.suffix}"
            shutil.move(src, dest)
            moved.append(str(dest))
    return moved


def _doc(name: str, cfg: dict[str, Any]) -> str:
    units = "\n".join(f"| {k} | `{u['pattern']}` | `{u['mapping']}` |" for k, u in cfg["units"].items())
    return f"""### CSV import `{name}`

{cfg.get('description', '')}

Reads CSV files from `$CDP_LANDING_DIR/{cfg['folder']}/`, maps each row with its mapping file into
Tracardi-shaped documents and bulk-loads them into the store of connection `{cfg.get('store_conn_id',
'cdp_opensearch')}`: **profiles first, then sessions, then events**.

| kind | files | mapping |
|---|---|---|
{units}

Rejected rows go to `errors/<file>.<import>.errors.csv` (original columns + `Failure Description`).
Imported files move to `processed/<date>/`; a file already imported is skipped (ledger), unless the
run's `force` param is set. `dry_run` stages and validates without loading.

Files bigger than `chunk_mb` ({cfg.get('chunk_mb', 'default')} MB; env `CDP_CSV_CHUNK_MB` overrides) are
split at row boundaries into chunks that separate `stage` and `load` task instances share; the file is
still one import: one ledger entry, one error file, committed once by `commit`. At most
`parallel_loads` ({cfg.get('parallel_loads', 2)}) chunk loads of a run write to the store at once.
"""


def check_config(name: str, cfg: Any) -> None:
    """An import entry's shape and its mappings (read, and of the unit's kind), so that a mistake fails the
    DAG file with a message that names it, not a KeyError or a task failure at run time."""
    from cdp_ingest.errors import MappingError
    from cdp_ingest.mapping import Mapping

    where = f"csv import {name}"
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: must be a mapping with folder and units, not {cfg!r}")
    if not isinstance(cfg.get("folder"), str) or not cfg["folder"].strip():
        raise ValueError(f"{where}: folder (a folder under the landing folder) is required")
    units = cfg.get("units")
    if not isinstance(units, dict) or not units:
        raise ValueError(f"{where}: units must map kinds ({', '.join(KIND_ORDER)}) to {{pattern, mapping}}")
    unknown = set(units) - set(KIND_ORDER)
    if unknown:
        raise ValueError(f"{where}: unknown unit kinds {sorted(map(str, unknown))}")
    for kind, unit in units.items():
        if not isinstance(unit, dict) or not all(isinstance(unit.get(k), str) and unit[k] for k in
                                                 ("pattern", "mapping")):
            raise ValueError(f"{where}: unit {kind} needs pattern and mapping (text), not {unit!r}")
        try:
            mapping = Mapping.load(_mapping_path(unit["mapping"]))
        except MappingError as e:
            raise ValueError(f"{where}: unit {kind}: {e}") from None
        if mapping.kind != kind:
            raise ValueError(f"{where}: unit {kind}: mapping {unit['mapping']} maps {mapping.kind}s")


def _mapping_path(mapping: str) -> str:
    return mapping if os.path.isabs(mapping) else str(MAPPINGS / mapping)


def build_dag(name: str, cfg: dict[str, Any]) -> DAG:
    check_config(name, cfg)
    folder = cfg["folder"]
    conn_id = cfg.get("store_conn_id", "cdp_opensearch")
    ratio = float(cfg.get("max_reject_ratio", 0.5))
    chunk_mb = cfg.get("chunk_mb")
    if chunk_mb is not None and not float(chunk_mb) > 0:
        raise ValueError(f"csv import {name}: chunk_mb must be > 0, not {chunk_mb!r}")
    loads = cfg.get("parallel_loads", 2)
    if isinstance(loads, bool) or not isinstance(loads, int) or loads < 1:
        raise ValueError(f"csv import {name}: parallel_loads must be a whole number >= 1, not {loads!r}")
    units = cfg["units"]
    with DAG(
        dag_id=f"csv_import_{name}",
        schedule=cfg.get("schedule"),
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["cdp-ingest", "csv", "import"],
        doc_md=_doc(name, cfg),
        params={"force": Param(False, type="boolean", description="Re-import files already imported"),
                "dry_run": Param(False, type="boolean", description="Stage and validate only; load nothing")},
        dagrun_timeout=timedelta(hours=6),
    ) as dag:

        @task.sensor(poke_interval=60, timeout=600, mode="reschedule", soft_fail=True)
        def wait_for_files() -> PokeReturnValue:
            found = {k: find_files(folder, u["pattern"]) for k, u in units.items()}
            return PokeReturnValue(is_done=any(found.values()), xcom_value=found)

        waited = wait_for_files()
        previous = waited
        for kind in KIND_ORDER:
            if kind not in units:
                continue
            unit = units[kind]
            mapping = _mapping_path(unit["mapping"])
            with TaskGroup(group_id=kind) as group:

                @task(task_id="list_files", trigger_rule="none_failed")
                def list_files(pattern: str) -> list[str]:
                    return find_files(folder, pattern)

                files = list_files(unit["pattern"])
                plan = PlanCsvFilesOperator(
                    task_id="plan", source_paths=files, mapping_path=mapping, store_conn_id=conn_id, account=name,
                    force="{{ params.force }}", chunk_mb=chunk_mb,
                )
                staged = StageChunkOperator.partial(
                    task_id="stage", mapping_path=mapping, store_conn_id=conn_id,
                ).expand(chunk=plan.output)

                @task(task_id="validate")
                def validate(results: list[dict[str, Any]], params: dict[str, Any] | None = None
                             ) -> list[dict[str, Any]]:
                    from cdp_ingest_airflow.operators import validate_chunks

                    return validate_chunks(pulled(results), max_reject_ratio=ratio, store_conn_id=conn_id,
                                           dry_run=bool(params and params.get("dry_run")))

                validated = validate(staged.output)
                # a big file's chunks load at most `parallel_loads` at a time per run: all of them at once
                # would only queue in the store's bulk thread pool (and answer 429)
                loaded = LoadChunksOperator.partial(task_id="load", store_conn_id=conn_id,
                                                    max_active_tis_per_dagrun=loads).expand(item=validated)
                committed = CommitChunkedFilesOperator(  # all_done: one file's failed load holds back no other
                    task_id="commit", plan_task_id=plan.task_id, loaded=loaded.output, store_conn_id=conn_id,
                    error_dir=str(landing_root() / folder / "errors"), trigger_rule="all_done",
                )
                plan >> committed

                @task(task_id="archive")
                def archive_files(results: list[dict[str, Any]], ds: str | None = None) -> list[str]:
                    return archive(list(results), folder, ds or "unknown-day")

                # a plan that did not run skips commit (all_done), and this makes archive upstream_failed, not
                # skipped: the next kind must not start after a failed one
                plan >> archive_files(committed.output)
            previous >> group
            previous = group
    return dag


def build_all(config_path: str | Path | None = None) -> dict[str, DAG]:
    path = Path(config_path or os.environ.get("CDP_CSV_IMPORTS", ROOT / "config" / "csv_imports.yaml"))
    cfg = yaml.safe_load(path.read_text()) or {}
    return {f"csv_import_{name}": build_dag(name, c) for name, c in (cfg.get("imports") or {}).items()}
