"""A worker killed in the middle of a load, then retried: nothing lost, nothing duplicated (SPEC §7).
And a 1 GB file imported with flat memory (``-m slow``).

The killed "worker" is a separate process running the DAG with ``dag.test()`` (tasks run in that
process), so it can be SIGKILLed like a lost worker. The 1 GB import runs each task of the same DAG in
its own process, the way Airflow's executors run task instances, and measures each one's peak RSS
(``dag.test()`` would add its in-process API server and scheduler loop to the measurement).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sftp_kit import ROOT, make_account, manifest_bytes

from cdp_ingest.ledger import Ledger

pytestmark = [pytest.mark.services, pytest.mark.airflow]

WORKER = r"""
import sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder=sys.argv[1]).dags[sys.argv[2]]
dag.deadline = None  # see sftp_kit.Account.run
dr = dag.test(logical_date=datetime.fromisoformat(sys.argv[3]))
print("STATE", dr.state, flush=True)
"""


TASK = r"""
import json, sys, time
from datetime import datetime
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag

dags, dag_id, when, task_id, store = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3]), sys.argv[4], \
    Path(sys.argv[5])
dag = DagBag(dag_folder=dags).dags[dag_id]
xcom = json.loads(store.read_text()) if store.exists() else {}
context = {"dag": dag, "run_id": "worker__" + sys.argv[3], "logical_date": when, "dag_run": None}

class TI:
    def xcom_pull(self, task_ids):
        return xcom.get(task_ids)

started = time.monotonic()
task = dag.get_task(task_id)
if task_id == "wait_for_manifest":
    poked = task.poke(context)
    assert poked.is_done, "no manifest ready"
    out = poked.xcom_value
elif task_id == "parse_manifest":
    task.sensed = xcom["wait_for_manifest"]
    out = task.execute(context)
elif task_id == "transform":
    out = task.python_callable(xcom["parse_manifest"], logical_date=when)
elif task_id == "validate":
    out = task.python_callable(xcom["transform"])
elif task_id == "load":
    task.staged = xcom["validate"]
    out = task.execute(context)
else:
    out = task.python_callable(ti=TI(), logical_date=when)
xcom[task_id] = out
store.write_text(json.dumps(xcom, default=str))
with open("/proc/self/status") as fh:  # VmHWM: this process image's peak RSS (ru_maxrss would include
    hwm = int(next(line for line in fh if line.startswith("VmHWM:")).split()[1])  # the forked parent's)
print("TASK", task_id, round(time.monotonic() - started, 1), hwm // 1024, flush=True)
"""
TASK_IDS = ("wait_for_manifest", "parse_manifest", "transform", "validate", "load", "finalize")


def run_tasks(acc, logical_date: datetime, work: Path) -> list[tuple[str, float, int]]:
    """Each task of one DAG run in its own process, in order, as an Airflow worker runs task instances
    (one process per task instance); XComs handed over through a JSON file. Returns
    ``(task, seconds, peak RSS MB)`` per task."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "scripts")])}
    store, report = work / "xcom.json", []
    for task_id in TASK_IDS:
        log = work / f"{task_id}.log"
        with open(log, "wb") as err:
            r = subprocess.run([sys.executable, "-c", TASK, str(ROOT / "dags"), acc.dag_id, logical_date.isoformat(),
                                task_id, str(store)], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                               timeout=3000)
        assert r.returncode == 0, f"{task_id} failed: {log.read_text()[-3000:]}"
        _, name, seconds, mb = next(line for line in r.stdout.splitlines() if line.startswith("TASK ")).split()
        report.append((name, float(seconds), int(mb)))
    return report


def start_worker(acc, logical_date: datetime, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "scripts")])}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT / "dags"), acc.dag_id, logical_date.isoformat()],
                            env=env, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)


def events_csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("identity,evtName,When,sku\n")
        for start in range(0, rows, 10_000):
            fh.write("".join(f"c{i % 997},Purchase,{1767225600 + i},S{i}\n"
                             for i in range(start, min(rows, start + 10_000))))


