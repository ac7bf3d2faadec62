"""SFTP drop-folder imports (manifest + CSV): one DAG per client account of config/sftp_accounts.yaml."""

from cdp_ingest_airflow.sftp_dags import build_all

globals().update(build_all())
