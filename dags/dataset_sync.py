"""Dataset syncs (SPEC §4): one DAG per dataset of config/datasets.yaml and of the registry folder the REST API
writes ($CDP_DATASETS_DIR/registry/*.json): local file reads only, so parsing stays side-effect free."""

from cdp_ingest_airflow.dataset_dags import build_all

globals().update(build_all())