def test_worker_killed_mid_load_then_retried(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook,
                                             airflow_db):
    rows = 40_000
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook, connection_extra={"bulk_chunk_docs": 200, "bulk_concurrency": 1})
    (acc.work / "outbox").mkdir(parents=True, exist_ok=True)
    events_csv(acc.work / "outbox" / "many.csv", rows)
    acc.write("many.manifest", manifest_bytes("many.csv", "event", acc.client_email, {"When": {"ctName": "ts"}}))
    acc.upload("many.csv", "many.manifest")
    index = f"{acc.prefix}event-*"

    worker = start_worker(acc, datetime(2026, 2, 10, 9, tzinfo=UTC), tmp_path / "worker.log")
    deadline = time.monotonic() + 300
    # wait until some bulk requests have gone through (counted refreshed: a past month the load creates
    # does not refresh on its own while the load runs)
    while acc.store.count(index, refresh=True) == 0:
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the load never started"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    partial = acc.store.count(index, refresh=True)
    assert 0 < partial < rows, f"kill landed outside the load ({partial} of {rows})"
    entry = acc.entry("many.manifest")
    assert entry["status"] == "processing"
    ledger_entry = Ledger(acc.store).get(entry["unit_id"])
    assert ledger_entry.status == "loading"  # nothing committed, nothing archived
    assert "many.csv" in acc.remote_files() and "many.manifest" in acc.remote_files()

    # the retry: the same manifest is picked up again and the same import resumes
    dr = acc.run(datetime(2026, 2, 10, 9, 5, tzinfo=UTC))
    assert dr.state == "success"
    acc.store.refresh([index])
    assert acc.store.count(index) == rows  # nothing lost...
    twice = acc.store._request("POST", f"/{index}/_search", body={"size": 0, "aggs": {
        "ids": {"terms": {"field": "id", "min_doc_count": 2, "size": 10}}}})
    assert twice["aggregations"]["ids"]["buckets"] == []  # ...nothing duplicated
    done = acc.entry("many.manifest")
    assert (done["status"], done["rows_in"], done["loaded"], done["rejected"], done["duplicates"]) == (
        "done", rows, rows, 0, 0)  # the first attempt's writes are recognised as this import's own
    committed = Ledger(acc.store).get(entry["unit_id"])
    assert (committed.status, committed.import_id, committed.attempts) == ("committed", ledger_entry.import_id, 2)
    assert acc.remote_files() == ["processed/2026-02-10/many/many.csv", "processed/2026-02-10/many/many.manifest"]


UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML like Gecko) Chrome/124.0 Safari/537.36"
NOTE = ("Viewed from the autumn campaign landing page after a search for waterproof hiking boots; "
        "customer compared three models and read the size guide before adding one pair to the wish list. ")
CATEGORIES = ["shoes", "outdoor", "kids", "sale", "new-in"]


def shop_events(path: Path, target_bytes: int) -> int:
    """~390-byte rows of 9 columns, like a web shop's event export; returns the row count (fast: ~1 s per
    100 MB)."""
    rows = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("identity,evtName,When,amount,sku,category,url,user_agent,note\n")
        while fh.tell() < target_bytes:
            fh.write("".join(
                f"c{i % 50_000},Product Viewed,{1767225600 + i % 5_000_000},{i % 500}.5,SKU-{i % 9973:05d},"
                f"{CATEGORIES[i % 5]},https://shop.example.com/p/{i % 9973}/boots-{i % 97},{UA},{NOTE}\n"
                for i in range(rows, rows + 50_000)))
            rows += 50_000
    return rows


def import_file(acc, name: str, target_bytes: int, minute: int) -> tuple[int, int, list[tuple[str, float, int]]]:
    path = acc.work / "outbox" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = shop_events(path, target_bytes)
    size = path.stat().st_size
    acc.write(f"{name}.manifest", manifest_bytes(f"{name}.csv", "event", acc.client_email, {
        "When": {"ctName": "ts"}, "amount": {"ctName": "amount", "dataType": "FLOAT"}}))
    acc.upload(f"{name}.csv", f"{name}.manifest", gap=1.1)
    path.unlink()
    tasks = run_tasks(acc, datetime(2026, 2, 10, 9, minute, tzinfo=UTC), acc.work / name)
    e = acc.entry(f"{name}.manifest")
    assert (e["status"], e["rows_in"], e["loaded"], e["rejected"], e["duplicates"]) == ("done", rows, rows, 0, 0)
    return size, rows, tasks


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_one_gigabyte_file_with_flat_memory(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook,
                                            airflow_db):
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook, sensor_timeout=60)
    (tmp_path / "small").mkdir()
    (tmp_path / "huge").mkdir()
    _, small_rows, small = import_file(acc, "small", 40 << 20, 0)  # reference: buffers already full
    size, rows, huge = import_file(acc, "huge", int(os.environ.get("CDP_BIG_FILE_BYTES", 1 << 30)), 1)
    print(f"\n{small_rows} rows, per task (s, peak RSS MB): {small}"
          f"\n{size} bytes, {rows} rows, per task (s, peak RSS MB): {huge}; total {sum(t for _, t, _ in huge):.0f} s")
    acc.store.refresh([f"{acc.prefix}event-*"])
    assert acc.store.count(f"{acc.prefix}event-*") == small_rows + rows

    # Flat: ~20x the rows, same memory, and under 500 MB in every task process (SPEC §7).
    for (task, _, small_mb), (_, _, huge_mb) in zip(small, huge, strict=True):
        assert huge_mb <= small_mb + 64, f"{task}: {small_mb} MB for {small_rows} rows, {huge_mb} MB for {rows}"
        assert huge_mb < 500, f"{task}: {huge_mb} MB for {rows} rows"
