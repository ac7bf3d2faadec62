"""Every DAG in dags/ imports cleanly and follows the house rules (owner, tags, retries, docs,
callbacks), and parsing the DAG files touches no connection, Variable or network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found in dags/"


def test_every_dag_follows_house_rules(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert "cdp-ingest" in dag.tags, f"{dag_id} lacks the cdp-ingest tag"
        assert dag.doc_md and len(dag.doc_md) > 80, f"{dag_id} has no real doc_md"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
            assert t.retries >= 2, f"{dag_id}.{t.task_id} retries={t.retries}"
            assert t.on_failure_callback, f"{dag_id}.{t.task_id} has no failure callback"


def test_every_task_pushes_one_xcom(dagbag):
    """A dict a task returns is one XCom. Airflow infers ``multiple_outputs`` from a ``-> dict`` return
    annotation and then pushes each key as an XCom of its own as well: an execution-API call and a metadata
    row per key (16 per file for a partition file's transform)."""
    many = [f"{dag_id}.{t.task_id}" for dag_id, dag in dagbag.dags.items() for t in dag.tasks
            if getattr(t, "multiple_outputs", False)]
    assert many == []


def test_csv_import_order_is_profiles_sessions_events(dagbag):
    dag = dagbag.dags["csv_import_demo"]
    assert dag.get_task("session.list_files").upstream_task_ids == {"profile.archive"}
    assert dag.get_task("event.list_files").upstream_task_ids == {"session.archive"}


def test_csv_chunk_loads_of_a_run_are_limited(dagbag):
    """`parallel_loads` (default 2) caps a run's chunk loads; staging is not capped; bad values refuse."""
    import yaml

    from cdp_ingest_airflow.csv_dags import build_dag

    dag = dagbag.dags["csv_import_demo"]
    for kind in ("profile", "session", "event"):
        assert dag.get_task(f"{kind}.load").max_active_tis_per_dagrun == 2
        assert dag.get_task(f"{kind}.stage").max_active_tis_per_dagrun is None
    cfg = yaml.safe_load((ROOT / "config" / "csv_imports.yaml").read_text())["imports"]["demo"]
    assert build_dag("x", {**cfg, "parallel_loads": 5}).get_task("event.load").max_active_tis_per_dagrun == 5
    for bad in (0, "2", True, 1.5):
        with pytest.raises(ValueError, match="parallel_loads"):
            build_dag("x", {**cfg, "parallel_loads": bad})


@pytest.mark.parametrize(("change", "message"), [
    ({"folder": None}, "folder .* is required"),
    ({"units": ["event"]}, "units must map kinds"),
    ({"units": {"events": {"pattern": "*.csv", "mapping": "demo-events.yaml"}}}, r"unknown unit kinds \['events'\]"),
    ({"units": {"event": {"pattern": "*.csv"}}}, "unit event needs pattern and mapping"),
    ({"units": {"event": {"pattern": "*.csv", "mapping": "nope.yaml"}}},
     "unit event: mapping nope.yaml: cannot read YAML: .*No such file"),
    ({"units": {"event": {"pattern": "*.csv", "mapping": "demo-profiles.yaml"}}},
     "unit event: mapping demo-profiles.yaml maps profiles"),
])
def test_csv_import_config_mistakes_are_named(change, message):
    """A mistake in config/csv_imports.yaml fails the DAG file with a message naming it: a missing folder
    or pattern was a KeyError, and a missing mapping file or one of another kind failed only at run time."""
    import yaml

    from cdp_ingest_airflow.csv_dags import build_dag

    cfg = yaml.safe_load((ROOT / "config" / "csv_imports.yaml").read_text())["imports"]["demo"]
    with pytest.raises(ValueError, match=message):
        build_dag("x", {**cfg, **change})


PARSE_GUARD = r"""
import socket, sys
def no_network(*a, **k):
    raise AssertionError("DAG parsing opened a network connection")
socket.socket.connect = no_network
socket.create_connection = no_network
from airflow.sdk import BaseHook, Variable
def no_conn(*a, **k):
    raise AssertionError("DAG parsing read a connection")
def no_var(*a, **k):
    raise AssertionError("DAG parsing read a Variable")
BaseHook.get_connection = classmethod(no_conn)
Variable.get = staticmethod(no_var)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = [m for m in ("pandas", "pyarrow", "opensearchpy", "boto3", "paramiko") if m in sys.modules]
print("ERRORS", bag.import_errors)
print("HEAVY", heavy)
print("DAGS", len(bag.dags))
"""


def test_parsing_has_no_side_effects_or_heavy_imports():
    r = subprocess.run([sys.executable, "-c", PARSE_GUARD, str(ROOT / "dags")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.split(" ", 1)[0] in
               ("ERRORS", "HEAVY", "DAGS"))
    assert out["ERRORS"] == "{}", out["ERRORS"]
    assert int(out["DAGS"]) >= 1
    assert out["HEAVY"] == "[]", f"DAG parsing imported heavy modules: {out['HEAVY']}"


def test_dag_files_parse_without_the_standard_providers_deprecation_warning():
    """Every task process parses its DAG file, so a warning raised there lands in every task log. Parsed
    in a fresh process with every warning shown, the DAG files raise none about the standard
    provider's old ``determine_kwargs`` import (its ``@task.sensor``), and the sensor DAGs are built."""
    code = ("import sys; from airflow.dag_processing.dagbag import DagBag; "
            "bag = DagBag(dag_folder=sys.argv[1]); print('ERRORS', bag.import_errors); "
            "print('SENSORS', sorted(d for d, dag in bag.dags.items() "
            "if any(t.task_type == 'DecoratedSensorOperator' for t in dag.tasks)))")
    r = subprocess.run([sys.executable, "-W", "always", "-c", code, str(ROOT / "dags")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERRORS {}" in r.stdout
    assert "csv_import_demo" in r.stdout.split("SENSORS", 1)[1]
    assert "determine_kwargs" not in r.stdout + r.stderr


def test_guard_catches_a_dag_that_opens_a_socket(tmp_path):
    bad = tmp_path / "bad_dag.py"
    # DagBag's safe mode only parses files that mention both "airflow" and "dag"
    bad.write_text("# airflow dag\nimport socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    r = subprocess.run([sys.executable, "-c", PARSE_GUARD, str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert "network connection" in r.stdout


def test_socket_module_untouched_in_this_process():
    assert socket.socket.connect.__name__ == "connect"
