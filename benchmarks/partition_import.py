"""Benchmark: one day of events (SPEC §3) from moto S3 into OpenSearch through the partition DAG.

Generates ``--rows`` events (default 5,000,000) in ``--files`` Parquet files under
``s3://<bucket>/events/dt=2025-06-01/`` with a ``_SUCCESS`` marker (1 % duplicate insert_ids, 0.1 % rows
with a bad insert_id), then measures side by side, against the real local services
(``scripts/devservices.py``: OpenSearch, moto_server), each variant on its own empty indices:

- ``ceiling``: the engine run's staged event bodies, pre-serialised into bulk bodies, only sent;
- ``engine``: the engine without Airflow (``transform_unit`` + ``load_unit`` per file, in order);
- ``dag-test``: the real DAG under ``dag.test()`` (sensor, listing, per-file transform + validate + load,
  accounting), every task in this process — peak RSS = this process, plus per-task RSS growth;
- ``local``: the real DAG under ``airflow standalone`` (LocalExecutor), triggered once — peak RSS = the
  largest task process.

Throughput = rows in / wall time. ``--rounds N`` runs the modes N times in turn: each round's DAG/engine
ratios are side-by-side pairs. Every mode also reports the CPU seconds the machine and the store node
used while it ran (the LocalExecutor: per Airflow process too). Prints tables and writes
``benchmarks/results/partition_import.json``.

    .venv/bin/python benchmarks/partition_import.py --rows 200000             # quick run
    .venv/bin/python benchmarks/partition_import.py --rows 1000000 --modes engine,dag-test,local --rounds 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "plugins")]

from live_airflow import parent_pids  # noqa: E402 (scripts/ is on the path from here on)

DAY = "2025-06-01"
BUCKET = "cdp-bench-partitions"
SOURCE = "bench"
PREFIX = "bench-part-"
RESULTS = ROOT / "benchmarks" / "results" / "partition_import.json"


# ---- data (runs in a child process) -------------------------------------------------------------------
def _flat(arr):
    """pa.array() returns a ChunkedArray for big NumPy string inputs; MapArray wants one Array."""
    return arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr


def generate(out_dir: Path, rows: int, files: int, seed: int = 42) -> dict:
    """Write ``files`` Parquet files of the §3 schema; return counts of what the import must find."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdp_ingest.partitions import SCHEMA

    rng = np.random.default_rng(seed)
    day0 = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1_000_000)
    events = np.array(["page_view", "screen_view", "add_to_cart", "purchase", "search", "login", "share",
                       "app_open"])
    per_file = [rows // files + (1 if i < rows % files else 0) for i in range(files)]
    dup_total = bad_total = 0
    sizes = []

    def str_map(keys: list[str], values: list, n: int) -> pa.Array:
        k = len(keys)
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        key_arr = _flat(pa.array(np.tile(np.array(keys, dtype=object), n), pa.string()))
        item_arr = _flat(pa.array(np.stack(values, axis=1).reshape(-1), pa.string()))
        return pa.MapArray.from_arrays(offsets, key_arr, item_arr, type=SCHEMA.field("identifiers").type)

    for f, n in enumerate(per_file):
        users = rng.integers(0, 200_000, n)
        ids = np.char.add("anon-", users.astype(str))
        ident = str_map(["ID", "device_id", "user_id", "session_id"],
                        [ids, np.char.add("dev-", (users % 150_000).astype(str)),
                         np.char.add("user-", users.astype(str)),
                         np.char.add("s-", (users * 7 + rng.integers(0, 5, n)).astype(str))], n)
        raw = rng.bytes(16 * n)
        insert = [f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
                  for h in (raw[i * 16:(i + 1) * 16].hex() for i in range(n))]
        dups = rng.choice(np.arange(1, n), size=n // 100, replace=False)  # 1 %: copy an earlier row's id
        for d in dups:
            insert[d] = insert[int(rng.integers(0, d))]
        bad = rng.choice(np.setdiff1d(np.arange(n), dups), size=n // 1000, replace=False)  # 0.1 % bad ids
        for b in bad:
            insert[b] = "not-a-uuid"
        good = [x for x in insert if x != "not-a-uuid"]
        bad_total += n - len(good)
        dup_total += len(good) - len(set(good))
        micros = rng.integers(0, 5_000_000_000, n)  # 0 .. 5000.000000
        metric = pa.Array.from_buffers(pa.decimal128(24, 6), n, [None, pa.py_buffer(
            np.stack([micros, np.zeros(n, dtype=np.int64)], axis=1).astype("<i8").tobytes())])
        table = pa.table({
            "ts": pa.array(day0 + np.sort(rng.integers(0, 86_400_000_000, n)), pa.timestamp("us", tz="UTC")),
            "event_key": pa.array(events[rng.integers(0, len(events), n)], pa.string()),
            "identifiers": ident,
            "insert_id": pa.array(insert, pa.string()),
            "metric_value": metric,
            "user_properties": str_map(["Plan", "Country"], [np.array(["free", "gold", "pro"])[users % 3],
                                                             np.array(["DE", "PL", "US", "JP"])[users % 4]], n),
            "event_properties": str_map(["page", "item_id", "price"], [
                np.char.add("/p/", rng.integers(0, 5000, n).astype(str)),
                np.char.add("sku-", rng.integers(0, 20_000, n).astype(str)),
                rng.integers(100, 99_999, n).astype(str)], n),
            "platform_properties": str_map(["osName", "osVersion", "appVersion"], [
                np.array(["Android", "iOS"])[users % 2], np.array(["14", "17.2", "13"])[users % 3],
                np.array(["5.1.0", "5.2.0"])[users % 2]], n),
        }, schema=SCHEMA)
        path = out_dir / f"part-{f:05d}.parquet"
        pq.write_table(table, path, row_group_size=100_000, compression="zstd")
        sizes.append(path.stat().st_size)
    # duplicate ids are copies within a file; random UUIDs do not collide across files
    return {"rows": rows, "files": files, "bad": bad_total, "duplicates": dup_total,
            "unique_good": rows - bad_total - dup_total, "parquet_bytes": sum(sizes)}


class _RssSampler:
    """Samples this process's RSS every 50 ms while the DAG runs, to tell which task made it grow."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mb() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1 << 20)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.time(), self.rss_mb()))

    def __enter__(self) -> _RssSampler:
        self.samples.append((time.time(), self.rss_mb()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self, start: float, end: float) -> int:
        """How far RSS rose above the level before ``start`` during [start, end]."""
        before = [r for t, r in self.samples if t <= start]
        during = [r for t, r in self.samples if start <= t <= end]
        base = before[-1] if before else (during[0] if during else 0)
        return max(0, max(during, default=base) - base)


def upload(data_dir: Path) -> None:
    """Put the generated day into the benchmark bucket (with its ``_SUCCESS`` marker)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="cdp_s3")
    s3.create_bucket(BUCKET)
    for p in sorted(data_dir.glob("*.parquet")):
        s3.load_file(str(p), key=f"events/dt={DAY}/{p.name}", bucket_name=BUCKET, replace=True)
    s3.load_bytes(b"", key=f"events/dt={DAY}/_SUCCESS", bucket_name=BUCKET, replace=True)


# ---- baselines on the same files (child processes) ----------------------------------------------------
def _vm_hwm_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def run_engine_direct(data_dir: Path, url: str, prefix: str, work: Path) -> dict:
    """The engine without Airflow, file after file in one process: the partition transform (as the DAG
    task does it) then ``load_unit`` on the staged file — what the DAG's tasks run, minus the DAG."""
    from cdp_ingest.partitions import PartitionMapper, read_partition_file
    from cdp_ingest.pipeline import load_unit, transform_unit
    from cdp_ingest.store import Store, make_client

    store = Store(make_client(url, timeout=120), prefix=prefix)
    store.ensure_templates()
    mapper = PartitionMapper(source_id=SOURCE, now=datetime.now(UTC))
    acc = {"rows_in": 0, "loaded": 0, "rejected": 0, "duplicates": 0}
    t0 = time.perf_counter()
    for i, path in enumerate(sorted(data_dir.glob("*.parquet"))):
        w = work / f"direct-{i}"
        t = transform_unit(read_partition_file(str(path)), mapper.map_row, prefix=prefix, import_id=f"direct-{i}",
                           staged_path=w / "staged.parquet", error_path=w / "transform-errors.csv",
                           max_cell_bytes=store.max_cell_bytes)
        ld = load_unit(w / "staged.parquet", store, import_id=f"direct-{i}", error_path=w / "load-errors.csv",
                       columns=t.columns)
        acc["rows_in"] += t.rows_in
        acc["rejected"] += t.rejected + ld.failed
        acc["loaded"] += ld.loaded
        acc["duplicates"] += ld.duplicates
    return {"seconds": time.perf_counter() - t0, "accounting": acc, "peak_rss_mb": _vm_hwm_mb()}


def run_ceiling(work: Path, url: str, prefix: str, chunk: int = 5000, concurrency: int = 2) -> dict:
    """The raw bulk ceiling for these very documents: the engine run's staged event bodies (first copy of
    each id), pre-serialised into bulk bodies, then only sent (``chunk`` x ``concurrency``, the engine's
    defaults). Timed: the sending."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from cdp_ingest.store import Store, make_client

    store = Store(make_client(url, timeout=120), prefix=prefix)
    store.ensure_templates()
    seen: set[str] = set()
    bodies: list[bytes] = []
    part: list[bytes] = []
    for staged in sorted(work.glob("direct-*/staged.parquet")):
        t = pq.read_table(staged, columns=["kind", "index", "id", "body"]).to_pydict()
        for kind, index, doc_id, body in zip(t["kind"], t["index"], t["id"], t["body"], strict=True):
            if kind != "event" or doc_id in seen:
                continue
            seen.add(doc_id)
            month = index.rsplit("event-", 1)[1]
            part.append(b'{"create":{"_index":"%sevent-%s","_id":"%s"}}\n%s\n' % (
                prefix.encode(), month.encode(), doc_id.encode(), body))
            if len(part) == chunk:
                bodies.append(b"".join(part))
                part = []
    if part:
        bodies.append(b"".join(part))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for resp in pool.map(store._send_bulk, bodies):
            if resp.get("errors"):
                raise RuntimeError("the ceiling's bulk request had item errors")
    return {"seconds": time.perf_counter() - t0, "documents": len(seen), "peak_rss_mb": _vm_hwm_mb()}


def _child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--url", args.url, "--prefix", args.prefix,
           "--data", args.data, "--work", args.work]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "include")})
    if r.returncode != 0:
        raise RuntimeError(f"{mode} run failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- the DAG under the LocalExecutor ---------------------------------------------------------------------
class _TaskPeaks:
    """Polls the process tree under ``root`` every 100 ms: the peak RSS (VmHWM) of every task process
    (Airflow 3 runs each task instance in its own process, titled ``airflow worker -- <ti id>``)."""

    def __init__(self, root: int) -> None:
        import threading

        self.root = root
        self.peaks: dict[int, tuple[int, str]] = {}  # pid -> (VmHWM MB, task instance id)
        self.cpu: dict[int, tuple[int, str]] = {}  # pid -> (CPU ticks last seen, role)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        parents = parent_pids()
        tree, frontier = set(), {self.root}
        while frontier:
            tree |= frontier
            frontier = {p for p, pp in parents.items() if pp in frontier} - tree
        for pid in tree:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                status = Path(f"/proc/{pid}/status").read_text()
                ticks = _cpu_ticks(pid)
            except OSError:
                continue
            # an exited task process (a zombie until reaped) has no command line: keep the role seen before
            self.cpu[pid] = (ticks, _role(title) if title else self.cpu.get(pid, (0, "?"))[1])
            if not title.startswith("airflow worker -- "):
                continue
            hwm = int(status.split("VmHWM:")[1].split()[0]) // 1024
            if hwm > self.peaks.get(pid, (0, ""))[0]:
                self.peaks[pid] = (hwm, title.split("-- ", 1)[1].strip())

    def __enter__(self) -> _TaskPeaks:
        self.cpu_before = {pid: ticks for pid, (ticks, _) in self.cpu.items()}
        self._thread.start()
        return self

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds each role used while watched (a process's last 100 ms before it exited are missed)."""
        out: dict[str, float] = {}
        for pid, (ticks, role) in self.cpu.items():
            out[role] = out.get(role, 0.0) + (ticks - self.cpu_before.get(pid, 0)) / TICKS
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its live descendants (the store node's JVM)."""
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(d) == root or os.getpgid(int(d)) == root:
                    total += _cpu_ticks(int(d))
            except OSError:
                pass
    return total / TICKS


def _machine_busy_s() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICKS, (v[3] + v[4]) / TICKS


class _CpuWindow:
    """CPU seconds the whole machine (busy / idle) and the store node used inside a ``with`` block."""

    def __init__(self, node_pid: int) -> None:
        self.node_pid = node_pid
        self.cpu_s: dict[str, float] = {}

    def __enter__(self) -> _CpuWindow:
        self.node0 = _tree_cpu_s(self.node_pid)
        self.busy0, self.idle0 = _machine_busy_s()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, idle = _machine_busy_s()
        self.cpu_s = {"machine_busy": round(busy - self.busy0, 1), "machine_idle": round(idle - self.idle0, 1),
                      "store_node": round(_tree_cpu_s(self.node_pid) - self.node0, 1)}


def _role(title: str) -> str:
    if title.startswith("airflow worker -- "):
        return "task processes"
    words = title.split()
    if words and words[0].rsplit("/", 1)[-1].startswith("python"):
        words = words[1:]
    if words and "/" in words[0]:
        words[0] = words[0].rsplit("/", 1)[1]
    return " ".join(words[:2]) or "?"


def run_local_executor(run_dir: Path, env: dict[str, str], dag_id: str, node_pid: int) -> dict:
    """Trigger one run for the day under ``airflow standalone`` (LocalExecutor, the embedded settings:
    up to 4 tasks at a time) and time it from the trigger to the run's end."""
    from devservices import free_port
    from live_airflow import LiveAirflow, standalone_env

    home = run_dir / "airflow-local"
    home.mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in env.items() if k not in MEMORY_ENV_KEYS}  # as deployed: no allocator settings
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    af = LiveAirflow(home, standalone_env(env, port))
    try:
        af.boot(dag_id, timeout=300)
        af.cli("dags", "unpause", dag_id)
        peaks = _TaskPeaks(af.proc.pid)
        peaks.sample()  # the CPU the running scheduler, DAG processor, API server and triggerer used before
        with _CpuWindow(node_pid) as cpu, peaks:
            # triggered through the REST API, as the UI's button does, and timed from that request to the
            # end the scheduler recorded (not to the next poll): the engine's time has no process start-up
            # in it either (an `airflow dags trigger` CLI took ~3 s of the run, the 2-s poll ~1 s more)
            t0 = time.time()
            af.trigger(dag_id, "bench", {"date": DAY})
            state, end = af.wait("the benchmark run to finish", lambda: af.run_end(dag_id, "bench"), timeout=7200)
            run_s = end.timestamp() - t0
        tasks = af.query("SELECT task_id, count(*), sum((julianday(end_date) - julianday(start_date)) * 86400) "
                         "FROM task_instance WHERE dag_id = ? AND run_id = 'bench' GROUP BY task_id", dag_id)
        ti_task = dict(af.query("SELECT id, task_id FROM task_instance WHERE dag_id = ? AND run_id = 'bench'",
                                dag_id))
    finally:
        af.stop()
    by_task: dict[str, int] = {}
    for hwm, ti_id in peaks.peaks.values():
        task = ti_task.get(ti_id) or ti_task.get(ti_id.replace("-", "")) or "other"
        by_task[task] = max(by_task.get(task, 0), hwm)
    return {"state": state, "run_s": round(run_s, 1), "task_s": {t: round(s or 0, 1) for t, _, s in tasks},
            "task_processes": len(peaks.peaks),
            "cpu_s": {**cpu.cpu_s, **peaks.cpu_by_role()},
            "peak_rss_mb": max(by_task.values(), default=0), "peak_rss_mb_by_task": by_task}


MEMORY_ENV_KEYS = ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX")


# ---- the run ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--run-dir", default=str(ROOT / ".run" / "bench-partitions"))
    ap.add_argument("--modes", default="engine,ceiling,dag-test,local",
                    help="comma list of: engine (no Airflow), ceiling (raw bulk of the same documents), "
                         "dag-test (dag.test(), one process), local (airflow standalone, LocalExecutor)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the modes this many times, in order (the ceiling once): each round's DAG/engine "
                         "ratio is a side-by-side pair; the table shows the last round, the pairs and medians")
    ap.add_argument("--parallel-loads", type=int, default=2, help="the source's parallel_loads (default 2)")
    ap.add_argument("--keep-services", action="store_true", help="leave OpenSearch and moto running")
    ap.add_argument("--generate-into", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--upload-from", help=argparse.SUPPRESS)  # child mode
    for a in ("--child", "--url", "--prefix", "--data", "--work"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.generate_into:
        sys.stdout.write(json.dumps(generate(Path(args.generate_into), args.rows, args.files)) + "\n")
        return 0
    if args.upload_from:
        upload(Path(args.upload_from))
        return 0
    if args.child:
        out = (run_engine_direct(Path(args.data), args.url, args.prefix, Path(args.work)) if args.child == "engine"
               else run_ceiling(Path(args.work), args.url, args.prefix))
        sys.stdout.write(json.dumps(out) + "\n")
        return 0

    from airflow_env import MEMORY_ENV, airflow_env

    if any(os.environ.get(k) != v for k, v in MEMORY_ENV.items()):  # read at process start: run as a task would
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                  {**os.environ, **MEMORY_ENV})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from devservices import Harness

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "ceiling" in modes and "engine" not in modes:
        ap.error("the ceiling sends the engine run's documents: --modes must include engine")
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for k, v in airflow_env(run_dir / "airflow", run_dir / "landing").items():
        if k != "PYTHONPATH":
            os.environ[k] = v
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    harness = Harness(run_dir / "services")
    results: dict[str, dict] = {}
    rounds: list[dict[str, float]] = []  # rows/s and the store node's CPU of each mode, per round
    failures: list[str] = []  # what any round's imports got wrong (the run fails)
    try:
        harness.start(["opensearch", "s3"])
        os.environ.update(harness.airflow_connections())
        os_url = harness.services["opensearch"].info["url"]
        node_pid = harness.services["opensearch"].pid
        base_conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])

        def use_prefix(prefix: str) -> None:
            os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"] = json.dumps(
                {**base_conn, "extra": {**base_conn.get("extra", {}), "index_prefix": prefix}})

        data_dir = Path(tempfile.mkdtemp(prefix="bench-parquet-", dir=run_dir))
        t0 = time.monotonic()
        child = subprocess.run([sys.executable, __file__, "--generate-into", str(data_dir), "--rows",
                                str(args.rows), "--files", str(args.files)], capture_output=True, text=True,
                               check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "include")})
        expected = json.loads(child.stdout.strip().splitlines()[-1])
        gen_s = time.monotonic() - t0

        # uploaded by a child process: S3Hook's lineage collector imports every provider's asset
        # modules (google-cloud-storage, grpc: ~40 MB) that the DAG's own tasks never need, and the
        # dag-test mode measures this process
        t0 = time.monotonic()
        subprocess.run([sys.executable, __file__, "--upload-from", str(data_dir)], check=True, env=os.environ)
        upload_s = time.monotonic() - t0

        sources = run_dir / "sources.yaml"
        sources.write_text(json.dumps({"sources": {SOURCE: {
            "url": f"s3://{BUCKET}/events", "conn_id": "cdp_s3", "schedule": "0 2 * * *", "timezone": "UTC",
            # no scheduled run before the benchmark's own (the first interval ends tomorrow 02:00)
            "start_date": datetime.now(UTC).date().isoformat(),
            "max_reject_ratio": 0.05, "parallel_loads": args.parallel_loads,
            "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 60}}}}))
        os.environ["CDP_PARTITION_SOURCES"] = str(sources)
        from cdp_ingest.store import Store, make_client

        def count(prefix: str) -> tuple[int, dict]:
            """Documents and ledger totals of one variant; then its indices are deleted, so no variant
            shares the node with the segment merges of an earlier one."""
            store = Store(make_client(os_url), prefix=prefix)
            store.refresh([f"{prefix}event-*"])
            docs = store.count(f"{prefix}event-*")
            ledger = store._request("POST", f"/{prefix}import-ledger/_search", body={"size": 1000},
                                    ok_statuses=(404,))
            hits = ((ledger or {}).get("hits") or {}).get("hits") or []
            store._request("DELETE", f"/{prefix}*")
            return docs, {k: sum(h["_source"][k] for h in hits) for k in ("rows_in", "loaded", "rejected",
                                                                          "duplicates")}

        work = run_dir / "work"
        if modes:  # warm-up (not reported): the engine on the first file, so no variant meets a cold node
            warm = run_dir / "warm-up"
            warm.mkdir()
            os.link(sorted(data_dir.glob("*.parquet"))[0], warm / "part.parquet")
            _child("engine", argparse.Namespace(url=os_url, prefix=f"{PREFIX}warm-", data=str(warm), work=str(work)))
            Store(make_client(os_url), prefix=PREFIX)._request("DELETE", f"/{PREFIX}warm-*")
            shutil.rmtree(work, ignore_errors=True)
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils.db import initdb

        dag_id = f"partition_import_{SOURCE}"
        dag = None
        for rnd in range(args.rounds):  # each round runs the modes in order: the pairs' ratios are the measure
            tag = f"r{rnd}-" if args.rounds > 1 else ""
            per_round: dict[str, float] = {}
            if "engine" in modes:
                ns = argparse.Namespace(url=os_url, prefix=f"{PREFIX}engine-{tag}", data=str(data_dir),
                                        work=str(work))
                with _CpuWindow(node_pid) as cpu:
                    r = _child("engine", ns)
                r["documents"], _ = count(ns.prefix)
                r["cpu_s"] = cpu.cpu_s
                results["engine"] = {**r, "rows_per_s": round(args.rows / r["seconds"])}
                if "ceiling" in modes and rnd == 0:
                    ns.prefix = f"{PREFIX}ceiling-"
                    r = _child("ceiling", ns)
                    count(ns.prefix)
                    results["ceiling"] = {**r, "rows_per_s": round(r["documents"] / r["seconds"])}
            shutil.rmtree(work, ignore_errors=True)

            if "dag-test" in modes:
                use_prefix(f"{PREFIX}dagtest-{tag}")
                if dag is None:
                    initdb()
                    dag = DagBag(dag_folder=str(ROOT / "dags" / "partition_import.py")).dags[dag_id]
                import pendulum

                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: each round's own peak
                rss_before = _vm_hwm_mb()
                samples = _RssSampler()
                t0 = time.monotonic()
                with _CpuWindow(node_pid) as cpu, samples:
                    dr = dag.test(logical_date=pendulum.now("UTC"), run_conf={"date": DAY})
                run_s = time.monotonic() - t0
                peak_mb = _vm_hwm_mb()
                phases: dict[str, float] = {}
                grew: dict[str, int] = {}  # task -> RSS growth (MB) while its instances ran
                for ti in dr.get_task_instances():
                    if ti.start_date and ti.end_date:
                        secs = (ti.end_date - ti.start_date).total_seconds()
                        phases[ti.task_id] = phases.get(ti.task_id, 0.0) + secs
                        grew[ti.task_id] = grew.get(ti.task_id, 0) + samples.growth(ti.start_date.timestamp(),
                                                                                     ti.end_date.timestamp())
                docs, acc = count(f"{PREFIX}dagtest-{tag}")
                results["dag-test"] = {
                    "state": str(dr.state), "run_s": round(run_s, 1), "rows_per_s": round(args.rows / run_s),
                    "documents": docs, "accounting": acc,
                    "task_s": {k: round(v, 1) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
                    "cpu_s": cpu.cpu_s, "peak_rss_mb": peak_mb, "rss_before_run_mb": rss_before,
                    "rss_growth_mb_by_task": {k: v for k, v in sorted(grew.items(), key=lambda kv: -kv[1]) if v}}
            if "local" in modes:
                use_prefix(f"{PREFIX}local-{tag}")
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")])}
                r = run_local_executor(run_dir / f"local-{rnd}", env, dag_id, node_pid)
                docs, acc = count(f"{PREFIX}local-{tag}")
                results["local"] = {**r, "rows_per_s": round(args.rows / r["run_s"]), "documents": docs,
                                    "accounting": acc}
            for mode in ("engine", "dag-test", "local"):
                if mode in modes:
                    per_round[mode] = results[mode]["rows_per_s"]
                    per_round[f"{mode} node CPU s"] = results[mode]["cpu_s"]["store_node"]
                    wrong = _check(mode, results[mode], expected, args.rows)
                    failures += [f"round {rnd + 1}, {mode}: {f}" for f in wrong]
            rounds.append(per_round)
    finally:
        if not args.keep_services:
            harness.stop()
        shutil.rmtree(run_dir / "landing", ignore_errors=True)

    return report(results, args, expected, gen_s, upload_s, rounds, failures)


LABELS = {"ceiling": "raw bulk ceiling (same documents, 5000x2)",
          "engine": "engine, no Airflow (transform + load per file)",
          "dag-test": "DAG, dag.test() (one process, one task at a time)",
          "local": "DAG, airflow standalone (LocalExecutor, 4 slots)"}


def _check(mode: str, r: dict, expected: dict, rows: int) -> list[str]:
    """What one import variant got wrong: its documents are not the unique good ids, the DAG run did not
    succeed, or (a DAG's ledger) rows in != loaded + rejected + duplicates = the rows generated."""
    wrong = []
    if r["documents"] != expected["unique_good"]:
        wrong.append(f"{r['documents']:,} documents, expected {expected['unique_good']:,}")
    if r.get("state", "success") != "success":
        wrong.append(f"run {r['state']}")
    acc = r.get("accounting")
    if acc and mode in ("dag-test", "local") and \
            not acc["rows_in"] == acc["loaded"] + acc["rejected"] + acc["duplicates"] == rows:
        wrong.append(f"accounting {acc}")
    return wrong


def report(results: dict[str, dict], args: argparse.Namespace, expected: dict, gen_s: float,
           upload_s: float, rounds: list[dict[str, float]], failures: list[str]) -> int:
    engine = results.get("engine", {}).get("rows_per_s")
    ceiling = results.get("ceiling", {}).get("rows_per_s")
    lines = [f"\npartition import benchmark — {DAY}: {args.rows:,} rows in {args.files} files "
             f"({expected['parquet_bytes'] / 1e6:.1f} MB Parquet), {os.cpu_count()} CPUs",
             "", "| variant | documents | rows/s | vs engine | vs ceiling | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for mode in ("ceiling", "engine", "dag-test", "local"):
        r = results.get(mode)
        if not r:
            continue
        rate = r["rows_per_s"]
        ve = f"{rate / engine:.2f}" if engine else "-"
        vc = f"{rate / ceiling:.2f}" if ceiling else "-"
        peak = r["peak_rss_mb"]
        if mode == "local":
            peak = f"{peak} (largest task process)"
        lines.append(f"| {LABELS[mode]} | {r['documents']:,} | {rate:,} | {ve} | {vc} | {peak} |")
    if len(rounds) > 1:
        import statistics

        lines += [f"\n{len(rounds)} rounds, each running the modes in order (the table above is the last):", "",
                  "| round | engine rows/s | dag-test rows/s | vs engine | local rows/s | vs engine "
                  "| store node CPU s (engine / dag-test / local) |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        ratios: dict[str, list[float]] = {"dag-test": [], "local": []}
        for n, rr in enumerate(rounds):
            cells = [str(n + 1), f"{rr.get('engine', 0):,.0f}"]
            for mode in ("dag-test", "local"):
                if mode in rr and rr.get("engine"):
                    ratios[mode].append(rr[mode] / rr["engine"])
                    cells += [f"{rr[mode]:,.0f}", f"{ratios[mode][-1]:.2f}"]
                else:
                    cells += ["-", "-"]
            cells.append(" / ".join(str(rr.get(f"{m} node CPU s", "-")) for m in ("engine", "dag-test", "local")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("median vs engine: " + ", ".join(f"{m} {statistics.median(v):.2f}"
                                                       for m, v in ratios.items() if v))
    for mode in ("dag-test", "local"):
        if mode in results:
            lines.append(f"\n{mode} time per task (s, summed over mapped instances): {results[mode]['task_s']}")
    if "dag-test" in results:
        lines.append(f"dag-test RSS growth while each task ran (MB): {results['dag-test']['rss_growth_mb_by_task']} "
                     f"(before the run: {results['dag-test']['rss_before_run_mb']} MB)")
    if "local" in results:
        lines.append(f"local: peak RSS per task process (MB, largest instance): "
                     f"{results['local']['peak_rss_mb_by_task']}")
    for mode in ("engine", "dag-test", "local"):
        if mode in results:
            whose = "the machine, the store node" + (", each Airflow role" if mode == "local" else "")
            lines.append(f"{mode}: CPU seconds during the run ({whose}): {results[mode]['cpu_s']}")
    ok = not failures
    lines += [f"FAILED: {f}" for f in failures]
    print("\n".join(lines))
    out = {"benchmark": "partition_import", "when": datetime.now(UTC).isoformat(timespec="seconds"),
           "rows": args.rows, "files": args.files, "parquet_mb": round(expected["parquet_bytes"] / 1e6, 1),
           "expected": expected, "generate_s": round(gen_s, 1), "upload_s": round(upload_s, 1),
           "results": results, "rounds": rounds, "failures": failures, "ok": ok,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
