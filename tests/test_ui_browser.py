"""The operators' console in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``) against a
running ``airflow api-server`` with this repo's plugins: login through Airflow's own login form, the page
renders at 1280 px without horizontal scrolling, search works, an entry's page shows its timeline, the
error-file download returns the CSV, and requests without a login get 401.

Screenshots go to ``.run/artifacts/screenshots/`` (kept as CI artefacts; see the README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from webdriver_kit import CHROMEDRIVER, CHROMIUM, ApiServer, Browser, http

from cdp_ingest.store import Store, make_client
from cdp_ingest_airflow.activity import ActivityLog

pytestmark = [pytest.mark.services, pytest.mark.airflow, pytest.mark.slow,
              pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                 reason="chromium / chromium-driver missing (scripts/bootstrap.sh installs them)")]
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / ".run" / "artifacts" / "screenshots"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
USER, PASSWORD = "ops", "console-test-pw"


@pytest.fixture
def seeded(opensearch, tmp_path):
    """A few units of several families (one with a local error CSV) in an isolated index prefix."""
    prefix = f"t-ui-{os.getpid()}-{int(time.time())}-"
    store = Store(make_client(opensearch.info["url"]), prefix=prefix)
    log = ActivityLog(store)
    errors = tmp_path / "errors" / "part-00000.errors.csv"
    errors.parent.mkdir(parents=True)
    errors.write_text("insert_id,event_key,Failure Description\nnot-a-uuid,purchase,insert_id: not a UUID\n")
    now = datetime.now(UTC)
    for days_ago, loaded, rejected in ((3, 1200, 4), (2, 900, 40), (1, 1500, 2)):
        log.record(source="csv", unit=f"tracker-{days_ago}.csv", account="demo", status="done", rows_in=loaded +
                   rejected, loaded=loaded, rejected=rejected, duplicates=0, at=now - timedelta(days=days_ago))
    part = log.record(source="partition", unit="dt=2026-01-06/part-00000.parquet", account="hackle_s3",
                      status="done", rows_in=7, loaded=6, rejected=1, duplicates=0, error_file=str(errors),
                      path="s3://bucket/events/dt=2026-01-06/part-00000.parquet", day="2026-01-06",
                      dag_id="partition_import_hackle_s3", run_id="scheduled__2026-01-07T02:00:00+00:00")
    log.record(source="partition", unit="dt=2026-01-05", account="hackle_s3", status="timed_out", missing="_SUCCESS",
               message="s3://bucket/events/dt=2026-01-05/_SUCCESS did not appear within 20 h", rollup=True)
    log.record(source="sftp", unit="orders-0107.manifest", account="acme", manifest="orders-0107.manifest",
               file_name="orders-0107.csv", status="failed", error_code="no_data_file",
               message="no data file found: orders-0107.csv (named by manifest orders-0107.manifest) is not in the "
                       "folder " + "and a long explanation that must wrap inside its cell " * 4)
    return {"prefix": prefix, "partition": part, "errors": errors}


@pytest.fixture
def api_server(seeded, tmp_path):
    from airflow_env import airflow_env

    home = tmp_path / "airflow"
    home.mkdir()
    env = {**os.environ, **airflow_env(home)}
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"]["index_prefix"] = seeded["prefix"]
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env.update({"AIRFLOW_CONN_CDP_OPENSEARCH": json.dumps(conn), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS":
                f"{USER}:viewer", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")])})
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    # the seeded entry's DAG in the metadata DB: the console shows a user only the entries of DAGs they may
    # read (only the partition DAG file is parsed, to keep this quick)
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "dags" / "partition_import.py", dags)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    subprocess.run([AIRFLOW, "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=300)
    server = ApiServer(env, tmp_path / "api-server.log", AIRFLOW)
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "downloads", tmp_path / "chromedriver.log")
    yield b
    b.quit()


def shot(b: Browser, name: str) -> None:
    b.screenshot(SCREENSHOTS / f"{name}.png")


def test_console_in_headless_chromium(seeded, api_server, browser, tmp_path):
    base = f"{api_server.url}/cdp-activity/"
    b = browser
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # no login: every route answers 401
    part_id = seeded["partition"]["id"]
    for route in ("", "api/activity", f"entry/{part_id}", f"api/activity/{part_id}/error-file", "api/chart"):
        assert http("GET", base + route)[0] == 401, route
    b.get(base)
    assert "Not authenticated" in b.source()

    # login through Airflow's own form, then the console
    b.get(f"{api_server.url}/auth/login?next={base}")
    b.type(b.wait_for("input[name=username]"), USER)
    b.type(b.find("input[name=password]"), PASSWORD)
    b.click(b.find("button[type=submit]"))
    deadline = time.monotonic() + 30
    while not b.script("return document.cookie.includes('_token=')") and time.monotonic() < deadline:
        time.sleep(0.25)
    b.get(base)
    b.wait_for("#entries")
    shot(b, "activity-list")
    units = [b.text(e) for e in b.find_all("#entries a.unit")]
    assert {"tracker-1.csv", "dt=2026-01-06/part-00000.parquet", "dt=2026-01-05", "orders-0107.manifest"} <= set(units)
    assert len(b.find_all(".chart svg")) == 3  # csv, partition, sftp... (sftp has no finished counts: 0 bars)
    sizes = b.script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[1], f"horizontal scrolling at {sizes[1]} px: content is {sizes[0]} px wide"
    page = b.source()
    assert "missing: _SUCCESS" in page and "timed out" in page

    # search: a file name, then a status filter
    b.type(b.find("input[name=q]"), "part-00000")
    b.click(b.find("#search"))
    deadline = time.monotonic() + 20
    while "q=part-00000" not in b.url and time.monotonic() < deadline:
        time.sleep(0.2)
    b.wait_for("#entries")
    assert [b.text(e) for e in b.find_all("#entries a.unit")] == ["dt=2026-01-06/part-00000.parquet"]
    shot(b, "activity-search")
    b.get(base + "?status=timed_out")
    assert [b.text(e) for e in b.find_all("#entries a.unit")] == ["dt=2026-01-05"]

    # the file's own page and its error file, downloaded by the browser through the authenticated endpoint
    b.get(base + f"entry/{part_id}")
    b.wait_for("#timeline")
    assert "partition_import_hackle_s3" in b.source()
    assert b.find_all("a#dag-run")
    sizes = b.script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[1], f"entry page scrolls horizontally: {sizes}"
    shot(b, "activity-entry")
    b.click(b.find("a#error-file"))
    downloaded = tmp_path / "downloads" / seeded["errors"].name
    deadline = time.monotonic() + 30
    while not downloaded.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert downloaded.read_bytes() == seeded["errors"].read_bytes()
    # the same request from the page without its login cookie is refused
    status = b.async_script("const done = arguments[arguments.length - 1];"
                            "fetch(arguments[0], {credentials: 'omit'}).then(r => done(r.status))",
                            f"{base}api/activity/{part_id}/error-file")
    assert status == 401
    shutil.rmtree(tmp_path / "downloads", ignore_errors=True)
