"""Staged files handed over through object storage (CDP_STAGING_URL): the CSV stage task publishes its
staged Parquet file and error CSV to S3 (moto), validate reads the footer there, and the load task —
with another, empty local staging folder, as on another worker host — fetches them, loads, merges the
errors and removes the objects. Against the real OpenSearch and the local S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from staging_kit import staging_bucket
from test_partition_e2e import _states, ev, insert_id, parquet, partition_env  # noqa: F401 (a fixture)

from cdp_ingest import sample
from cdp_ingest.errorfile import read_error_file
from cdp_ingest.store import Store, make_client

pytestmark = [pytest.mark.services, pytest.mark.airflow]
MAPPINGS = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings"


def test_stage_and_load_on_different_hosts_through_s3(tmp_path, monkeypatch, opensearch, s3_server):
    from cdp_ingest_airflow.operators import BulkIndexOperator, StageFileOperator, validate_stage

    s3, bucket = staging_bucket(s3_server, monkeypatch, "cdp-staging")
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "host-a"))
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = "t-s3stage-"
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    src = tmp_path / "tracker.csv"
    exp = sample.write_events(src, 1000, profiles=50, sessions=20)
    try:
        staged = StageFileOperator(task_id="stage", source_path=str(src),
                                   mapping_path=str(MAPPINGS / "demo-events.yaml")).execute({"logical_date": None})
        iid = staged["import_id"]
        assert staged["staged"] == f"s3://{bucket}/imports/{iid}/staged.parquet"
        assert staged["error_file"] == f"s3://{bucket}/imports/{iid}/transform-errors.csv"
        assert not list((tmp_path / "host-a").rglob("*.parquet"))  # nothing left on the stage host
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        assert keys == {f"imports/{iid}/staged.parquet", f"imports/{iid}/transform-errors.csv"}
        assert validate_stage(staged) == staged  # footer read from S3: row count and schema checked

        monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "host-b"))  # the load runs elsewhere
        out = BulkIndexOperator(task_id="load", staged=staged, error_dir=str(tmp_path / "errors")).execute({})
        assert out["status"] == "committed"
        assert (out["loaded"], out["rejected"], out["duplicates"]) == (exp.good, exp.bad, exp.duplicates)
        assert len(read_error_file(out["error_file"])) == exp.bad  # the transform's rejects came from S3
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # handed over, then removed
        again = BulkIndexOperator(task_id="load", staged=staged, error_dir=str(tmp_path / "errors")).execute({})
        assert again["status"] == "committed"  # a retry after the commit reports it, with the ledger's counts
        assert (again["loaded"], again["rejected"], again["duplicates"], again["error_file"]) == (
            out["loaded"], out["rejected"], out["duplicates"], out["error_file"])
        store = Store(make_client(opensearch.info["url"]), prefix="t-s3stage-")
        store.refresh(["t-s3stage-event-*"])
        assert store.count("t-s3stage-event-*") == exp.good
    finally:
        Store(make_client(opensearch.info["url"]), prefix="t-s3stage-")._request("DELETE", "/t-s3stage-*")


def test_partition_dag_stages_through_s3_and_leaves_nothing_behind(partition_env, monkeypatch):  # noqa: F811
    """The partition DAG (dag.test) with CDP_STAGING_URL: a day loads completely, a dry run of another
    day stages and validates through S3 and removes its objects; no staged file stays anywhere."""
    from datetime import date

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    env = partition_env("s3")
    bucket = f"{env.bucket}-staging"
    S3Hook(aws_conn_id="cdp_s3").create_bucket(bucket)
    monkeypatch.setenv("CDP_STAGING_URL", f"s3://{bucket}/staged")
    monkeypatch.setenv("CDP_STAGING_CONN_ID", "cdp_s3")
    day, other = date(2025, 5, 1), date(2025, 5, 2)
    env.put_day(day, {"a.parquet": parquet([ev(n, day) for n in range(6)]),
                      "b.parquet": parquet([ev(n, day) for n in range(6, 10)] + [ev(10, day, insert_id="")])})
    env.put_day(other, {"a.parquet": parquet([ev(n, other) for n in range(20, 23)])})

    assert env.run(day).state == "success"
    assert set(env.documents()) == {insert_id(n) for n in range(10)}
    assert {e["status"] for e in env.ledger()} == {"committed"}
    assert len(env.error_rows(day)) == 1  # the transform's reject, fetched from S3 by the load task
    dr = env.run(day, conf={"date": str(other), "dry_run": True})
    assert dr.state == "success" and _states(dr)["file.load"] == {"skipped"}
    assert set(env.documents()) == {insert_id(n) for n in range(10)}
    assert not S3Hook(aws_conn_id="cdp_s3").list_keys(bucket)  # loaded or dry-run: removed
    assert list((env.base / "staging").rglob("*.parquet")) == []


def test_compose_passes_the_staging_url_to_every_airflow_service():
    from test_docker_compose import env_of, resolved, services

    doc = resolved({"CDP_STAGING_URL": "s3://cdp-staging/imports", "CDP_STAGING_CONN_ID": "minio"})
    for name in ("airflow-worker", "airflow-scheduler", "airflow-dag-processor"):
        env = env_of(services(doc)[name])
        assert (env["CDP_STAGING_URL"], env["CDP_STAGING_CONN_ID"]) == ("s3://cdp-staging/imports", "minio")
    default = env_of(services(resolved())["airflow-worker"])
    assert (default["CDP_STAGING_URL"], default["CDP_STAGING_CONN_ID"]) == ("", "cdp_staging")  # local staging
