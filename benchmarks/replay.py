"""Historical replay benchmark: a gzip archive of Segment messages into a no-op local receiver, side by side.

    python benchmarks/replay.py [--messages 1000000] [--big-factor 10]

Variants (each in its own child process, so peak RSS is per variant), all against the same no-op
receiver (scripts/replay_receiver.py --noop: checks auth and size, reads the body, answers 200):
  ceiling   the engine's own batches, read into memory before the clock starts, POSTed with the same
            session type and concurrency (2): what the receiver and loopback accept at most
  send      the engine's replay step alone (ReplayOperator's work): stream the staged plan, stamp sentAt,
            POST, checkpoint after every batch
  engine    the whole replay from the .gz archive: parse, validate, rewrite, plan, send, accounting
            (planning in-process, the default; ``engine-2w``: with 2 planning worker processes)
  floor     not a replay: gunzip + orjson.loads + orjson.dumps of every message, nothing else, in one
            process: the least any engine that parses and rewrites each message pays in Python here
  big       the engine on an archive --big-factor times larger (memory must stay flat)
Peak RSS is the whole process tree of the variant (the replay process and its planning workers),
sampled every 50 ms. Prints a table and writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
RESULTS = ROOT / "benchmarks" / "results"
WRITE_KEY = "bench-key"


def write_archive(path: Path, n: int) -> None:
    import orjson

    start = datetime(2020, 1, 1, tzinfo=UTC)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        for i in range(n):
            ts = (start + timedelta(seconds=17 * i)).isoformat().replace("+00:00", "Z")
            fh.write(orjson.dumps({
                "type": "track", "event": ("Order Completed", "Product Viewed", "Signed Up")[i % 3],
                "messageId": f"m-{i}", "sentAt": ts, "projectId": "p1", "timestamp": ts,
                "anonymousId": f"anon-{i % 50000}", "userId": f"user-{i % 20000}" if i % 3 == 0 else None,
                "properties": {"price": i % 100, "sku": f"sku-{i % 997}", "currency": "EUR"},
                "context": {"library": {"name": "analytics.js", "version": "4.1.0"}, "ip": "203.0.113.9",
                            "page": {"path": "/checkout", "url": "https://shop.example/checkout"}},
            }) + b"\n")


# ---- variants (child processes) ---------------------------------------------------------------------
def _settings(workers: int = 1):
    from cdp_ingest.replay import ReplaySettings

    return ReplaySettings(name="bench", concurrency=2, workers=workers)


def variant_ceiling(work: str, url: str) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from cdp_ingest.replay import SegmentSink, read_plan, stamp_sent_at

    staged = next(Path(work).glob("*/staged.parquet"))
    now = datetime.now(UTC)
    payloads = [stamp_sent_at(b.payload, now) for b in read_plan(staged)]
    count = sum(b.payload.count(b'"messageId"') for b in read_plan(staged))
    sink = SegmentSink(url, write_key=WRITE_KEY)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(sink.send, payloads))
    return {"messages": count, "seconds": time.perf_counter() - t0, "requests": len(payloads)}


def variant_send(work: str, url: str) -> dict:
    import orjson

    from cdp_ingest.replay import Replayer, ReplayPlan, SegmentSink

    d = next(Path(work).glob("*/plan.json")).parent
    plan = ReplayPlan(**orjson.loads((d / "plan.json").read_bytes())["plan"])
    (d / "checkpoint.jsonl").unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = Replayer(SegmentSink(url, write_key=WRITE_KEY), _settings()).run(
        d / "staged.parquet", digest=plan.digest, checkpoint_path=d / "checkpoint.jsonl",
        error_path=d / "send-errors.csv")
    return {"messages": r.sent, "seconds": time.perf_counter() - t0, "requests": r.requests}


def variant_engine(archive: str, work: str, url: str, workers: str = "1") -> dict:
    from cdp_ingest.replay import SegmentSink, replay_unit

    t0 = time.perf_counter()
    rep = replay_unit(archive, _settings(int(workers)), SegmentSink(url, write_key=WRITE_KEY), work_dir=work)
    c = rep.counts()
    return {"messages": c["sent"], "seconds": time.perf_counter() - t0, "rows_in": c["rows_in"],
            "batches": c["batches"], "plan_seconds": rep.plan.seconds,
            "send_seconds": rep.result.seconds if rep.result else None}


def variant_floor(archive: str) -> dict:
    import orjson

    loads, dumps = orjson.loads, orjson.dumps
    n = 0
    t0 = time.perf_counter()
    with gzip.open(archive, "rb") as fh:
        rest = b""
        while block := fh.read(1 << 20):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line:
                    dumps(loads(line))
                    n += 1
    return {"messages": n, "seconds": time.perf_counter() - t0}


def child(argv: list[str]) -> None:
    import resource

    name, *args = argv
    out = {"ceiling": variant_ceiling, "send": variant_send, "engine": variant_engine,
           "floor": variant_floor}[name](*args)
    out["main_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(out) + "\n")


def run_child(*args: str) -> dict:
    """One variant in a child process; its whole process tree's RSS is sampled while it runs."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=out, stderr=err, text=True)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"variant {args[0]} failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["peak_rss_mb"] = max(peak / (1 << 20), result["main_peak_rss_mb"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--big-factor", type=int, default=10, help="0 skips the big archive")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    from replay_receiver import start_receiver

    tmp = Path(tempfile.mkdtemp(prefix="cdp-replay-bench-"))
    receiver = start_receiver(noop=True, write_key=WRITE_KEY)
    url = receiver.url
    rows = {}
    try:
        archive = tmp / "archive.jsonl.gz"
        t0 = time.perf_counter()
        write_archive(archive, args.messages)
        sys.stderr.write(f"archive: {args.messages} messages, {archive.stat().st_size >> 20} MB gz, "
                         f"{time.perf_counter() - t0:.0f} s to write\n")
        rows["engine"] = run_child("engine", str(archive), str(tmp / "work"), url)
        rows["engine-2w"] = run_child("engine", str(archive), str(tmp / "work-2w"), url, "2")
        rows["send"] = run_child("send", str(tmp / "work"), url)
        rows["ceiling"] = run_child("ceiling", str(tmp / "work"), url)
        rows["floor"] = run_child("floor", str(archive))
        if args.big_factor:
            big = tmp / "big.jsonl.gz"
            write_archive(big, args.messages * args.big_factor)
            rows["big"] = run_child("engine", str(big), str(tmp / "work-big"), url)
    finally:
        receiver.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    ceiling = rows["ceiling"]["messages"] / rows["ceiling"]["seconds"]
    lines = [f"{'variant':<10}{'messages':>12}{'seconds':>9}{'plan s':>8}{'msg/s':>12}{'x ceiling':>11}"
             f"{'peak RSS MB':>13}"]
    for name, r in rows.items():
        rate = r["messages"] / r["seconds"]
        r["rate"] = rate
        r["ratio_to_ceiling"] = rate / ceiling
        plan_s = f"{r['plan_seconds']:.1f}" if r.get("plan_seconds") is not None else "-"
        lines.append(f"{name:<10}{r['messages']:>12,}{r['seconds']:>9.1f}{plan_s:>8}{rate:>12,.0f}"
                     f"{rate / ceiling:>11.2f}{r['peak_rss_mb']:>13.0f}")
    sys.stdout.write("\n".join(lines) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replay.json").write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "messages": args.messages, "big_factor": args.big_factor, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
