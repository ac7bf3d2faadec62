"""`airflow dags test <dag>` (the documented command) exits 0 after a successful run of a DAG with
deadline alerts, and the run is recorded as success (issue 12).

Airflow 3.3.2's ``dag.test()`` round-trips the DAG through serialisation, so its scheduler copy holds
the deadline alert *definitions*, while ``DagRun.update_state`` expects the ids of synced alert rows
when a run succeeds: ``'dict' object has no attribute 'hex'``, exit 1, run left ``running``. The DAG
factories build ``cdp_ingest_airflow.dag_base.ImportDAG``, whose ``test()`` runs without the alerts
(``dag.test()`` never evaluates deadlines anyway; the scheduler still gets them from the DAG files).
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime

import pytest
from sftp_kit import ROOT, make_account, manifest_bytes

pytestmark = [pytest.mark.services, pytest.mark.airflow]


@pytest.mark.slow  # 25..55 s: the CLI process parses every DAG file and runs the six tasks in turn
def test_airflow_dags_test_exits_0_after_a_successful_sftp_run(tmp_path, monkeypatch, opensearch, sftp_server,
                                                                 smtp_sink, webhook, airflow_db):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook)
    acc.write("e.csv", "Customer ID,evtName,When\nc1,Purchase,1767225600\nc2,Purchase,1767225601\n")
    acc.write("e.manifest", manifest_bytes("e.csv", "event", acc.client_email, {
        "Customer ID": {"ctName": "identity"}, "When": {"ctName": "ts"}}))
    acc.upload("e.csv", "e.manifest", gap=1.1)
    when = datetime(2026, 2, 11, 9, 0, tzinfo=UTC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "scripts")])}
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "airflow"), "dags", "test", acc.dag_id, when.isoformat()],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "has no attribute 'hex'" not in r.stdout + r.stderr
    e = acc.entry("e.manifest")
    assert (e["status"], e["rows_in"], e["loaded"]) == ("done", 2, 2)

    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == acc.dag_id).all()
        assert [(dr.state, dr.logical_date) for dr in runs] == [("success", when)]
    # the DAG the scheduler parses still carries its alerts
    assert [a.name for a in acc.dag().deadline][:1] == ["still processing after 2 h"]
