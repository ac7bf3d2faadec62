"""The cost of one document per event id across monthly indices, measured side by side.

    python benchmarks/event_id_check.py [--events 200000] [--pairs 3] [--url URL]

Runs the events engine exactly as ``bulk_import.py``'s variant (d) (streamed, from the generated CSV,
each run in its own process on empty indices) alternately with the cross-month id check (the code as
it is) and without it (``Store._find_events`` / ``Store._claim`` / ``Store._claim_ids`` patched to the old
create + 409 path),
so both see the same machine load, after one warm-up run (printed, not a result). Prints one JSON
line per run: rows/s and the documents in the store (with the check = the unique good ids; without
it, more: ids repeated in another month).
"""

from __future__ import annotations

import argparse
import json
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
        Store._claim = lambda self, chunk, *a: (chunk, [], {}, 0)  # type: ignore[method-assign]
        Store._claim_ids = lambda self, chunk, import_id: (chunk, [], 0)  # type: ignore[method-assign]
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
    url = args.url
    try:
        if not url:
            harness = Harness(tmp / "services")
            url = harness.start_opensearch(heap="1g").info["url"]
        exp = sample.write_events(tmp / "events.csv", args.events, profiles=args.events // 10,
                                  sessions=args.events // 5)
        print(json.dumps({"rows": exp.rows, "bad": exp.bad, "repeated_ids": exp.duplicates,
                          "unique_good_ids": exp.good}), flush=True)
        admin = Store(make_client(url), prefix="bench-ids-")
        # the first run warms OpenSearch up (its JIT; measured 8k → 13k → 17k rows/s over the first runs)
        for i, mode in enumerate(["warm-up"] + ["off", "on"] * args.pairs):
            prefix = f"bench-ids-{i}-"
            r = subprocess.run([sys.executable, __file__, "--child", mode, url, prefix, str(tmp / "events.csv"),
                                str(tmp / "work")], stdout=subprocess.PIPE, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            admin.prefix = prefix
            admin.refresh([f"{prefix}event-*"])
            res["docs_in_store"] = admin.count(f"{prefix}event-*")
            admin._request("DELETE", f"/{prefix}*")
            print(json.dumps(res), flush=True)
    finally:
        if harness:
            harness.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
