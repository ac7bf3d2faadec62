"""A real embedded Airflow (``airflow standalone``: scheduler, dag-processor, triggerer, api-server,
LocalExecutor) for the live tests and the partition benchmark; stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def standalone_env(env: dict[str, str], port: int) -> dict[str, str]:
    """``env`` plus what ``airflow standalone`` needs here: its API port (the task runners' execution
    API), every user an admin (no login for the CLI/tests), DAG files re-read every 5 s, this venv's
    ``airflow`` on PATH."""
    return {**env, "AIRFLOW__API__PORT": str(port), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])}


def parent_pids() -> dict[int, int]:
    """Every running process's parent, from ``/proc/<pid>/stat``."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    return parents


class LiveAirflow:
    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.db = home / "airflow.db"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        for _ in range(4):
            r = subprocess.run([str(VENV_BIN / "airflow"), *args], env=self.env, capture_output=True, text=True,
                               timeout=300)
            # SQLite is one writer at a time: a CLI write that meets the running scheduler's write
            # transaction on a loaded machine fails with "database is locked" (rolled back); try again
            if r.returncode == 0 or "database is locked" not in r.stderr:
                break
            time.sleep(3)
        if check and r.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        return r

    def start(self) -> None:
        out = open(self.home / "standalone.log", "ab")  # handed to the child
        self.proc = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        out.close()

    def boot(self, dag_id: str, timeout: float = 240) -> None:
        """Migrate the metadata DB, start ``airflow standalone`` and wait until ``dag_id`` is parsed and the
        API server answers on its task execution API."""
        self.cli("db", "migrate")
        self.start()
        self.wait("the DAG to be parsed", lambda: self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", dag_id),
                  timeout=timeout)
        self.wait("the API server", self.api_ready, timeout=timeout)

    def api_ready(self) -> bool:
        url = self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status == 200
        except OSError:
            return False

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> dict:
        """Trigger a run through the public REST API, as the UI's Trigger button does (no CLI process to
        start): a token from ``GET /auth/token`` (every user an admin, see ``standalone_env``), then
        ``POST /api/v2/dags/{dag_id}/dagRuns``. The created run, as the API answers it."""
        base = f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}"
        with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as r:
            token = json.load(r)["access_token"]
        req = urllib.request.Request(
            f"{base}/api/v2/dags/{dag_id}/dagRuns", method="POST",
            data=json.dumps({"dag_run_id": run_id, "logical_date": None, "conf": conf}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    def run_end(self, dag_id: str, run_id: str) -> tuple[str, datetime] | None:
        """A finished run's state and end time (UTC, as the scheduler recorded it); None while it runs."""
        rows = self.query("SELECT state, end_date FROM dag_run WHERE dag_id = ? AND run_id = ? "
                          "AND state IN ('success', 'failed')", dag_id, run_id)
        if not rows or rows[0][1] is None:
            return None
        return rows[0][0], datetime.fromisoformat(rows[0][1]).replace(tzinfo=UTC)

    def stop(self) -> None:
        """SIGINT to standalone (it stops its components), then TERM to its own process group."""
        if self.proc is None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def components(self) -> dict[str, int]:
        """PID of each running component by its command (``scheduler``, ``api-server``, ...):
        ``airflow standalone`` starts each as ``airflow <command>``, a child of its own."""
        assert self.proc is not None
        found: dict[str, int] = {}
        for pid in [p for p, parent in parent_pids().items() if parent == self.proc.pid]:
            try:
                argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            except OSError:
                continue
            if argv and argv[0].rsplit("/", 1)[-1].startswith("python"):
                argv = argv[1:]  # the airflow script, run by its interpreter
            if len(argv) >= 2 and argv[0].rsplit("/", 1)[-1] == "airflow":
                found[argv[1]] = pid
        return found

    def query(self, sql: str, *args) -> list[tuple]:
        try:
            with sqlite3.connect(self.db, timeout=30) as c:
                return c.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []

    def wait(self, what: str, check, timeout: float):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"airflow standalone exited ({self.proc.returncode}); see "
                                     f"{self.home / 'standalone.log'}")
            result = check()
            if result:
                return result
            time.sleep(2)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.home}")

    def backfill_runs(self, dag_id: str, backfill_id: int) -> list[tuple]:
        return self.query("SELECT r.run_id, r.state, r.data_interval_start FROM dag_run r "
                          "JOIN backfill_dag_run b ON b.dag_run_id = r.id WHERE r.dag_id = ? AND b.backfill_id = ?",
                          dag_id, backfill_id)

    def run_backfill(self, dag_id: str, first: str, last: str, *extra: str, expect: int | None = None
                     ) -> list[tuple]:
        """Create a backfill and wait for it; its runs. ``expect``: how many runs the range has."""
        for _ in range(3):
            before = self.query("SELECT coalesce(max(id), 0) FROM backfill WHERE dag_id = ?", dag_id)[0][0]
            r = self.cli("backfill", "create", "--dag-id", dag_id, "--from-date", first, "--to-date", last,
                         "--max-active-runs", "3", *extra, check=False)
            bid = self.query("SELECT max(id) FROM backfill WHERE dag_id = ?", dag_id)[0][0]
            # cli() retries a "database is locked" failure. A locked attempt can leave its backfill created
            # but without all its runs (none, or with --reprocess-behavior only the first: the retry is then
            # refused as AlreadyRunningBackfill, and the scheduler completes the partial backfill): wait for
            # it, then create the backfill again.
            if r.returncode != 0 and not ("AlreadyRunningBackfill" in r.stderr and (bid or 0) > before):
                raise AssertionError(f"airflow backfill create failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
            self.wait(f"backfill {bid} of {dag_id} to complete", lambda bid=bid: self.query(
                "SELECT 1 FROM backfill WHERE id = ? AND completed_at IS NOT NULL", bid), timeout=600)
            runs = self.backfill_runs(dag_id, bid)
            if r.returncode == 0 or (runs and (expect is None or len(runs) >= expect)):
                return runs
            sys.stderr.write(f"backfill {bid} of {dag_id}: created with {len(runs)} run(s) by a failed attempt "
                             f"({r.stderr.strip()[-300:]}); creating it again\n")
        return runs
