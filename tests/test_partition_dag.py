"""The partition DAG factory without running a DAG: configuration checks, DAG shape, the day a run
imports (data interval, never the wall clock), the deadline alert and its callback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pendulum
import pytest

from cdp_ingest_airflow import partition_dags as pd

ROOT = Path(__file__).resolve().parents[1]
BERLIN = ZoneInfo("Europe/Berlin")


def cfg(**over) -> dict:
    base = {"url": "s3://bucket/hackle/events/", "conn_id": "cdp_s3", "schedule": "0 2 * * *",
            "timezone": "Europe/Berlin", "load_deadline": "09:00"}
    base.update(over)
    return base


# ---- configuration ------------------------------------------------------------------------------------
def test_deadline_interval_runs_from_the_logical_date_to_the_local_deadline_on_the_run_day():
    assert pd.deadline_interval("0 2 * * *", "09:00") == timedelta(hours=31)
    assert pd.deadline_interval("30 1 * * *", "07:00") == timedelta(hours=29, minutes=30)
    assert pd.deadline_interval("@daily", "06:15") == timedelta(hours=30, minutes=15)


def test_numbers_written_as_text_are_still_read():
    """``max_reject_ratio: "0.2"`` and a sensor timeout in quotes were read by ``float()`` before the shape
    checks; they still are."""
    src = pd.validate_source("demo", cfg(max_reject_ratio="0.2", max_active_runs="2", sensor={"timeout": "600"}))
    assert (src["max_reject_ratio"], src["max_active_runs"], src["sensor"]["timeout"]) == (0.2, 2, 600.0)


@pytest.mark.parametrize(("over", "message"), [
    ({"schedule": "0 * * * *"}, "daily cron"),
    ({"schedule": "0 2 * * 1"}, "daily cron"),
    ({"schedule": "0 25 * * *"}, "not a valid time"),
    ({"load_deadline": "01:30"}, "must be later in the day than the scheduled run"),
    ({"load_deadline": "9am"}, "HH:MM"),
    ({"timezone": "Mars/Olympus"}, "unknown timezone"),
    ({"url": "ftp://host/x"}, "url must be"),
    ({"url": "s3://"}, "url must be"),
    ({"conn_id": None}, "conn_id"),
    ({"sensor": {"mode": "deferrable"}}, "sensor mode"),
    ({"max_reject_ratio": 2}, "max_reject_ratio"),
    ({"parallel_loads": 0}, "parallel_loads"),
    ({"parallel_loads": "2"}, "parallel_loads"),
    # (these raised a TypeError from inside the factory: a "Broken DAG" that named no key)
    ({"sensor": "reschedule"}, "sensor must be a mapping"),
    ({"sensor": {"timeout": "1h"}}, "sensor timeout .seconds. must be a number"),
    ({"sensor": {"poke_interval": 0}}, "sensor poke_interval .seconds. must be > 0"),
    ({"sensor": {"every": 60}}, r"unknown sensor keys \['every'\]"),
    ({"max_reject_ratio": None}, "max_reject_ratio must be a number"),
    ({"max_reject_ratio": "10%"}, "max_reject_ratio must be a number"),
    ({"max_active_runs": [1]}, "max_active_runs must be a whole number"),
    ({"max_active_runs": 0}, "max_active_runs must be >= 1"),
    ({"max_active_runs": "2.5"}, "max_active_runs must be a whole number"),
])
def test_bad_source_configuration_is_refused_at_parse_time(over, message):
    with pytest.raises(ValueError, match=message):
        pd.validate_source("demo", cfg(**over))
    with pytest.raises(ValueError, match="lowercase"):
        pd.validate_source("Demo-1", cfg())


def test_defaults_are_filled_in():
    src = pd.validate_source("demo", {"url": "gs://b/p", "conn_id": "cdp_gcs"})
    assert (src["schedule"], src["timezone"], src["load_deadline"], src["store_conn_id"]) == (
        "0 2 * * *", "UTC", None, "cdp_opensearch")
    assert src["sensor"] == {"mode": "reschedule", "poke_interval": 300, "timeout": 72000}
    assert src["scheme"] == "gs" and src["url"] == "gs://b/p" and src["source_id"] == "demo"
    assert src["parallel_loads"] == 2


# ---- the DAG --------------------------------------------------------------------------------------------
def test_dag_shape_schedule_params_and_deadline():
    from airflow.sdk import AsyncCallback, CronDataIntervalTimetable, DeadlineReference

    dag = pd.build_dag("demo", cfg())
    assert dag.dag_id == "partition_import_demo"
    assert set(dag.task_dict) == {"resolve_partition", "wait_for_success", "list_files", "file.transform",
                                  "file.validate", "file.load", "record_accounting"}
    up = {t: dag.get_task(t).upstream_task_ids for t in dag.task_dict}
    assert up["wait_for_success"] == {"resolve_partition"}
    assert up["list_files"] == {"resolve_partition", "wait_for_success"}
    assert up["file.transform"] == {"list_files", "resolve_partition"}
    assert up["file.validate"] == {"file.transform", "resolve_partition"}
    assert up["file.load"] == {"file.validate"}
    assert up["record_accounting"] == {"resolve_partition", "file.load", "file.transform"}
    # per-file chains: one bad file does not block the others
    assert type(dag.task_group_dict["file"]).__name__ == "MappedTaskGroup"
    assert dag.get_task("wait_for_success").mode == "reschedule"
    assert dag.get_task("record_accounting").trigger_rule == "none_failed"
    # two files' loads at a time per run by default (transforms are not limited); configurable
    assert dag.get_task("file.load").max_active_tis_per_dagrun == 2
    assert dag.get_task("file.transform").max_active_tis_per_dagrun is None
    assert pd.build_dag("demo", cfg(parallel_loads=3)).get_task("file.load").max_active_tis_per_dagrun == 3

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 2 * * *", "Europe/Berlin")
    assert dag.catchup is False and "s3" in dag.tags and "cdp-ingest" in dag.tags
    assert {k: dag.params[k] for k in ("date", "dry_run", "force")} == {"date": None, "dry_run": False,
                                                                        "force": False}

    (alert,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert alert.reference == DeadlineReference.DAGRUN_LOGICAL_DATE
    assert alert.interval == timedelta(hours=31)
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "cdp_ingest_airflow.partition_dags.partition_deadline_missed"
    assert alert.callback.kwargs == {"source": "demo", "timezone": "Europe/Berlin", "load_deadline": "09:00",
                                     "webhook_conn_id": "cdp_webhook"}
    for t in dag.tasks:
        assert t.retries >= 2 and t.retry_exponential_backoff and t.on_failure_callback


def test_dag_serialises_with_its_deadline():
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.serialize_dag(pd.build_dag("demo", cfg()))
    assert "partition_deadline_missed" in json.dumps(data, default=str)
    DagSerialization.deserialize_dag(data)


def test_shipped_config_gives_one_dag_per_source(monkeypatch):
    monkeypatch.delenv("CDP_PARTITION_SOURCES", raising=False)
    dags = pd.build_all()
    assert set(dags) == {"partition_import_hackle_s3", "partition_import_hackle_gcs"}
    assert "gcs" in dags["partition_import_hackle_gcs"].tags
    assert all(d.deadline for d in dags.values())


# ---- which day a run imports ----------------------------------------------------------------------------
def test_scheduled_run_imports_the_day_its_interval_starts_not_today():
    """The scheduled run that fires on 2025-03-02 02:00 Berlin has logical date 2025-03-01 02:00 Berlin
    and imports dt=2025-03-01, whatever the wall clock says."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    src = pd.validate_source("demo", cfg())
    tt = coerce_to_core_timetable(pd.build_dag("demo", cfg()).timetable)
    prev = DataInterval(pendulum.datetime(2025, 2, 28, 2, tz="Europe/Berlin"),
                        pendulum.datetime(2025, 3, 1, 2, tz="Europe/Berlin"))
    info = tt.next_dagrun_info(last_automated_data_interval=prev,
                               restriction=TimeRestriction(earliest=None, latest=None, catchup=True))
    assert info.logical_date == pendulum.datetime(2025, 3, 1, 2, tz="Europe/Berlin")
    assert info.run_after == pendulum.datetime(2025, 3, 2, 2, tz="Europe/Berlin")
    part = pd.resolve_partition(src, info.data_interval.start, {})
    assert part["day"] == "2025-03-01"
    assert part["prefix"] == "s3://bucket/hackle/events/dt=2025-03-01/"
    assert part["marker"] == "s3://bucket/hackle/events/dt=2025-03-01/_SUCCESS"
    assert part["day"] != str(datetime.now(UTC).date() - timedelta(days=1))

    # a manual run at some instant covers the last complete interval before it (here: 2025-03-09)
    manual = tt.infer_manual_data_interval(run_after=pendulum.datetime(2025, 3, 10, 14, tz="UTC"))
    assert pd.resolve_partition(src, manual.start, {})["day"] == "2025-03-09"


