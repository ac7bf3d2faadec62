"""``ReplayOperator``: send a staged replay plan to a Segment-compatible API or Tracardi's /track.

The destination is an Airflow ``http`` connection, used through the provider's ``HttpHook`` (its
session, base URL and TLS/proxy extras): host = the receiver's base URL; for Segment the login is the
write key (basic-auth user, empty password); for Tracardi the extra ``source_id`` names the event source.
A connection extra ``{"historical": false}`` (or the replay's own ``historical: false``) marks a
destination that does not accept historical timestamps: the operator refuses it before sending anything.

The checkpoint lives beside the staged plan, so a retry of this task (or a rerun after a killed worker)
resumes after the last acknowledged batch. The ledger entry is committed only when
``rows_in = sent + rejected + duplicates``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from cdp_ingest_airflow.operators import _StoreMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from cdp_ingest.replay import HttpSink


def record_activity(store: Any, replay: str, unit_path: str, status: str, **fields: Any) -> None:
    """One step of one replayed unit on the import activity log (never fails the replay)."""
    try:
        from cdp_ingest_airflow.activity import ActivityLog, current_run_ids

        ActivityLog(store).record_safely(source="replay", unit=unit_path.rstrip("/").rsplit("/", 1)[-1] or unit_path,
                                         account=replay, status=status, path=unit_path,
                                         **{**current_run_ids(), **fields})
    except Exception:  # the activity log is informative; the ledger is the record
        import logging

        logging.getLogger(__name__).warning("could not record replay activity", exc_info=True)


class ReplayOperator(_StoreMixin, BaseOperator):
    template_fields: Sequence[str] = ("staged",)
    ui_color = "#efe8fd"

    def __init__(self, *, staged: dict[str, Any] | str, destination: str, http_conn_id: str,
                 settings: dict[str, Any], store_conn_id: str = "cdp_opensearch", index_prefix: str | None = None,
                 error_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged = staged
        self.destination = destination
        self.http_conn_id = http_conn_id
        self.settings = settings
        self.store_conn_id = store_conn_id
        self.index_prefix = index_prefix
        self.error_dir = error_dir

    @cached_property
    def hook(self):
        from airflow.providers.http.hooks.http import HttpHook

        return HttpHook(method="POST", http_conn_id=self.http_conn_id)

    def sink(self) -> HttpSink:
        from cdp_ingest.replay import ReplayConfigError, make_sink

        conn = self.hook.get_connection(self.http_conn_id)
        extra = conn.extra_dejson
        if str(extra.get("historical", True)).lower() == "false":
            raise ReplayConfigError(f"connection {self.http_conn_id} is marked as not accepting historical "
                                    f"timestamps (extra historical: false): nothing is sent")
        session = self.hook.get_conn()
        if conn.login:  # Segment: write key as user, empty password (requests would send "None")
            session.auth = (conn.login, conn.password or "")
        return make_sink(self.destination, self.hook.base_url, session=session,
                         source_id=extra.get("source_id") or self.settings.get("source_id"))

    def execute(self, context: Context) -> dict[str, Any]:
        import json

        from cdp_ingest.ledger import Ledger
        from cdp_ingest.pipeline import merge_error_files
        from cdp_ingest.replay import Replayer, ReplayPlan, ReplaySettings, accounting

        staged = json.loads(self.staged) if isinstance(self.staged, str) else self.staged
        settings = ReplaySettings.from_dict(staged["replay"], {k: v for k, v in self.settings.items()
                                                               if k != "source_id"})
        if staged.get("status") == "skipped":
            return {**staged, "sent": 0}
        try:
            sink = self.sink()  # refuses a non-historical destination before anything is sent
        except Exception as e:
            record_activity(self.store, staged["replay"], staged["path"], "failed", step="replay",
                            message=str(e)[:500], error_code="destination_refused")
            raise
        ledger = Ledger(self.store)
        entry = ledger.get(staged["unit_id"])
        if entry is None or entry.import_id != staged["import_id"]:
            raise RuntimeError(f"ledger entry for {staged['path']} is missing or belongs to another import")
        if entry.committed:
            self.log.info("%s already committed by an earlier try", staged["path"])
            return {**staged, **entry.accounting.__dict__, "sent": entry.loaded, "error_file": entry.error_file}
        plan = ReplayPlan(**staged["plan"])
        work = Path(staged["plan"]["staged"]).parent
        try:
            result = Replayer(sink, settings).run(plan.staged or "", digest=plan.digest,
                                                  checkpoint_path=work / "checkpoint.jsonl",
                                                  error_path=work / "send-errors.csv", source_label=staged["path"])
            acc = accounting(plan, result)
            final_dir = Path(self.error_dir) if self.error_dir else work
            name = staged["path"].rstrip("/").rsplit("/", 1)[-1] or "archive"
            error_file = merge_error_files(final_dir / f"{name}.{entry.import_id}.errors.csv", plan.error_file,
                                           result.error_file)
            ledger.commit(entry, acc, error_file=error_file, missing_timestamp=plan.missing_timestamp,
                          batches=plan.batches, destination=self.destination)
        except Exception as e:
            ledger.fail(entry, f"{e.__class__.__name__}: {e}")
            record_activity(self.store, staged["replay"], staged["path"], "failed", step="replay",
                            message=f"{e.__class__.__name__}: {e}"[:500], import_id=entry.import_id)
            raise
        record_activity(self.store, staged["replay"], staged["path"], "done", step="replay", rows_in=acc.rows_in,
                        loaded=acc.loaded, rejected=acc.rejected, duplicates=acc.duplicates, error_file=error_file,
                        import_id=entry.import_id, unit_id=entry.unit_id,
                        note=f"{plan.missing_timestamp} without timestamp; {result.retries} retries")
        self.log.info("replayed %s: sent=%s rejected=%s duplicates=%s missing_timestamp=%s (resumed after batch "
                      "%s, %s retries)", staged["path"], acc.loaded, acc.rejected, acc.duplicates,
                      plan.missing_timestamp, result.resumed_after, result.retries)
        return {**staged, "status": "committed", "sent": acc.loaded, "rejected": acc.rejected,
                "duplicates": acc.duplicates, "rows_in": acc.rows_in, "missing_timestamp": plan.missing_timestamp,
                "error_file": error_file, "resumed_after": result.resumed_after, "retries": result.retries}
