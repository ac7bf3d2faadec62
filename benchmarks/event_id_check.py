"""The cost of one document per event id across monthly indices, measured side by side.

    python benchmarks/event_id_check.py [--events 200000] [--pairs 3] [--url URL --node-pid PID]

Runs the events engine exactly as ``bulk_import.py``'s variant (d) (streamed, from the generated CSV,
each run in its own process on empty indices) alternately with the id check as it is (every event id
claimed in ``<prefix>import-event-ids`` before it is written, see ``cdp_ingest.store``) and without it
(``Store._find_events`` / ``Store._check_window`` / ``Store._claim_ids`` patched to the old create + 409
path), so both see the same machine load, after one warm-up run (printed, not a result). Prints one JSON
line per run (rows/s, the node's CPU per document when its pid is known, and the documents in the store:
with the check = the unique good ids; without it, more: ids repeated in another month), then a table,
and writes ``benchmarks/results/event_id_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "scripts")]


def child(mode: str, url: str, prefix: str, csv_path: str, work: str) -> None:
    from cdp_ingest.store import Store

    if mode in ("off", "warm-up"):
        Store._find_events = lambda self, ids, months=None: {}  # type: ignore[method-assign]
        Store._check_window = lambda self, chunk, *a: (chunk, [], {}, 0)  # type: ignore[method-assign]
        Store._claim_ids = lambda self, chunk, import_id: (chunk, [], 0, [])  # type: ignore[method-assign]
    import bulk_import

    t0 = time.perf_counter()
    n, rep = bulk_import.run_engine("events", csv_path, url, prefix, False, work)
    secs = time.perf_counter() - t0
    sys.stdout.write(json.dumps({"check": mode, "loaded": n, "duplicates": rep["duplicates"], "seconds": round(secs, 2),
                                 "rows_per_s": round(rep["rows_in"] / secs)}) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--url", help="an OpenSearch to use; default: start one (1 GB heap) and stop it after")
    ap.add_argument("--node-pid", type=int, help="the pid of --url's OpenSearch (for its CPU per document)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "event_id_check.json"))
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    from cdp_ingest import sample
    from cdp_ingest.store import Store, make_client
    from devservices import Harness

    tmp = Path(tempfile.mkdtemp(prefix="cdp-bench-ids-"))
    tmp.chmod(0o755)  # OpenSearch runs as the service user and must reach its folder below
    harness = None
    url, node_pid = args.url, args.node_pid
    runs: list[dict] = []
    try:
        if not url:
            harness = Harness(tmp / "services")
            node = harness.start_opensearch(heap="1g")
            url, node_pid = node.info["url"], node.pid
        exp = sample.write_events(tmp / "events.csv", args.events, profiles=args.events // 10,
                                  sessions=args.events // 5)
        print(json.dumps({"rows": exp.rows, "bad": exp.bad, "repeated_ids": exp.duplicates,
                          "unique_good_ids": exp.good}), flush=True)
        admin = Store(make_client(url), prefix="bench-ids-")
        # the first run warms OpenSearch up (its JIT; measured 8k → 13k → 17k rows/s over the first runs)
        for i, mode in enumerate(["warm-up"] + ["off", "on"] * args.pairs):
            prefix = f"bench-ids-{i}-"
            cpu0 = _cpu(node_pid)
            r = subprocess.run([sys.executable, __file__, "--child", mode, url, prefix, str(tmp / "events.csv"),
                                str(tmp / "work")], stdout=subprocess.PIPE, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if node_pid:
                res["node_us_per_doc"] = round((_cpu(node_pid) - cpu0) / max(res["loaded"], 1) * 1e6, 1)
            admin.prefix = prefix
            admin.refresh([f"{prefix}event-*"])
            res["docs_in_store"] = admin.count(f"{prefix}event-*")
            admin._request("DELETE", f"/{prefix}*")
            print(json.dumps(res), flush=True)
            if mode != "warm-up":
                runs.append(res)
    finally:
        if harness:
            harness.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the input and the node's data
    summary = {}
    print("\n| id check | runs | rows/s (mean) | node µs/doc | docs in store |\n|---|---:|---:|---:|---:|")
    for mode in ("off", "on"):
        rs = [r for r in runs if r["check"] == mode]
        node = [r["node_us_per_doc"] for r in rs if "node_us_per_doc" in r]
        summary[mode] = {"rows_per_s": round(sum(r["rows_per_s"] for r in rs) / len(rs)),
                         "node_us_per_doc": round(sum(node) / len(node), 1) if node else None,
                         "docs_in_store": rs[-1]["docs_in_store"]}
        print(f"| {mode} | {len(rs)} | {summary[mode]['rows_per_s']:,} | {summary[mode]['node_us_per_doc']} "
              f"| {summary[mode]['docs_in_store']:,} |")
    ratio = round(summary["on"]["rows_per_s"] / summary["off"]["rows_per_s"], 2)
    print(f"\nwith the check / without: {ratio}")
    Path(args.out).write_text(json.dumps({"events": args.events, "pairs": args.pairs, "runs": runs,
                                          "summary": summary, "ratio_on_off": ratio}, indent=1) + "\n")
    return 0


def _cpu(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (0 without one)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
