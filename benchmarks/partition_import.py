"""Benchmark: one day of events (SPEC §3) from moto S3 into OpenSearch through the partition DAG.

Generates ``--rows`` events (default 5,000,000) in ``--files`` Parquet files under
``s3://<bucket>/events/dt=2025-06-01/`` with a ``_SUCCESS`` marker (1 % duplicate insert_ids, 0.1 % rows
with a bad insert_id), then runs ``partition_import_bench`` once with ``dag.test()`` — the real DAG:
sensor, listing, per-file download + transform + validate + bulk load, accounting — against the
real local services (``scripts/devservices.py``: OpenSearch, moto_server) and a throw-away SQLite
metadata DB. Prints a table and writes ``benchmarks/results/partition_import.json``.

Throughput = rows in / wall time of the DAG run. Peak RSS = the benchmark process, which runs every
task in-process under ``dag.test()`` (the data is generated in a child process, so it is not counted).
``dag.test()`` runs one task at a time; under the LocalExecutor the per-file chains run side by side.

    .venv/bin/python benchmarks/partition_import.py --rows 200000      # quick run
    .venv/bin/python benchmarks/partition_import.py                    # the 5M-row day
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "plugins")]
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


# ---- the run ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--run-dir", default=str(ROOT / ".run" / "bench-partitions"))
    ap.add_argument("--keep-services", action="store_true", help="leave OpenSearch and moto running")
    ap.add_argument("--generate-into", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)

    if args.generate_into:
        sys.stdout.write(json.dumps(generate(Path(args.generate_into), args.rows, args.files)) + "\n")
        return 0

    from airflow_env import MEMORY_ENV, airflow_env

    if any(os.environ.get(k) != v for k, v in MEMORY_ENV.items()):  # read at process start: run as a task would
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                  {**os.environ, **MEMORY_ENV})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from devservices import Harness

    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for k, v in airflow_env(run_dir / "airflow", run_dir / "landing").items():
        if k != "PYTHONPATH":
            os.environ[k] = v
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    harness = Harness(run_dir / "services")
    try:
        harness.start(["opensearch", "s3"])
        os.environ.update(harness.airflow_connections())
        conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
        conn["extra"]["index_prefix"] = PREFIX
        os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"] = json.dumps(conn)

        data_dir = Path(tempfile.mkdtemp(prefix="bench-parquet-", dir=run_dir))
        t0 = time.monotonic()
        child = subprocess.run([sys.executable, __file__, "--generate-into", str(data_dir), "--rows",
                                str(args.rows), "--files", str(args.files)], capture_output=True, text=True,
                               check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "include")})
        expected = json.loads(child.stdout.strip().splitlines()[-1])
        gen_s = time.monotonic() - t0

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3 = S3Hook(aws_conn_id="cdp_s3")
        s3.create_bucket(BUCKET)
        t0 = time.monotonic()
        for p in sorted(data_dir.glob("*.parquet")):
            s3.load_file(str(p), key=f"events/dt={DAY}/{p.name}", bucket_name=BUCKET, replace=True)
        s3.load_bytes(b"", key=f"events/dt={DAY}/_SUCCESS", bucket_name=BUCKET, replace=True)
        upload_s = time.monotonic() - t0
        shutil.rmtree(data_dir)

        sources = run_dir / "sources.yaml"
        sources.write_text(json.dumps({"sources": {SOURCE: {
            "url": f"s3://{BUCKET}/events", "conn_id": "cdp_s3", "schedule": "0 2 * * *", "timezone": "UTC",
            "max_reject_ratio": 0.05, "sensor": {"mode": "poke", "poke_interval": 1, "timeout": 60}}}}))
        os.environ["CDP_PARTITION_SOURCES"] = str(sources)

        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils.db import initdb

        initdb()
        dag = DagBag(dag_folder=str(ROOT / "dags" / "partition_import.py")).dags[f"partition_import_{SOURCE}"]
        import pendulum

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.monotonic()
        dr = dag.test(logical_date=pendulum.datetime(2025, 6, 2, 2, tz="UTC"))
        run_s = time.monotonic() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        phases: dict[str, float] = {}
        for ti in dr.get_task_instances():
            if ti.start_date and ti.end_date:
                phases[ti.task_id] = phases.get(ti.task_id, 0.0) + (ti.end_date - ti.start_date).total_seconds()
        from cdp_ingest.store import Store, make_client

        store = Store(make_client(harness.services["opensearch"].info["url"]), prefix=PREFIX)
        store.refresh([f"{PREFIX}event-*"])
        docs = store.count(f"{PREFIX}event-*")
        ledger = store._request("POST", f"/{PREFIX}import-ledger/_search", body={"size": 1000})["hits"]["hits"]
        acc = {k: sum(h["_source"][k] for h in ledger) for k in ("rows_in", "loaded", "rejected", "duplicates")}
        result = {
            "benchmark": "partition_import", "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "state": str(dr.state), "rows": args.rows, "files": args.files,
            "parquet_mb": round(expected["parquet_bytes"] / 1e6, 1), "expected": expected, "accounting": acc,
            "documents": docs, "generate_s": round(gen_s, 1), "upload_s": round(upload_s, 1),
            "run_s": round(run_s, 1), "transform_s": round(phases.get("file.transform", 0), 1),
            "load_s": round(phases.get("file.load", 0), 1), "rows_per_s": round(args.rows / run_s),
            "peak_rss_mb": round(peak_kb / 1024), "rss_before_run_mb": round(rss_before / 1024),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "mode": "dag.test(): one task at a time, in-process",
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        rows = [("DAG run state", result["state"]), ("rows (files)", f"{args.rows:,} ({args.files})"),
                ("Parquet size", f"{result['parquet_mb']} MB"),
                ("loaded / rejected / duplicates", f"{acc['loaded']:,} / {acc['rejected']:,} / {acc['duplicates']:,}"),
                ("documents in store", f"{docs:,} (expected {expected['unique_good']:,})"),
                ("DAG run wall time", f"{result['run_s']} s"),
                ("  transform (download+stage)", f"{result['transform_s']} s"),
                ("  load (bulk)", f"{result['load_s']} s"),
                ("throughput", f"{result['rows_per_s']:,} rows/s"),
                ("peak RSS", f"{result['peak_rss_mb']} MB (before the run: {result['rss_before_run_mb']} MB)")]
        width = max(len(k) for k, _ in rows)
        print(f"\npartition import benchmark — {DAY}, moto S3 → OpenSearch ({os.cpu_count()} CPUs)")
        print("-" * (width + 40))
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
        ok = (result["state"] == "success" and docs == expected["unique_good"]
              and acc["rows_in"] == acc["loaded"] + acc["rejected"] + acc["duplicates"] == args.rows)
        return 0 if ok else 1
    finally:
        if not args.keep_services:
            harness.stop()


if __name__ == "__main__":
    sys.exit(main())
