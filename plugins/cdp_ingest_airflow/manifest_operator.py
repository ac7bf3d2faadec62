"""SFTP drop-folder adapters (SPEC §2): the manifest sensor, ``ManifestParseOperator``, the transform
step and the finalize step (error file back to the client, archive, activity log, notifications).

One DAG run imports one manifest, the oldest ready one (upload order). The tasks pass small dicts:

* sensor → ``{"manifest", "mtime", "size", "data_file", "pending"}``;
* ``ManifestParseOperator`` → the *ticket*: ``status`` (``new`` | ``resume_committed`` |
  ``already_imported`` | ``done_before``), manifest/data file names, ``type``, the local copies in the
  staging dir, ``unit_id``/``import_id`` of the ledger entry;
* ``stage_rows`` → the staged dict ``ManifestLoadOperator`` (a ``BulkIndexOperator``) loads.

Without ``CDP_STAGING_URL`` the tasks of a run share one working folder (the parse task's, under
``CDP_STAGING_DIR``), so they need one host or a shared ``CDP_STAGING_DIR``. With it, every file one
task writes and a later one reads goes through object storage (``staging.publish``/``fetch``): the
downloaded data file and the manifest (the ticket's ``local_path``/``manifest_copy`` are then URLs),
the staged Parquet file and the error CSVs; each task works in its own folder under its own
``CDP_STAGING_DIR``, leaves nothing there, and finalize removes the import's objects.

File-level problems (bad manifest, reused manifest name, no data file, unreadable, too large) are
recorded in the activity log and fail the task at once (``AirflowFailException``: retrying cannot
help); anything else is an internal error and is retried. ``finalize_import`` runs whatever happened
upstream (unless the run was skipped) and reports the outcome.

SFTP paths are relative to the login's start folder; every name we touch comes from a listing or is
a manifest's ``fileName`` that ``parse_manifest`` has checked to be a bare name, so nothing outside
the account folder is ever read, moved or written. Heavy imports (paramiko, pyarrow) stay inside the
functions: this module is imported when DAG files are parsed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue

from cdp_ingest_airflow.operators import BulkIndexOperator, staging_root

if TYPE_CHECKING:
    from airflow.sdk import Context

    from cdp_ingest.sftp_rows import RemoteFile
    from cdp_ingest.store import Store
    from cdp_ingest_airflow.activity import ActivityLog

log = logging.getLogger(__name__)

# Bytes requested at once (64 SFTP reads of 32 KB in flight, OpenSSH's own limit). Measured on a 1 GB
# download: 2 MB windows keep the process flat (+48 MB) and are the fastest; 8 MB windows grew the heap
# to +256 MB (large blocks allocated by paramiko's prefetch thread fragment it).
DOWNLOAD_WINDOW = 2 << 20
MAX_PEEK_MANIFESTS = 50
RETRYABLE = "internal"


# ------------------------------------------------------------------------------------------ sftp helpers


def sftp_path(folder: str, *parts: str) -> str:
    return "/".join(p.strip("/") for p in (folder, *parts) if p and p.strip("/")) if folder else "/".join(parts)


def list_folder(sftp: Any, folder: str) -> list[RemoteFile]:
    """Regular files directly in ``folder`` (sub-folders such as processed/ and errors/ are ignored)."""
    from cdp_ingest.sftp_rows import RemoteFile

    return [RemoteFile(a.filename, int(a.st_size or 0), float(a.st_mtime or 0))
            for a in sftp.listdir_attr(folder) if a.st_mode is not None and stat.S_ISREG(a.st_mode)]


def read_small(sftp: Any, path: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes (so the caller can tell "too large")."""
    with sftp.open(path, "rb") as fh:
        return fh.read(limit + 1)


def stat_file(sftp: Any, path: str) -> Any | None:
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if getattr(e, "errno", None) == 2:
            return None
        raise
    return attrs


