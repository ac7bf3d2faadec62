"""Dataset state and job documents, kept in the store next to the ledger.

- ``<prefix>datasets-state``: one document per dataset: the change markers of the last successful sync
  (etag, last_modified, content_hash, file_stamp, watermark, row_count), its time, result and version.
- ``<prefix>datasets-jobs``: one document per job (= one Airflow DAG run, ``job_id`` = the run id), written
  by the run's tasks: ``queued`` → ``importing`` → ``complete`` | ``failure`` with ``error_code`` and
  ``error_message``, plus the sync result (nothing changed, or the counts).

The REST API derives a job's state from the DAG run's state and this document (a run the scheduler has
not started yet has no document; a run that died without writing ``failure`` is a failure all the same).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from cdp_ingest.documents import iso
from cdp_ingest.store import Store

log = logging.getLogger(__name__)

QUEUED, IMPORTING, COMPLETE, FAILURE = "queued", "importing", "complete", "failure"
JOB_STATES = (QUEUED, IMPORTING, COMPLETE, FAILURE)

_KW = {"type": "keyword"}
_DATE = {"type": "date", "format": "strict_date_optional_time||epoch_second"}
STATE_MAPPING = {"dynamic": False, "properties": {"name": _KW, "last_status": _KW, "last_sync": _DATE,
                                                  "last_job": _KW, "version": {"type": "long"}}}
JOB_MAPPING = {"dynamic": False, "properties": {
    "job_id": _KW, "dataset": _KW, "dag_id": _KW, "run_id": _KW, "state": _KW, "error_code": _KW,
    "created": _DATE, "started": _DATE, "finished": _DATE, "changed": {"type": "boolean"}}}


def now_iso() -> str:
    return iso(datetime.now(UTC)) or ""


def _doc_id(value: str) -> str:
    """Run ids hold ':' and '+'; a fixed-length hash keeps document URLs plain."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class DatasetIndex:
    def __init__(self, store: Store):
        self.store = store
        self.state_index = f"{store.prefix}datasets-state"
        self.jobs_index = f"{store.prefix}datasets-jobs"
        self._ready = False

    def ensure(self) -> None:
        if self._ready:
            return
        for index, mapping in ((self.state_index, STATE_MAPPING), (self.jobs_index, JOB_MAPPING)):
            if self.store._request("HEAD", f"/{index}", ok_statuses=(404,)) is not True:
                self.store._request("PUT", f"/{index}", body={
                    "settings": {"number_of_shards": 1, "number_of_replicas": 0}, "mappings": mapping},
                    ok_statuses=(400,))  # a concurrent creator won
        self._ready = True

    # ---- state -------------------------------------------------------------------------------------------
    def state(self, name: str) -> dict[str, Any]:
        found = self.store.get(self.state_index, name)
        return found["_source"] if found else {}

    def update_state(self, name: str, **fields: Any) -> dict[str, Any]:
        self.ensure()
        doc = {**self.state(name), **fields, "name": name}
        self.store._request("PUT", f"/{self.state_index}/_doc/{name}", body=doc, params={"refresh": "true"})
        return doc

    def delete_state(self, name: str) -> None:
        self.store._request("DELETE", f"/{self.state_index}/_doc/{name}", params={"refresh": "true"},
                            ok_statuses=(404,))

    # ---- jobs --------------------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any] | None:
        found = self.store.get(self.jobs_index, _doc_id(job_id))
        return found["_source"] if found else None

    def update_job(self, job_id: str, dataset: str, **fields: Any) -> dict[str, Any]:
        self.ensure()
        doc = self.job(job_id) or {"job_id": job_id, "dataset": dataset, "created": now_iso(), "state": QUEUED}
        doc.update(fields)
        self.store._request("PUT", f"/{self.jobs_index}/_doc/{_doc_id(job_id)}", body=doc,
                            params={"refresh": "true"})
        return doc

    def jobs(self, *, dataset: str | None = None, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        filters: list[dict] = []
        if dataset:
            filters.append({"term": {"dataset": dataset}})
        if state:
            filters.append({"term": {"state": state}})
        body = {"size": limit, "query": {"bool": {"filter": filters}}, "sort": [{"created": "desc"}]}
        resp = self.store._request("POST", f"/{self.jobs_index}/_search", body=body, ok_statuses=(404,))
        return [h["_source"] for h in (resp or {}).get("hits", {}).get("hits", [])]

    def jobs_by_ids(self, job_ids: list[str]) -> list[dict[str, Any]]:
        if not job_ids:
            return []
        resp = self.store._request("POST", f"/{self.jobs_index}/_mget", ok_statuses=(404,),
                                   body={"ids": [_doc_id(j) for j in job_ids]})
        return [d["_source"] for d in (resp or {}).get("docs", []) if d.get("found")]

    def delete_jobs(self, dataset: str) -> int:
        """Delete a dataset's job documents (search + bulk delete: ``_delete_by_query`` is a module the
        minimal OpenSearch distribution lacks)."""
        deleted = 0
        while True:
            resp = self.store._request("POST", f"/{self.jobs_index}/_search", ok_statuses=(404,), body={
                "size": 1000, "_source": False, "query": {"term": {"dataset": dataset}}})
            hits = (resp or {}).get("hits", {}).get("hits", [])
            if not hits:
                return deleted
            lines = b"".join(b'{"delete":{"_index":"%s","_id":"%s"}}\n' % (self.jobs_index.encode(), h["_id"].encode())
                             for h in hits)
            self.store._request("POST", "/_bulk", body=lines, params={"refresh": "true"},
                                headers={"content-type": "application/x-ndjson"})
            deleted += len(hits)
