"""Daily event partitions from S3 / GCS (SPEC §3): one DAG per entry of config/partition_sources.yaml."""

from cdp_ingest_airflow.partition_dags import build_all

globals().update(build_all())