def test_local_day_of_the_interval_and_the_date_param():
    src = pd.validate_source("demo", cfg(schedule="0 0 * * *"))
    # midnight Berlin is 23:00 UTC the day before: the day is Berlin's, not UTC's
    start = datetime(2025, 3, 4, 23, 0, tzinfo=UTC)
    assert pd.resolve_partition(src, start, None)["day"] == "2025-03-05"
    part = pd.resolve_partition(src, start, {"date": "2024-12-31", "force": True, "dry_run": False})
    assert (part["day"], part["force"], part["dry_run"]) == ("2024-12-31", True, False)
    with pytest.raises(ValueError, match="date"):
        pd.resolve_partition(src, None, {})
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        pd.resolve_partition(src, start, {"date": "31.12.2024"})


def test_mapped_group_outputs_are_always_a_list():
    assert pd.mapped_outputs(None) == []
    assert pd.mapped_outputs({"a": 1}) == [{"a": 1}]
    assert pd.mapped_outputs(iter([{"a": 1}, {"b": 2}])) == [{"a": 1}, {"b": 2}]
    assert pd.mapped_outputs([{"a": 1}, None, {"b": 2}]) == [{"a": 1}, {"b": 2}]  # a skipped instance


# ---- the deadline callback ---------------------------------------------------------------------------------
def _context(run_type: str, conf: dict | None = None) -> dict:
    # what Deadline.handle_miss hands over: the DAGRunResponse as JSON and the deadline
    return {"dag_run": {"dag_id": "partition_import_demo", "run_id": f"{run_type}__2025-03-01T01:00:00+00:00",
                        "run_type": run_type, "state": "running", "conf": conf or {},
                        "logical_date": "2025-03-01T01:00:00Z", "data_interval_start": "2025-03-01T01:00:00Z",
                        "data_interval_end": "2025-03-02T01:00:00Z"},
            "deadline": {"id": "x", "deadline_time": "2025-03-02T08:00:00+00:00"}}