def download(sftp: Any, remote: str, local: Path, *, size: int, limit: int) -> tuple[int, str]:
    """Copy ``remote`` to ``local`` in bounded windows; returns ``(bytes, "sha256:<hex>")``.

    paramiko's ``get``/prefetch keeps every block that arrived before it is written, so memory can
    grow with the file; ``readv`` over fixed windows keeps at most one window in memory.
    """
    from cdp_ingest.errors import FileLevelError
    from cdp_ingest.sftp_rows import check_size

    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".part")
    digest = hashlib.sha256()
    done = 0
    try:
        fr = sftp.open(remote, "rb")
    except FileNotFoundError as e:  # paramiko's ENOENT; the file was there when the folder was listed
        raise FileLevelError("no_data_file", f"data file {Path(remote).name} disappeared before it was "
                             "downloaded") from e
    with fr, open(tmp, "wb") as fw:
        while done < size:
            want = min(DOWNLOAD_WINDOW, size - done)
            got = 0
            for block in fr.readv([(done, want)], 64):
                fw.write(block)
                digest.update(block)
                got += len(block)
            done += got
            if got < want:  # shorter than listed (truncated meanwhile): take what is there
                break
        else:
            # longer than listed (still growing?): read on to the end, window by window
            while chunk := fr.read(DOWNLOAD_WINDOW):
                fw.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                check_size(done, limit, Path(remote).name)
    tmp.replace(local)
    return done, "sha256:" + digest.hexdigest()


def makedirs(sftp: Any, path: str) -> None:
    built = ""
    for part in path.strip("/").split("/"):
        built = f"{built}/{part}" if built else part
        if stat_file(sftp, built) is None:
            try:
                sftp.mkdir(built)
            except OSError:
                if stat_file(sftp, built) is None:
                    raise


def move(sftp: Any, src: str, dest_dir: str) -> str | None:
    """``posix_rename`` ``src`` into ``dest_dir``; idempotent (None when there was nothing to move)."""
    dest = f"{dest_dir}/{src.rsplit('/', 1)[-1]}"
    if stat_file(sftp, src) is None:
        return dest if stat_file(sftp, dest) is not None else None
    makedirs(sftp, dest_dir)
    sftp.posix_rename(src, dest)
    return dest


def upload(sftp: Any, local: Path, remote: str) -> None:
    """Upload under a hidden temporary name, then rename: a client never sees half a file."""
    folder, _, name = remote.rpartition("/")
    makedirs(sftp, folder)
    tmp = f"{folder}/.{name}.part"
    sftp.put(str(local), tmp, confirm=True)
    sftp.posix_rename(tmp, remote)


def _sftp_hook(conn_id: str):
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    return SFTPHook(ssh_conn_id=conn_id)


def _store(conn_id: str) -> Store:
    from cdp_ingest_airflow.connections import store_from_connection

    return store_from_connection(conn_id)


def _activity(conn_id: str) -> ActivityLog:
    from cdp_ingest_airflow.activity import ActivityLog

    return ActivityLog(_store(conn_id))


def _iso_now() -> str:
    from cdp_ingest.documents import iso

    return iso(datetime.now(UTC)) or ""


def _work_dir(account: str, act_id: str, ticket: Mapping[str, Any] | None = None) -> Path:
    """This task's working folder for one manifest: without ``CDP_STAGING_URL`` the parse task's (every
    task of the run works there), with it a folder under this task's own ``CDP_STAGING_DIR``."""
    from cdp_ingest_airflow.staging import staging_url

    if not staging_url() and ticket and ticket.get("work_dir"):
        return Path(ticket["work_dir"])
    return staging_root() / "sftp" / account / act_id


def _drop_if_handed_over(work: Path) -> None:
    """With ``CDP_STAGING_URL`` a task's working folder is scratch: what later tasks need was published."""
    from cdp_ingest_airflow.staging import staging_url

    if staging_url():
        shutil.rmtree(work, ignore_errors=True)


