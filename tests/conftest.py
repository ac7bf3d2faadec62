"""Shared fixtures: the embedded Airflow config, the real local services, a migrated metadata DB."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from airflow_env import airflow_env
from devservices import Harness, Service

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its config when first imported, so the embedded defaults are set before any test
# module imports it: a throw-away AIRFLOW_HOME with a SQLite DB, this repo's dags/ and plugins/.
_OWN_HOME = not os.environ.get("CDP_TEST_AIRFLOW_HOME")
_AIRFLOW_HOME = Path(os.environ.get("CDP_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="cdp-test-airflow-"))
for _key, _value in airflow_env(_AIRFLOW_HOME).items():
    if _key != "PYTHONPATH":
        os.environ[_key] = _value


def pytest_sessionfinish(session, exitstatus):
    """The throw-away AIRFLOW_HOME goes with the session (one per run otherwise piles up in /tmp)."""
    if _OWN_HOME:
        shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def harness() -> Harness:
    """One set of services for the whole session, each started on first use, all stopped by PID.

    Not under pytest's tmp_path: that tree is private to root, and OpenSearch/PostgreSQL run as
    service users that must reach their data folders.
    """
    h = Harness(tempfile.mkdtemp(prefix="cdp-test-services-"))
    yield h
    h.stop()
    shutil.rmtree(h.run_dir, ignore_errors=True)


def _start(harness: Harness, name: str) -> Service:
    svc = harness.start([name])[name]
    os.environ.update(harness.airflow_connections())
    return svc


@pytest.fixture(scope="session")
def opensearch(harness) -> Service:
    return _start(harness, "opensearch")


@pytest.fixture(scope="session")
def elasticsearch(harness) -> Service:
    """Elasticsearch 7.17 (integ-test zip): proves the store works where the client differs."""
    return _start(harness, "elasticsearch")


@pytest.fixture(scope="session")
def sftp_server(harness) -> Service:
    return _start(harness, "sftp")


@pytest.fixture(scope="session")
def s3_server(harness) -> Service:
    return _start(harness, "s3")


@pytest.fixture(scope="session")
def gcs_server(harness) -> Service:
    return _start(harness, "gcs")


@pytest.fixture(scope="session")
def postgres(harness) -> Service:
    return _start(harness, "postgres")


@pytest.fixture(scope="session")
def smtp_sink(harness) -> Service:
    return _start(harness, "smtp")


@pytest.fixture(scope="session")
def webhook(harness) -> Service:
    return _start(harness, "webhook")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB (needed by dag.test())."""
    from airflow.utils.db import initdb

    initdb()
    return _AIRFLOW_HOME