@pytest.mark.services
def test_deadline_callback_notifies_the_webhook_for_scheduled_runs_only(webhook):
    kwargs = {"source": "demo", "timezone": "Europe/Berlin", "load_deadline": "09:00"}
    inbox = Path(webhook.info["inbox"])
    before = set(inbox.glob("*.json"))
    result = asyncio.run(pd.partition_deadline_missed(context=_context("scheduled"), **kwargs))
    assert result["notified"] is True
    new = [json.loads(p.read_text()) for p in sorted(set(inbox.glob("*.json")) - before)]
    (note,) = [n for n in new if n["path"] == "/cdp-ingest/partition-deadline-missed"]
    body = note["body"]
    assert body["event"] == "partition-deadline-missed" and body["source"] == "demo"
    assert body["day"] == "2025-03-01" and body["deadline_local"] == "2025-03-02T09:00:00+01:00"
    assert body["run_type"] == "scheduled" and body["dag_id"] == "partition_import_demo"

    # the date param wins; backfills are only logged
    result = asyncio.run(pd.partition_deadline_missed(context=_context("manual", {"date": "2025-02-10"}), **kwargs))
    assert result["day"] == "2025-02-10" and result["notified"] is True
    before = set(inbox.glob("*.json"))
    result = asyncio.run(pd.partition_deadline_missed(context=_context("backfill"), **kwargs))
    assert result["notified"] is False and set(inbox.glob("*.json")) == before


def test_deadline_callback_without_a_webhook_connection_only_logs(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_CDP_WEBHOOK", raising=False)
    result = asyncio.run(pd.partition_deadline_missed(context=_context("scheduled"), source="demo",
                                                      timezone="UTC", load_deadline="07:00"))
    assert result["notified"] is False and result["deadline_local"] == "2025-03-02T07:00:00+00:00"
    assert date.fromisoformat(result["day"]) == date(2025, 3, 1)
    assert "not loaded by" in caplog.text and "customer" not in caplog.text


def test_callback_and_day_helpers_are_airflow_time_zone_safe():
    assert pd.resolve_partition(pd.validate_source("x", cfg(timezone="Asia/Kolkata")),
                                datetime(2025, 3, 1, 20, 30, tzinfo=UTC), {})["day"] == "2025-03-02"
    assert datetime(2025, 3, 2, 9, tzinfo=BERLIN).utcoffset() == timedelta(hours=1)


def test_the_day_tasks_do_not_import_arrow():
    """Resolving the day, the deadline and the day's summary (each its own task process under the
    LocalExecutor) need no pyarrow; checked in a fresh interpreter, with the transform's import as the
    control."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, json\n"
        "from datetime import UTC, datetime\n"
        "from zoneinfo import ZoneInfo\n"
        "from cdp_ingest_airflow import partition_dags as pd\n"
        "from cdp_ingest.partition_days import local_deadline, summarize_day\n"
        "src = pd.validate_source('x', {'url': 's3://b/e/', 'conn_id': 'cdp_s3', 'schedule': '0 2 * * *',\n"
        "                               'timezone': 'UTC'})\n"
        "day = pd.resolve_partition(src, datetime(2025, 3, 1, 2, tzinfo=UTC), {})['day']\n"
        "total = summarize_day([{'rows_in': 3, 'loaded': 2, 'rejected': 1, 'duplicates': 0}])['rows_in']\n"
        "deadline = local_deadline(datetime(2025, 3, 1).date(), '07:00', ZoneInfo('UTC')).isoformat()\n"
        "before = 'pyarrow' in sys.modules\n"
        "import cdp_ingest.partitions\n"
        "print(json.dumps([day, total, deadline, before, 'pyarrow' in sys.modules]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        "2025-03-01", 3, "2025-03-02T07:00:00+00:00", False, True]
