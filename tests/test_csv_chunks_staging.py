"""Chunks handed over through object storage (CDP_STAGING_URL): each chunk's stage task publishes its
staged Parquet file and error CSV to S3, the load tasks and the commit run with other, empty local
staging folders (other worker hosts), and after the commit nothing is left in the bucket. Real S3
server (moto) and OpenSearch; the operators run one after another as the DAG runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from staging_kit import staging_bucket

from cdp_ingest import sample
from cdp_ingest.errorfile import read_error_file
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
MAPPINGS = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings"


class TaskInstance:
    """Just enough of a running task instance for the plan's second XCom (``files``)."""

    def __init__(self):
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def test_chunks_stage_load_and_commit_on_different_hosts_through_s3(tmp_path, monkeypatch, opensearch, s3_server):
    from cdp_ingest_airflow.operators import (
        CommitChunkedFilesOperator,
        LoadChunksOperator,
        PlanCsvFilesOperator,
        StageChunkOperator,
        validate_chunks,
    )

    s3, bucket = staging_bucket(s3_server, monkeypatch, "cdp-chunks")
    monkeypatch.setenv("CDP_CSV_CHUNK_MB", "0.02")  # ~20 KB: the file is several chunks
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = "t-s3chunks-"
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    src = tmp_path / "tracker.csv"
    exp = sample.write_events(src, 1000, profiles=50, sessions=20)
    mapping = str(MAPPINGS / "demo-events.yaml")

    def host(name: str) -> None:
        monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / name))

    try:
        host("planner")
        monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")  # more chunks than a run may map: joined
        ti = TaskInstance()
        few = PlanCsvFilesOperator(task_id="plan", source_paths=[str(src)], mapping_path=mapping).execute({"ti": ti})
        assert len(few) == 2 == ti.xcom["files"][0]["n_chunks"] and few[1]["chunk"]["end"] == src.stat().st_size
        monkeypatch.delenv("AIRFLOW__CORE__MAX_MAP_LENGTH")
        ti = TaskInstance()
        chunks = PlanCsvFilesOperator(task_id="plan", source_paths=[str(src)], mapping_path=mapping,
                                      account="demo").execute({"ti": ti})
        [file] = ti.xcom["files"]
        n = len(chunks)
        assert n >= 3 and file["status"] == "planned" and file["n_chunks"] == n
        iid = file["import_id"]

        host("stage-host")
        staged = [StageChunkOperator(task_id="stage", chunk=c, mapping_path=mapping).execute({"logical_date": None})
                  for c in chunks]
        assert [s["staged"] for s in staged] == [f"s3://{bucket}/imports/{iid}/staged-{k}.parquet" for k in range(n)]
        assert not list((tmp_path / "stage-host").rglob("*.parquet"))  # nothing left on the stage host
        assert sum(s["rows_in"] for s in staged) == exp.rows
        rejects = [s["error_file"] for s in staged if s["error_file"]]
        assert rejects and all(r.startswith(f"s3://{bucket}/imports/{iid}/transform-errors-") for r in rejects)

        host("validate-host")
        items = validate_chunks(staged, max_reject_ratio=0.5, store_conn_id="cdp_opensearch")  # footers on S3
        assert [[c["chunk"]["index"] for c in i["chunks"]] for i in items] == [[k] for k in range(n)]

        loaded = []
        for k, item in enumerate(items):
            host(f"load-host-{k}")  # every chunk loads on its own (empty) host
            loaded.append(LoadChunksOperator(task_id="load", item=item).execute({}))
        assert sum(c["loaded"] for r in loaded for c in r["chunks"]) == exp.good

        host("commit-host")
        [out] = CommitChunkedFilesOperator(task_id="commit", files=[file], loaded=loaded,
                                           error_dir=str(tmp_path / "errors")).execute({"params": {}})
        assert out["status"] == "committed"
        assert (out["rows_in"], out["loaded"], out["rejected"], out["duplicates"]) == (
            exp.rows, exp.good, exp.bad, exp.duplicates)
        rows = read_error_file(out["error_file"])  # every chunk's rejects, fetched from S3, in file order
        assert len(rows) == exp.bad and [r["insert_id"] for r in rows] == sorted(r["insert_id"] for r in rows)
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # handed over, then removed
        store = Store(make_client(opensearch.info["url"]), prefix="t-s3chunks-")
        store.refresh(["t-s3chunks-event-*"])
        assert store.count("t-s3chunks-event-*") == exp.good
        entry = store.get("t-s3chunks-import-ledger", file["unit_id"])["_source"]
        assert (entry["status"], entry["extra"]["chunks"]) == ("committed", n)
    finally:
        Store(make_client(opensearch.info["url"]), prefix="t-s3chunks-")._request("DELETE", "/t-s3chunks-*")
