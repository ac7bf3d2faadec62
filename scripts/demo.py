"""The main job: run every import DAG once, end to end, on generated sample data, with the embedded
defaults (SQLite metadata DB, LocalExecutor, local landing folder, local OpenSearch), then print a
summary. Started by ``make demo`` (after scripts/bootstrap.sh).

Steps: start the real local services → generate sample inputs → ``airflow db migrate`` → start
``airflow standalone`` (scheduler, dag-processor, triggerer, api-server, LocalExecutor) → unpause
and trigger each DAG → wait for the runs → summary from the store and the ledger → stop everything
by PID. ``--keep`` leaves the services and Airflow running for a look at the UI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow_env import ROOT, airflow_env
from devservices import Harness, _http_ok, _kill_groups, free_port

log = logging.getLogger("demo")
RUN = ROOT / ".run"
VENV_BIN = Path(sys.executable).parent


# ---- sample inputs, one preparer per DAG family -------------------------------------------------------
def prepare_csv(landing: Path, harness: Harness, scale: int) -> dict[str, dict]:
    from cdp_ingest import sample

    base = landing / "demo"
    shutil.rmtree(base, ignore_errors=True)
    for sub in ("profiles", "sessions", "events"):
        (base / sub).mkdir(parents=True)
    exp = {
        "profile": sample.write_profiles(base / "profiles" / "crm-export.csv", 500 * scale),
        "session": sample.write_sessions(base / "sessions" / "web-sessions.csv", 1000 * scale, profiles=500 * scale),
        "event": sample.write_events(base / "events" / "tracker.csv", 20000 * scale, profiles=500 * scale,
                                     sessions=1000 * scale),
    }
    return {"csv_import_demo": {"expected": {k: vars(v) for k, v in exp.items()}}}


def prepare_partitions(landing: Path, harness: Harness, scale: int) -> dict[str, dict]:
    """One complete day (Parquet files + _SUCCESS) in moto S3 and in the GCS emulator."""
    import importlib.util

    import boto3
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    spec = importlib.util.spec_from_file_location("partition_bench", ROOT / "benchmarks" / "partition_import.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    local = landing / "partitions-demo"
    local.mkdir(parents=True, exist_ok=True)
    counts = bench.generate(local, 20000 * scale, 2)
    files = sorted(local.glob("*.parquet"))
    s3 = boto3.client("s3", endpoint_url=harness.services["s3"].info["endpoint_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket="cdp-demo-events")
    os.environ["STORAGE_EMULATOR_HOST"] = harness.services["gcs"].info["endpoint_url"]
    gcs = storage.Client(project="cdp-test", credentials=AnonymousCredentials()).create_bucket("cdp-demo-events")
    # Unpausing makes the scheduler run the latest daily interval, which imports yesterday or (before
    # the schedule time) the day before: both days are complete, only the run's own day is read.
    today = datetime.now(UTC).date()
    for day in (today - timedelta(days=1), today - timedelta(days=2)):
        for f in files:
            s3.upload_file(str(f), "cdp-demo-events", f"hackle/events/dt={day}/{f.name}")
            gcs.blob(f"hackle/web-events/dt={day}/{f.name}").upload_from_filename(str(f))
        s3.put_object(Bucket="cdp-demo-events", Key=f"hackle/events/dt={day}/_SUCCESS", Body=b"")
        gcs.blob(f"hackle/web-events/dt={day}/_SUCCESS").upload_from_string(b"")
    return {"partition_import_hackle_s3": {"expected": counts}, "partition_import_hackle_gcs": {"expected": counts}}


def prepare_sftp_ui(landing: Path, harness: Harness, scale: int) -> dict[str, dict]:
    """``make ui`` only: an SFTP account ``demo_client`` (private sshd, key auth) whose client e-mails go to
    the SMTP sink, a sample CSV + manifest to upload with the ``sftp`` client, and how to do it."""
    sftp, smtp = harness.services["sftp"].info, harness.services["smtp"].info
    account = "demo_client"
    (Path(sftp["landing"]) / account).mkdir(parents=True, exist_ok=True)
    outbox = landing / "sftp-outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / "orders.csv").write_text("identity,evtName,total\nc1,Order Placed,10\nc2,Order Placed,12\n"
                                       ",Order Placed,11\n")  # the last row has no identity: rejected
    (outbox / "orders-001.manifest").write_text(json.dumps({
        "fileName": "orders.csv", "type": "event", "clientEmail": "client@demo.example",
        "columns": {"total": {"ctName": "total", "dataType": "FLOAT"}}}, indent=2))
    accounts = landing.parent / "sftp_accounts.yaml"
    accounts.write_text(json.dumps({"accounts": {account: {
        "folder": account, "contact_email": "ops@demo.example", "schedule": "*/2 * * * *", "settle_seconds": 5,
        "poke_interval": 5, "sensor_timeout": 100, "data_file_grace_seconds": 120}}}))
    os.environ["CDP_SFTP_ACCOUNTS"] = str(accounts)  # read by dags/sftp_import.py in every Airflow process
    port = harness.services["sftp"].port
    note = (f"SFTP account {account} (DAG sftp_import_{account}: unpause it, it looks every 2 min). Upload:\n"
            f"  cd {outbox}\n  sftp -i {sftp['private_key']} -P {port} -o UserKnownHostsFile={sftp['known_hosts']} "
            f"{sftp['login']}@127.0.0.1\n  sftp> cd {account}\n  sftp> put orders.csv\n"
            f"  sftp> put orders-001.manifest\n  sftp> bye\n"
            f"(each new upload needs a new manifest name). Client e-mails: Maildir {smtp['maildir']}/new; "
            f"webhook posts: {harness.services['webhook'].info['inbox']}\n")
    return {f"sftp_import_{account}": {"ui_note": note}}


DATASET_SOURCES: dict[str, object] = {}  # set by prepare_datasets: the HTTP server, its URL, the table


def prepare_datasets(landing: Path, harness: Harness, scale: int) -> dict[str, dict]:
    """Sources for two datasets (SPEC §4) the demo creates through the REST API once Airflow is up: a CSV
    served by a local HTTP server (Last-Modified) and a PostgreSQL table. No DAG runs to start here."""
    import functools
    import http.server
    import threading

    import psycopg2

    folder = landing / "datasets-http"
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"sku-{i:04d},Product {i},{i % 50 + 0.99:.2f}\n" for i in range(100 * scale))
    (folder / "price-list.csv").write_text("sku,name,price\n" + rows)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pg = harness.services["postgres"]
    with psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres") as c, c.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS demo_customers")
        cur.execute("CREATE TABLE demo_customers (id int primary key, email text, country text, "
                    "updated_at timestamptz)")
        cur.executemany("INSERT INTO demo_customers VALUES (%s, %s, %s, now())",
                        [(i, f"customer{i}@example.com", ("DE", "PL", "US")[i % 3]) for i in range(300 * scale)])
    DATASET_SOURCES.update(server=srv, url=f"http://127.0.0.1:{srv.server_address[1]}/price-list.csv")
    return {}


def create_datasets(port: int, home: Path) -> tuple[object, dict[str, str]]:
    """Create the two datasets through the REST API (Airflow auth); returns the client and their first jobs."""
    from cdp_ingest.datasets.client import DatasetsClient

    url = f"http://127.0.0.1:{port}"  # up: main() waited for it (wait_for_api)
    password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    api = DatasetsClient(url, username="admin", password=password)
    jobs = {
        "demo_price_list": api.create("demo_price_list", source=str(DATASET_SOURCES["url"]), id_column="sku",
                                      sync_interval=3600, wait=False)["job_id"],
        "demo_customers": api.create("demo_customers", source={"conn_id": "cdp_postgres",
                                                               "table": "public.demo_customers"},
                                     id_column="id", watermark_column="updated_at", sync_interval=900,
                                     wait=False)["job_id"],
    }
    for name, job_id in jobs.items():
        log.info("dataset %s created through the REST API; first job %s", name, job_id)
    return api, jobs


def dataset_summary(api, jobs: dict[str, str], timeout: float) -> tuple[str, bool]:
    from cdp_ingest.datasets.client import JobError

    ok = True
    lines = ["", f"{'dataset (REST API)':20} {'job':34} {'state':9} {'rows_in':>8} {'loaded':>8} {'rejected':>8}"]
    for name, job_id in jobs.items():
        try:
            api.wait(job_id, timeout=timeout, poll=3)
        except JobError:
            ok = False
        for job in api.jobs(dataset=name):
            r = job.get("result") or {}
            lines.append(f"{name:20} {job['job_id']:34} {job['state']:9} {r.get('rows_in', 0):8d} "
                         f"{r.get('loaded', 0):8d} {r.get('rejected', 0):8d}"
                         + (f"  [{job['error_code']}] {job['error_message']}" if job.get("error_code") else ""))
        ds = api.get(name)
        lines.append(f"{'':20} rows {ds['rows']}, {ds['size_bytes']} bytes in {ds['index']}, "
                     f"next sync {ds['next_sync']}")
        ok &= ds["state"] == "complete"
    return "\n".join(lines) + "\n", ok


REPLAY: dict[str, object] = {}  # set by prepare_replay: the local Segment-compatible receiver


def prepare_replay(landing: Path, harness: Harness, scale: int) -> dict[str, dict]:
    """A Segment archive (gzip JSON lines, two days) that ``replay_segment_history`` replays to a local
    receiver enforcing Segment's /v1/batch contract (scripts/replay_receiver.py, stopped by PID)."""
    from replay_receiver import DEFAULT_WRITE_KEY, start_receiver

    from cdp_ingest.sample import segment_messages, write_segment_archive

    receiver = REPLAY["receiver"] = start_receiver()
    for i, day in enumerate(("2021-03-01", "2021-03-02")):
        msgs = segment_messages(2000 * scale, start=datetime(2021, 3, 1 + i, tzinfo=UTC), prefix=day)
        write_segment_archive(landing / "replay" / "segment" / day / f"{day}.jsonl.gz", msgs,
                              raw_lines=['{"type": "track", "event": "No Identity"}'])
    os.environ["AIRFLOW_CONN_CDP_SEGMENT"] = json.dumps({"conn_type": "http", "host": receiver.url,
                                                         "login": DEFAULT_WRITE_KEY})
    return {"replay_segment_history": {"trigger": True}}