def processing_time(context: Mapping[str, Any]) -> datetime:
    """The run's processing time: its logical date (run_after for runs without one), never the clock."""
    when = context.get("logical_date")
    if when is None:
        dag_run = context.get("dag_run")
        when = getattr(dag_run, "run_after", None) or getattr(dag_run, "start_date", None)
    if when is None:
        raise ValueError("the run has neither a logical date nor a run_after time")
    return datetime.fromtimestamp(when.timestamp(), tz=UTC)


# ------------------------------------------------------------------------------------------------ sensor


class ManifestSensor(BaseSensorOperator):
    """Waits until the oldest ``.manifest`` of an account folder can be processed.

    Returns ``{"manifest", "mtime", "size", "data_file", "pending"}``. Each poke also refreshes the
    activity log's "waiting for manifest" entries (data files no manifest names yet).
    """

    template_fields: Sequence[str] = ("folder",)
    ui_color = "#f0f4e8"

    def __init__(self, *, account: str, folder: str, sftp_conn_id: str = "cdp_sftp",
                 store_conn_id: str = "cdp_opensearch", settle_seconds: float = 30.0,
                 data_file_grace_seconds: float = 900.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.account = account
        self.folder = folder
        self.sftp_conn_id = sftp_conn_id
        self.store_conn_id = store_conn_id
        self.settle_seconds = settle_seconds
        self.data_file_grace_seconds = data_file_grace_seconds

    def poke(self, context: Context) -> PokeReturnValue:
        from cdp_ingest.manifest import MAX_MANIFEST_BYTES
        from cdp_ingest.sftp_rows import is_manifest, peek_file_name, plan_folder, upload_order

        with _sftp_hook(self.sftp_conn_id).get_managed_conn() as sftp:
            files = list_folder(sftp, self.folder)
            names: dict[str, str | None] = {}
            for m in upload_order(f for f in files if is_manifest(f.name))[:MAX_PEEK_MANIFESTS]:
                try:
                    names[m.name] = peek_file_name(read_small(sftp, sftp_path(self.folder, m.name),
                                                              MAX_MANIFEST_BYTES))
                except OSError:
                    names[m.name] = None  # vanished or unreadable: parse will tell
        plan = plan_folder(files, names, now=time.time(), settle_seconds=self.settle_seconds,
                           data_file_grace_seconds=self.data_file_grace_seconds)
        try:
            activity = _activity(self.store_conn_id)
            activity.sync_waiting(self.account, plan.waiting, dag_id=self.dag_id)
            activity.sftp_manifest_waiting(self.account, self.folder, plan, dag_id=self.dag_id,
                                           run_id=context.get("run_id"))
        except Exception:  # the activity log is informative; never let it block an import
            self.log.warning("could not update the waiting-for-manifest entries", exc_info=True)
        if plan.manifest is None:
            self.log.info("no manifest in %s", self.folder)
            return PokeReturnValue(False)
        self.log.info("oldest of %s manifest(s): %s (%s)", plan.pending, plan.manifest.name, plan.state)
        if plan.state != "ready":
            return PokeReturnValue(False)
        return PokeReturnValue(True, {"manifest": plan.manifest.name, "mtime": plan.manifest.mtime,
                                      "size": plan.manifest.size, "data_file": plan.data_file,
                                      "pending": plan.pending})


# -------------------------------------------------------------------------------------------- parse step


class ManifestParseOperator(BaseOperator):
    """Read and validate the manifest the sensor found, pair it with its data file and fetch that.

    Checks, in order (each failure is file-level, with the message clients see): the manifest parses
    (``parse_manifest``: JSON, keys, types, bare ``fileName``); its name was not used by an earlier
    import of the account; the data file exists in the same folder; it is within ``max_file_bytes``;
    its header fits the manifest. The data file is downloaded to the staging dir in bounded windows
    while its SHA-256 is computed, and the ledger entry of that content is opened (or resumed).
    """

    template_fields: Sequence[str] = ("sensed",)
    ui_color = "#e8f4fd"

    def __init__(self, *, sensed: dict[str, Any] | str, account: str, folder: str, sftp_conn_id: str = "cdp_sftp",
                 store_conn_id: str = "cdp_opensearch", smtp_conn_id: str = "cdp_smtp",
                 webhook_conn_id: str = "cdp_webhook", contact_email: str | None = None,
                 max_file_bytes: int = 5 * 1024**3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_file_bytes < 1:
            raise ValueError("max_file_bytes must be positive")
        self.sensed = sensed
        self.account = account
        self.folder = folder
        self.sftp_conn_id = sftp_conn_id
        self.store_conn_id = store_conn_id
        self.smtp_conn_id = smtp_conn_id
        self.webhook_conn_id = webhook_conn_id
        self.contact_email = contact_email
        self.max_file_bytes = max_file_bytes

    @cached_property
    def store(self) -> Store:
        return _store(self.store_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from cdp_ingest.errors import FileLevelError
        from cdp_ingest.sftp_rows import activity_id
        from cdp_ingest_airflow.activity import ActivityLog

        sensed = _as_dict(self.sensed)
        name = sensed["manifest"]
        act_id = activity_id(self.account, name, sensed["mtime"])
        activity = ActivityLog(self.store)
        entry = activity.get(act_id)
        if entry and entry.get("status") == "done":
            self.log.info("manifest %s was already imported by an earlier run: only archiving it", name)
            return {**_ticket_base(entry), "status": "done_before"}
        fresh = {"id": act_id, "account": self.account, "folder": self.folder, "manifest": name,
                 "uploaded_at": datetime.fromtimestamp(sensed["mtime"], UTC).isoformat(),
                 "status": "picked_up", "picked_up_at": (entry or {}).get("picked_up_at") or _iso_now(),
                 "dag_id": context["dag"].dag_id, "run_id": context["run_id"], "error_code": None, "message": None,
                 "finished_at": None, "seconds": None,
                 "sftp_conn_id": self.sftp_conn_id,
                 "notified": [] if (entry or {}).get("status") == "failed" else (entry or {}).get("notified", [])}
        entry = activity.update(act_id, **fresh)
        try:
            return self._parse(context, sensed, entry, activity)
        except FileLevelError as e:
            self.log.warning("manifest %s failed: %s", name, e)
            activity.update(act_id, error_code=e.code, message=e.message)
            raise AirflowFailException(str(e)) from e
        except AirflowSkipException:
            raise
        except Exception as e:
            activity.update(act_id, error_code=RETRYABLE, message=f"internal error: {type(e).__name__}")
            raise
        finally:
            _drop_if_handed_over(_work_dir(self.account, act_id))

    def _parse(self, context: Context, sensed: dict[str, Any], entry: dict[str, Any],
               activity: ActivityLog) -> dict[str, Any]:
        from cdp_ingest.errors import FileLevelError
        from cdp_ingest.ledger import Ledger, SourceUnit
        from cdp_ingest.manifest import MAX_MANIFEST_BYTES, check_header, parse_manifest
        from cdp_ingest.readers import read_csv_header
        from cdp_ingest.sftp_rows import check_size
        from cdp_ingest_airflow.notifiers import notify

        name, act_id = sensed["manifest"], entry["id"]
        work = _work_dir(self.account, act_id)
        with _sftp_hook(self.sftp_conn_id).get_managed_conn() as sftp:
            manifest_path = sftp_path(self.folder, name)
            if stat_file(sftp, manifest_path) is None:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(f"manifest {name} disappeared before it was read")
            raw = read_small(sftp, manifest_path, MAX_MANIFEST_BYTES)
            manifest = parse_manifest(raw, name)
            entry = activity.update(act_id, file_name=manifest.file_name, type=manifest.type,
                                    client_email=manifest.client_email)
            used = activity.used_manifest(self.account, name, exclude_id=act_id)
            if used:
                raise FileLevelError("manifest_reused", f"manifest name {name} was already used by an import "
                                     f"finished {str(used.get('finished_at') or '')[:19]}; every manifest needs "
                                     "a new name")
            data_path = sftp_path(self.folder, manifest.file_name)
            attrs = stat_file(sftp, data_path)
            if attrs is None or attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
                raise FileLevelError("no_data_file", f"no data file found: {manifest.file_name} (named by manifest "
                                     f"{name}) is not in the folder")
            size = int(attrs.st_size or 0)
            check_size(size, self.max_file_bytes, manifest.file_name)
            # paired: from here on the file is being imported (a manifest refused above gets only the
            # failure notification)
            notify("picked_up", entry, activity=activity, smtp_conn_id=self.smtp_conn_id,
                   webhook_conn_id=self.webhook_conn_id)
            activity.clear_waiting(self.account, manifest.file_name)
            work.mkdir(parents=True, exist_ok=True)
            (work / "manifest.json").write_bytes(raw)
            local = work / "data.csv"
            self.log.info("downloading %s (%s bytes)", data_path, size)
            size, checksum = download(sftp, data_path, local, size=size, limit=self.max_file_bytes)

        # Event files are keyed by content alone (events have no natural key: the same rows under
        # another name must not be imported twice); profile files by name too, so renaming a file
        # is how a client applies the same operations again.
        unit_path = f"sftp://{self.account}" + (f"/{manifest.file_name}" if manifest.is_profile else "")
        unit = SourceUnit(unit_path, size, checksum)
        self.store.ensure_templates()
        ledger = Ledger(self.store)
        ledger_entry = ledger.begin(unit, kind=manifest.type, source=f"sftp:{self.account}", account=self.account)
        ticket = {"status": "new", "activity_id": act_id, "account": self.account, "folder": self.folder,
                  "manifest": name, "manifest_mtime": sensed["mtime"], "file_name": manifest.file_name,
                  "type": manifest.type, "size": size, "work_dir": str(work), "local_path": str(local),
                  "manifest_copy": str(work / "manifest.json"), "unit_id": ledger_entry.unit_id,
                  "import_id": ledger_entry.import_id}
        if ledger_entry.committed:
            mine = entry.get("import_id") == ledger_entry.import_id
            ticket["status"] = "resume_committed" if mine else "already_imported"
            self.log.info("%s: content already committed by import %s (%s)", name, ledger_entry.import_id,
                          ticket["status"])
            activity.update(act_id, unit_id=ledger_entry.unit_id, import_id=ledger_entry.import_id,
                            size=size, status="processing", started_at=_iso_now())
            return ticket
        try:
            check_header(manifest, read_csv_header(local))
        except FileLevelError as e:
            ledger.fail(ledger_entry, str(e))
            raise
        activity.update(act_id, unit_id=ledger_entry.unit_id, import_id=ledger_entry.import_id, size=size,
                        status="processing", started_at=_iso_now())
        ticket.update(_publish_inputs(ticket))
        self.log.info("manifest %s: %s file %s paired and fetched; import %s", name, manifest.type,
                      manifest.file_name, ledger_entry.import_id)
        return ticket


def _publish_inputs(ticket: dict[str, Any]) -> dict[str, Any]:
    """With ``CDP_STAGING_URL``: the data file and the manifest copy go to object storage for the transform
    task (wherever it runs); their URLs replace the local paths in the ticket. All or nothing."""
    from cdp_ingest_airflow.staging import publish, remove, staging_url

    if not staging_url():
        return {}
    done: dict[str, Any] = {}
    try:
        for key in ("local_path", "manifest_copy"):
            done[key] = publish(ticket[key], ticket["import_id"])
    except Exception:
        for location in done.values():
            remove(location)
        raise
    return done


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        import json

        return json.loads(value)
    return dict(value)


def _ticket_base(entry: dict[str, Any]) -> dict[str, Any]:
    return {"activity_id": entry["id"], "account": entry.get("account"), "folder": entry.get("folder"),
            "manifest": entry.get("manifest"), "file_name": entry.get("file_name"), "type": entry.get("type"),
            "unit_id": entry.get("unit_id"), "import_id": entry.get("import_id"), "size": entry.get("size")}


# ---------------------------------------------------------------------------------------- transform step


def stage_rows(ticket: dict[str, Any], *, store_conn_id: str, now: datetime) -> dict[str, Any]:
    """Interpret every row with the manifest, stage accepted rows as Parquet, rejected rows as the error
    CSV. Returns the staged dict of ``BulkIndexOperator`` (``status: skipped`` when nothing to load).
    With ``CDP_STAGING_URL`` the data file and manifest are fetched from there and the staged file and
    error CSV published there."""
    from cdp_ingest_airflow.staging import publish, staging_url

    base = {"import_id": ticket.get("import_id"), "unit_id": ticket.get("unit_id"),
            "path": f"{ticket['account']}/{ticket.get('file_name')}", "kind": ticket.get("type")}
    if ticket["status"] != "new":
        return {**base, "status": "skipped", "rows_in": 0}
    store = _store(store_conn_id)
    activity = _activity(store_conn_id)
    work = _work_dir(ticket["account"], ticket["activity_id"], ticket)
    try:
        return _stage_rows(ticket, base, work, store=store, activity=activity, now=now)
    except Exception:
        # the rows rejected before a failure still reach the client: finalize attaches them (locally it
        # finds them in the shared working folder)
        partial = work / "transform-errors.csv"
        if staging_url() and partial.exists():
            try:
                publish(partial, ticket["import_id"])
            except Exception:
                log.warning("could not hand over the partial error file of %s", base["path"], exc_info=True)
        raise
    finally:
        _drop_if_handed_over(work)


def _stage_rows(ticket: dict[str, Any], base: dict[str, Any], work: Path, *, store: Store, activity: ActivityLog,
                now: datetime) -> dict[str, Any]:
    from cdp_ingest.errors import FileLevelError
    from cdp_ingest.ledger import Ledger
    from cdp_ingest.manifest import parse_manifest
    from cdp_ingest.pipeline import transform_unit
    from cdp_ingest.readers import read_batches
    from cdp_ingest.sftp_rows import READ_BATCH_ROWS, SftpRowMapper
    from cdp_ingest_airflow.staging import fetch, open_staged, publish

    try:
        with open_staged(ticket["manifest_copy"]) as fh:
            manifest = parse_manifest(fh.read(), ticket["manifest"])
        mapper = SftpRowMapper(manifest, unit_key=ticket["unit_id"], now=now,
                               source_id=f"sftp:{ticket['account']}")
        data = fetch(ticket["local_path"], work)  # handed over through object storage: a local copy first
        result = transform_unit(read_batches(data, "csv", batch_rows=READ_BATCH_ROWS),
                                mapper.map_row, prefix=store.prefix, import_id=ticket["import_id"],
                                staged_path=work / "staged.parquet", error_path=work / "transform-errors.csv",
                                max_cell_bytes=store.max_cell_bytes)
        result.staged = publish(result.staged, ticket["import_id"])
        result.error_file = publish(result.error_file, ticket["import_id"])
    except FileLevelError as e:
        ledger = Ledger(store)
        entry = ledger.get(ticket["unit_id"])
        if entry is not None:
            ledger.fail(entry, str(e))
        activity.update(ticket["activity_id"], error_code=e.code, message=e.message)
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(e)) from e
    except Exception as e:
        activity.update(ticket["activity_id"], error_code=RETRYABLE, message=f"internal error: {type(e).__name__}")
        raise
    activity.update(ticket["activity_id"], rows_in=result.rows_in, rejected=result.rejected, error_code=None,
                    message=None)
    log.info("staged %s: rows_in=%s accepted=%s rejected=%s", base["path"], result.rows_in, result.accepted,
             result.rejected)
    return {**base, **result.to_dict(), "status": "staged"}


# ---------------------------------------------------------------------------------------------- load step


class ManifestLoadOperator(BulkIndexOperator):
    """``BulkIndexOperator`` whose merged error CSV reaches ``finalize`` wherever that runs.

    Without ``CDP_STAGING_URL`` it is ``BulkIndexOperator`` unchanged (the error CSV stays in the shared
    working folder). With it, the load works in ``<CDP_STAGING_DIR>/<import_id>`` of its own host; the
    merged error CSV (also one merged before a failed commit) is published and that folder removed.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from cdp_ingest_airflow.staging import is_remote, location, publish, staging_url

        staged = _as_dict(self.staged)
        if not staging_url() or staged.get("status") == "skipped":
            return super().execute(context)
        import_id = staged["import_id"]
        work = staging_root() / import_id  # where BulkIndexOperator fetches, loads and merges
        try:
            out = super().execute(context)
            error_file = out.get("error_file")
            if error_file and not is_remote(error_file):
                # committed by an earlier try on another host: that try published it under the same name
                out["error_file"] = (publish(error_file, import_id) if Path(error_file).exists()
                                     else location(import_id, Path(error_file).name))
            return out
        except Exception:
            for merged in sorted(work.glob("*.errors.csv")):
                try:
                    publish(merged, import_id)
                except Exception:
                    self.log.warning("could not hand over the error file of %s", staged.get("path"), exc_info=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------- finalize step


KEEP_DATA_ON_FAILURE = ("bad_manifest", "manifest_reused", "no_data_file", RETRYABLE)


def finalize_import(*, account: str, folder: str, sensed: dict[str, Any] | None, ticket: dict[str, Any] | None,
                    loaded: dict[str, Any] | None, when: datetime, sftp_conn_id: str = "cdp_sftp",
                    store_conn_id: str = "cdp_opensearch", smtp_conn_id: str = "cdp_smtp",
                    webhook_conn_id: str = "cdp_webhook", contact_email: str | None = None) -> dict[str, Any]:
    """Report the outcome of one manifest: write the error CSV back to ``errors/``, move the files to
    ``processed/`` (done) or ``failed/``, close the activity entry and notify. Idempotent, so a retry
    after a crash finishes the job. Raises ``AirflowFailException`` after reporting a failure, so the
    run shows as failed. With ``CDP_STAGING_URL`` the error CSV is fetched from object storage and, once
    reported, every object of the import is removed there."""
    from cdp_ingest.documents import iso
    from cdp_ingest.ledger import Ledger
    from cdp_ingest.sftp_rows import activity_id, archive_folder, error_file_name
    from cdp_ingest_airflow.activity import ActivityLog
    from cdp_ingest_airflow.notifiers import notify
    from cdp_ingest_airflow.staging import fetch, is_remote, listing, location, remove_all, staging_url

    if not sensed:
        raise ValueError("finalize needs the sensor's result")
    name = sensed["manifest"]
    act_id = activity_id(account, name, sensed["mtime"])
    store = _store(store_conn_id)
    activity = ActivityLog(store)
    entry = activity.get(act_id) or {"id": act_id, "account": account, "folder": folder, "manifest": name}
    status = (ticket or {}).get("status")
    if status == "new" and loaded and loaded.get("status") != "committed":
        # a load try that committed, then failed (before removing its staged files, say), is retried:
        # the retry finds the entry committed and returns the staged dict with the ledger's counts
        committed = Ledger(store).get(ticket["unit_id"]) if ticket else None
        if committed is not None and committed.committed and committed.import_id == ticket.get("import_id"):
            status = "resume_committed"
    work = _work_dir(account, act_id, ticket)
    # the import whose staged objects are this manifest's to remove (not another import's, already_imported)
    own_import = (ticket or {}).get("import_id") if status in ("new", "resume_committed") else None
    counts: dict[str, Any] = {}
    local_error: str | None = None
    if status == "done_before":
        outcome = "done"
    elif status in ("resume_committed", "already_imported"):
        outcome = "done"
        ledger_entry = Ledger(store).get(ticket["unit_id"]) if ticket else None
        if status == "resume_committed" and ledger_entry is not None:
            counts = {"rows_in": ledger_entry.rows_in, "loaded": ledger_entry.loaded,
                      "rejected": ledger_entry.rejected, "duplicates": ledger_entry.duplicates}
            local_error = ledger_entry.error_file
            if local_error and not Path(local_error).exists() and staging_url():  # loaded on another host
                local_error = location(ticket["import_id"], Path(local_error).name)
        else:
            counts = {"rows_in": 0, "loaded": 0, "rejected": 0, "duplicates": 0, "already_imported": True,
                      "message": f"identical content already imported by import {ticket.get('import_id')}"}
    elif status == "new" and loaded and loaded.get("status") == "committed":
        outcome = "done"
        counts = {c: loaded.get(c) for c in ("rows_in", "loaded", "rejected", "duplicates")}
        local_error = loaded.get("error_file")
    else:
        outcome = "failed"
        if not entry.get("error_code"):
            entry["error_code"] = RETRYABLE
            entry["message"] = "internal error while importing the file; it was retried and still failed"
        partial = sorted(work.glob("*.errors.csv")) or sorted(work.glob("transform-errors.csv"))
        if not partial and own_import:  # handed over through object storage
            published = listing(own_import)
            partial = ([u for u in published if u.endswith(".errors.csv")]
                       or [u for u in published if u.endswith("/transform-errors.csv")])
        local_error = str(partial[0]) if partial else None
    if local_error and is_remote(local_error):
        try:
            local_error = fetch(local_error, work)
        except FileNotFoundError:
            log.warning("the error file of %s is no longer in the staging storage", name)
            local_error = None
    if local_error and not Path(local_error).exists():
        local_error = None
    if local_error:  # the client gets it under the name it has in errors/
        client_copy = work / "client" / error_file_name(name)
        client_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_error, client_copy)
        local_error = str(client_copy)

    tag = act_id[:8]
    archived_to = sftp_path(folder, archive_folder(outcome, name, when, tag))
    remote_error = entry.get("error_file")
    archived: list[str] = []  # what really moved: the e-mail must not claim the data file moved when it stayed
    with _sftp_hook(sftp_conn_id).get_managed_conn() as sftp:
        if local_error:
            remote_error = sftp_path(folder, "errors", error_file_name(name))
            upload(sftp, Path(local_error), remote_error)
        data_name = (ticket or {}).get("file_name") or entry.get("file_name")
        if data_name and (outcome == "done" or entry.get("error_code") not in KEEP_DATA_ON_FAILURE):
            data_path = sftp_path(folder, data_name)
            attrs = stat_file(sftp, data_path)
            size = (ticket or {}).get("size")
            if attrs is not None and (size is None or int(attrs.st_size or 0) == size):
                move(sftp, data_path, archived_to)
                archived.append(data_name)
        move(sftp, sftp_path(folder, name), archived_to)
        archived.append(name)

    finished = datetime.now(UTC)
    seconds = entry.get("seconds")
    if not entry.get("finished_at") and entry.get("picked_up_at"):
        picked = datetime.fromisoformat(entry["picked_up_at"]).replace(tzinfo=UTC)
        seconds = round((finished - picked).total_seconds(), 3)
    note = counts.pop("message", None)
    entry = activity.update(act_id, **counts, status=outcome, error_file=remote_error, archived_to=archived_to,
                            archived_files=archived,
                            error_code=entry.get("error_code") if outcome == "failed" else None,
                            message=entry.get("message") if outcome == "failed" else note,
                            finished_at=entry.get("finished_at") or iso(finished), seconds=seconds)
    notify("succeeded" if outcome == "done" else "failed", entry, activity=activity, error_file=local_error,
           fallback_email=contact_email, smtp_conn_id=smtp_conn_id, webhook_conn_id=webhook_conn_id)
    if own_import and staging_url():
        try:
            remove_all(own_import)
        except Exception:  # reported already; a leftover object does not stop a rerun (publish overwrites)
            log.warning("could not remove the staged objects of import %s", own_import, exc_info=True)
    shutil.rmtree(work, ignore_errors=True)
    log.info("manifest %s: %s, archived to %s", name, outcome, archived_to)
    if outcome == "failed":
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"import of {name} failed: [{entry.get('error_code')}] {entry.get('message')}")
    return {k: entry.get(k) for k in ("id", "status", "rows_in", "loaded", "rejected", "duplicates", "error_file",
                                      "archived_to")}
