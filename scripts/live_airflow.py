"""A real embedded Airflow (``airflow standalone``: scheduler, dag-processor, triggerer, api-server,
LocalExecutor) for the live tests and the partition benchmark; stopped by PID."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


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

    def run_backfill(self, dag_id: str, first: str, last: str, *extra: str) -> list[tuple]:
        for _ in range(3):
            before = self.query("SELECT coalesce(max(id), 0) FROM backfill WHERE dag_id = ?", dag_id)[0][0]
            r = self.cli("backfill", "create", "--dag-id", dag_id, "--from-date", first, "--to-date", last,
                         "--max-active-runs", "3", *extra, check=False)
            bid = self.query("SELECT max(id) FROM backfill WHERE dag_id = ?", dag_id)[0][0]
            # cli() retries a "database is locked" failure. A locked attempt can leave its backfill created
            # but without runs (the retry is then refused as AlreadyRunningBackfill, and the scheduler
            # completes the empty backfill): wait for it, then create the backfill again.
            if r.returncode != 0 and not ("AlreadyRunningBackfill" in r.stderr and (bid or 0) > before):
                raise AssertionError(f"airflow backfill create failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
            self.wait(f"backfill {bid} of {dag_id} to complete", lambda bid=bid: self.query(
                "SELECT 1 FROM backfill WHERE id = ? AND completed_at IS NOT NULL", bid), timeout=600)
            runs = self.backfill_runs(dag_id, bid)
            if r.returncode == 0 or runs:
                return runs
        return runs