def replay_summary() -> str:
    receiver = REPLAY.get("receiver")
    if receiver is None:
        return ""
    st = receiver.stats()
    return (f"\nreplay receiver (Segment /v1/batch at {receiver.url}): {st['unique']} messages received, "
            f"{st['duplicates']} repeated deliveries dropped by messageId, {st['requests']} requests\n")


# Each DAG family registers its preparer here: (services it needs, preparer).
PREPARERS: list[tuple[tuple[str, ...], Callable[[Path, Harness, int], dict[str, dict]]]] = [
    (("opensearch", "webhook"), prepare_csv),
    (("opensearch", "webhook", "s3", "gcs"), prepare_partitions),
    (("opensearch", "postgres"), prepare_datasets),
    (("opensearch", "webhook"), prepare_replay),
]


# ---- Airflow ------------------------------------------------------------------------------------------
def airflow(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def start_standalone(env: dict[str, str], log_file: Path) -> subprocess.Popen:
    out = open(log_file, "ab")
    # standalone stops cleanly on SIGINT only; a background shell may have set SIGINT to ignored.
    proc = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out.close()
    return proc


def stop_standalone(proc: subprocess.Popen) -> None:
    """SIGINT to standalone itself (it shuts its components down), then TERM/KILL its process group
    for whatever did not exit within 15 s."""
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    _kill_groups([proc.pid], grace=5)


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``ready()``, while ``airflow standalone`` runs; ``what`` names the wait in its error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with code {proc.returncode}; see its log")
        if ready():
            return
        time.sleep(1)
    raise RuntimeError(f"waited {timeout:.0f} s for {what}; see Airflow's log")


def wait_for_dags(db: Path, dag_ids: list[str], proc: subprocess.Popen) -> None:
    def parsed() -> bool:
        try:
            with sqlite3.connect(db) as c:
                return set(dag_ids) <= {r[0] for r in c.execute("SELECT dag_id FROM serialized_dag")}
        except sqlite3.Error:
            return False

    wait_until(f"the DAGs to be parsed ({', '.join(dag_ids)})", parsed, proc)


def wait_for_api(port: int, proc: subprocess.Popen) -> None:
    """Until the API server answers on the task execution API: a task started before it does retries its
    first calls, and Airflow logs each retry as a warning ("Starting call to ... Client.request, this is the
    2nd time calling it"), which in the demo's log read like trouble."""
    wait_until("the API server to answer", lambda: _http_ok(f"http://127.0.0.1:{port}/execution/health"), proc)


def first_run(db: Path, dag_id: str, timeout: float) -> str | None:
    """The run the scheduler creates when a scheduled DAG is unpaused (its latest interval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id LIMIT 1", (dag_id,)).fetchone()
        if row:
            return row[0]
        time.sleep(1)
    return None


def wait_for_runs(db: Path, runs: dict[str, str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            for dag_id, run_id in runs.items():
                row = c.execute("SELECT state FROM dag_run WHERE dag_id=? AND run_id=?", (dag_id, run_id)).fetchone()
                states[dag_id] = row[0] if row else "missing"
        if all(s in ("success", "failed") for s in states.values()):
            return states
        time.sleep(3)
    return states


# ---- summary --------------------------------------------------------------------------------------------
def summary(url: str, states: dict[str, str], seconds: float) -> tuple[str, bool]:
    from cdp_ingest.ledger import Ledger
    from cdp_ingest.store import Store, make_client

    store = Store(make_client(url), prefix="cdp-")
    lines = ["", "cdp-ingest demo summary", "=" * 23, ""]
    lines.append(f"{'DAG':32} {'state':8}")
    for dag_id, state in states.items():
        lines.append(f"{dag_id:32} {state:8}")
    lines += ["", f"{'imported file':34} {'kind':8} {'status':10} {'rows_in':>8} {'loaded':>8} {'rejected':>8} "
                  f"{'dupes':>6}"]
    entries = Ledger(store).list(limit=200)
    ok = all(s == "success" for s in states.values()) and bool(entries)
    for e in sorted(entries, key=lambda e: e.started or ""):
        balanced = e.rows_in == e.loaded + e.updated + e.rejected + e.duplicates  # updated: overwrite mode
        ok &= e.committed and balanced
        lines.append(f"{Path(e.path).name[:34]:34} {e.kind:8} {e.status:10} {e.rows_in:8d} {e.loaded:8d} "
                     f"{e.rejected:8d} {e.duplicates:6d}{'' if balanced else '  <-- accounting mismatch'}")
    lines += ["", f"{'index':32} {'documents':>10}"]
    cat = store._request("GET", "/_cat/indices/cdp-*", params={"format": "json", "h": "index,docs.count"})
    for row in sorted(cat, key=lambda r: r["index"]):
        lines.append(f"{row['index']:32} {int(row['docs.count']):10d}")
    lines += ["", f"finished in {seconds:.0f} s: {'OK' if ok else 'FAILED'}", ""]
    return "\n".join(lines), ok


def _terminate(signum, frame):  # so that `finally` stops everything we started
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started from a background shell
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("opensearch").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1, help="multiply the sample sizes")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the DAG runs")
    ap.add_argument("--run-dir", type=Path, default=RUN / "demo", help="where Airflow, services and data live")
    ap.add_argument("--keep", action="store_true", help="leave services and Airflow running afterwards")
    ap.add_argument("--ui", action="store_true", help="start everything with sample data, trigger nothing, "
                                                      "and keep the UI up until Ctrl-C")
    args = ap.parse_args()
    t0 = time.monotonic()
    run_dir = args.run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    home = run_dir / "airflow"
    landing = run_dir / "landing"
    home.mkdir(parents=True)
    landing.mkdir(parents=True)
    run_dir.chmod(0o755)  # OpenSearch runs as the service user and must reach its folder below
    harness = Harness(run_dir / "services")
    proc = None
    try:
        preparers = PREPARERS + ([(("sftp", "smtp", "webhook"), prepare_sftp_ui)] if args.ui else [])
        needed = sorted({s for services, _ in preparers for s in services})
        harness.start(needed)
        runs_cfg: dict[str, dict] = {}
        for _, prepare in preparers:
            runs_cfg.update(prepare(landing, harness, args.scale))
        port = free_port()
        env = {**os.environ, **airflow_env(home, landing), **harness.airflow_connections(),
               "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin", "AIRFLOW__API__PORT": str(port),
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])  # standalone spawns `airflow`
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")]))
        airflow("db", "migrate", env=env)
        proc = start_standalone(env, home / "standalone.log")
        wait_for_dags(home / "airflow.db", list(runs_cfg), proc)
        wait_for_api(port, proc)
        if args.ui:
            sys.stdout.write(f"\nAirflow UI: http://127.0.0.1:{port}  user admin, password in "
                             f"{home}/simple_auth_manager_passwords.json.generated\n"
                             f"DAGs (paused; unpause or trigger them in the UI): {', '.join(runs_cfg)}\n"
                             f"Landing folder: {landing}\n"
                             f"Import activity (every file of every source): http://127.0.0.1:{port}/cdp-activity/\n"
                             + "".join(c["ui_note"] for c in runs_cfg.values() if c.get("ui_note"))
                             + "Ctrl-C stops Airflow and the services.\n")
            try:
                proc.wait()
            except KeyboardInterrupt:
                pass
            return 0
        runs: dict[str, str] = {}
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for dag_id, cfg in runs_cfg.items():
            if cfg.get("trigger"):  # manual-only DAGs, or runs that need a conf/logical date
                run_id = f"demo__{stamp}"
                trig = ["dags", "trigger", dag_id, "-r", run_id, "-c", json.dumps(cfg.get("conf", {}))]
                if cfg.get("logical_date"):
                    trig += ["-l", cfg["logical_date"]]
                airflow(*trig, env=env)
                airflow("dags", "unpause", dag_id, env=env)
            else:  # a scheduled DAG: unpausing makes the scheduler create its latest run
                airflow("dags", "unpause", dag_id, env=env)
                run_id = first_run(home / "airflow.db", dag_id, 60)
                if run_id is None:
                    raise RuntimeError(f"the scheduler created no run for {dag_id} after unpausing it")
            runs[dag_id] = run_id
            log.info("running %s (%s)", dag_id, run_id)
        datasets = create_datasets(port, home)
        states = wait_for_runs(home / "airflow.db", runs, args.timeout)
        ds_text, ds_ok = dataset_summary(*datasets, args.timeout)
        text, ok = summary(harness.services["opensearch"].info["url"], states, time.monotonic() - t0)
        sys.stdout.write(ds_text + replay_summary() + text)
        ok &= ds_ok
        if not ok:
            sys.stdout.write(f"Airflow logs: {home / 'logs'}; standalone log: {home / 'standalone.log'}\n")
        if args.keep:
            sys.stdout.write(f"UI: http://127.0.0.1:{port} (admin / see {home}/simple_auth_manager_passwords.json"
                             ".generated); stop with: kill -INT -{proc.pid} && python scripts/devservices.py "
                             f"stop --run-dir {harness.run_dir}\n")
        return 0 if ok else 1
    finally:
        if not args.keep:
            if proc is not None:
                stop_standalone(proc)
            harness.stop()
        if REPLAY.get("receiver"):
            REPLAY["receiver"].stop()
        if DATASET_SOURCES.get("server"):
            DATASET_SOURCES["server"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
