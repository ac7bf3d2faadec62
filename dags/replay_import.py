"""Historical replays to Segment / Tracardi (SPEC §5): one DAG per entry of config/replays.yaml."""

from cdp_ingest_airflow.replay_dags import build_all

globals().update(build_all())
