"""Bulk import benchmark: the same generated CSVs into the same local OpenSearch, side by side.

    python benchmarks/bulk_import.py [--events 1000000] [--profiles 200000] [--naive-rows 20000]
                                     [--big-factor 10] [--rounds 3] [--url http://127.0.0.1:9200]

Variants (each runs in its own child process, so peak RSS is per variant):
  a  naive     csv.DictReader, one client.index() per row (the hand-written script style)
  b  helpers   the same documents through opensearch-py's plain helpers.bulk (defaults)
  b2 streaming helpers.streaming_bulk, tuned: the ceiling's best chunk size, orjson as the client serializer
  b3 parallel  helpers.parallel_bulk, tuned: the ceiling's best chunk size and thread count, orjson
  c  ceiling   pre-serialised NDJSON (made before the clock starts) sent with the best chunk
               size/concurrency of a small sweep: what the cluster accepts at most (after an untimed
               warm-up pass)
  c3 claims    (events) the ceiling's bodies, each sent after the bulk body of its ids' claims, as the
               engine writes them: what one document per event id (SPEC) costs the node at least
  d  engine    cdp_ingest streamed (map + load overlapped), end to end from the CSV, with
               validation, error file, ledger and accounting
  d0 rows      (events) the engine as (d) with the columnar mapping switched off (CDP_ROW_MAPPING=1):
               every row through Mapper.map_row, as before cdp_ingest.fastmap
  d' staged    cdp_ingest as the Airflow tasks run it: transform to a staged file, then load
Documents are built by the same mapping in a, b and d, so the variants differ in how they load.
(a) is measured on the first --naive-rows rows only (at ~1-2k rows/s a full run takes many minutes).
(c), (c3), (d) and (d') run in --rounds rounds, in turn: the node's speed drifts over minutes, so each
round's ratios are to its own ceiling (a side-by-side pair), and the other variants are compared with the
rounds' median. Finally the engine runs on a file --big-factor times larger to show that its memory stays flat.
Besides rows/s, each variant's CPU per row: its whole process (start-up included) and, with the
benchmark's own node, the node's (all its threads) over the same run. On a shared 2-core VM rows/s
moves with the neighbours; CPU per row much less, and the two cores' sum bounds the rate.
Prints a table and writes benchmarks/results/bulk_import.json.
"""

from __future__ import annotations

import argparse
import csv
import json
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
sys.path.insert(0, str(ROOT / "scripts"))
MAPPINGS = ROOT / "include" / "cdp_ingest" / "mappings"
RESULTS = ROOT / "benchmarks" / "results"
NOW = datetime(2026, 11, 23, tzinfo=UTC)


# ---- variants (run in a child process) ------------------------------------------------------------------
def _mapper(kind: str, unit_key: str):
    from cdp_ingest.mapping import Mapper, Mapping

    return Mapper(Mapping.load(MAPPINGS / f"demo-{kind}.yaml"), unit_key=unit_key, now=NOW)


def _docs(kind: str, csv_path: str, prefix: str, limit: int | None = None):
    """(index, id, document) per good row, built with the same mapping the engine uses."""
    from cdp_ingest.documents import apply_operation, index_for, new_document
    from cdp_ingest.errors import RowError

    mapper = _mapper(kind, "bench")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for ref, row in enumerate(csv.DictReader(fh), 1):
            if limit and ref > limit:
                return
            try:
                m = mapper.map_row(row, ref)
            except RowError:
                continue
            if m.kind == "profile":  # the document the engine's merge would write for a new profile
                doc = new_document("profile", m.doc_id, NOW)
                for op, path, value in m.operations:
                    apply_operation(doc, op, path, value)
                yield f"{prefix}profile", m.doc_id, doc
            else:
                yield index_for(prefix, m.kind, m.when), m.doc_id, m.document


def run_naive(kind, csv_path, url, prefix, limit):
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[url])
    n = 0
    for index, doc_id, doc in _docs(kind, csv_path, prefix, limit):
        client.index(index=index, id=doc_id, body=doc)
        n += 1
    return n


def run_helpers(kind, csv_path, url, prefix, limit):
    from opensearchpy import OpenSearch, helpers

    client = OpenSearch(hosts=[url], timeout=120)
    actions = ({"_index": i, "_id": d, "_source": doc} for i, d, doc in _docs(kind, csv_path, prefix, limit))
    ok, errors = helpers.bulk(client, actions, raise_on_error=False, stats_only=True)
    return ok


def run_helpers_tuned(kind, csv_path, url, prefix, limit, chunk, concurrency):
    """helpers.streaming_bulk (concurrency 1) or helpers.parallel_bulk (concurrency threads), tuned: the
    ceiling's best chunk size, orjson as the client's serializer, responses not raised per error."""
    from opensearchpy import helpers

    from cdp_ingest.store import make_client

    client = make_client(url, timeout=120, pool_maxsize=max(4, concurrency))
    actions = ({"_index": i, "_id": d, "_source": doc} for i, d, doc in _docs(kind, csv_path, prefix, limit))
    if concurrency <= 1:
        results = helpers.streaming_bulk(client, actions, chunk_size=chunk, max_chunk_bytes=8 << 20,
                                         raise_on_error=False, raise_on_exception=False)
    else:
        results = helpers.parallel_bulk(client, actions, thread_count=concurrency, chunk_size=chunk,
                                        max_chunk_bytes=8 << 20, queue_size=concurrency,
                                        raise_on_error=False, raise_on_exception=False)
    return sum(1 for ok, _ in results if ok)


def run_ceiling(kind, ndjson_dir, url, prefix, limit, chunk, concurrency, claims=False):
    """Send pre-made bulk bodies (files of ``chunk`` documents each) with ``concurrency`` threads; with
    ``claims``, each body after the body of its documents' claims (as the engine's create path writes
    them: one small document per event id in ``<prefix>import-event-ids``), in the same thread."""
    from concurrent.futures import ThreadPoolExecutor

    import urllib3

    http = urllib3.PoolManager(maxsize=concurrency)
    files = sorted(Path(ndjson_dir).glob(f"{chunk}-*.ndjson"))
    bodies = [[f.read_bytes().replace(b"@PREFIX@", prefix.encode())] for f in files]  # before the clock
    if claims:
        for body, f in zip(bodies, files, strict=True):
            body.insert(0, (f.parent / f"claims-{f.name}").read_bytes().replace(b"@PREFIX@", prefix.encode()))
    counts = [b[-1].count(b"\n") // 2 for b in bodies]
    t0 = time.perf_counter()

    def send(pair: list[bytes]) -> None:
        for body in pair:
            r = http.request("POST", f"{url}/_bulk?filter_path=errors", body=body,
                             headers={"content-type": "application/x-ndjson"})
            if r.status != 200 or b'"errors":false' not in r.data:
                raise RuntimeError(f"bulk failed: {r.status} {r.data[:300]!r}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, bodies))
    return sum(counts), time.perf_counter() - t0


def run_engine(kind, csv_path, url, prefix, stage: bool, work: str, concurrency: int = 2, chunk: int = 5000):
    from cdp_ingest.ledger import Ledger
    from cdp_ingest.pipeline import import_unit
    from cdp_ingest.readers import read_batches
    from cdp_ingest.store import Store, make_client

    store = Store(make_client(url), prefix=prefix, concurrency=concurrency, chunk_docs=chunk)
    store.ensure_templates()
    rep = import_unit(csv_path, lambda: read_batches(csv_path),
                      lambda iid: _mapper(kind, iid).map_row, store=store, ledger=Ledger(store), work_dir=work,
                      kind=kind.rstrip("s"), source="bench", stage=stage)
    return rep.loaded, rep.to_dict()


def child(args) -> None:
    if args.variant in ("engine", "staged", "engine-rows"):
        # the engine's modules (pyarrow: ~0.2-0.4 s) are loaded before the clock starts, as the ceilings read
        # their bodies before theirs (since stop 29)
        import cdp_ingest.ledger
        import cdp_ingest.mapping
        import cdp_ingest.pipeline
        import cdp_ingest.readers
        import cdp_ingest.store  # noqa: F401
    t0 = time.perf_counter()
    extra = {}
    if args.variant == "naive":
        n = run_naive(args.kind, args.csv, args.url, args.prefix, args.limit)
    elif args.variant == "helpers":
        n = run_helpers(args.kind, args.csv, args.url, args.prefix, args.limit)
    elif args.variant == "helpers-tuned":
        n = run_helpers_tuned(args.kind, args.csv, args.url, args.prefix, args.limit, args.chunk, args.concurrency)
    elif args.variant in ("ceiling", "ceiling-claims"):
        n, secs = run_ceiling(args.kind, args.ndjson, args.url, args.prefix, args.limit, args.chunk,
                              args.concurrency, claims=args.variant == "ceiling-claims")
        t0 = time.perf_counter() - secs
    else:
        n, extra = run_engine(args.kind, args.csv, args.url, args.prefix, args.variant == "staged", args.work,
                              args.concurrency or 2, args.chunk or 5000)
    secs = time.perf_counter() - t0
    sys.stdout.write(json.dumps({"docs": n, "seconds": secs, "peak_rss_mb": _vm_hwm_mb(),
                                 **({"report": extra} if extra else {})}) + "\n")


def _vm_hwm_mb() -> float:
    """This process's peak RSS. (wait4's ru_maxrss would include the parent's RSS at fork time.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- parent ---------------------------------------------------------------------------------------------
def measure(variant: str, kind: str, *, url: str, prefix: str, csv_path: Path, work: Path, limit: int = 0,
            ndjson: Path | None = None, chunk: int = 0, concurrency: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--kind", kind, "--url", url, "--prefix", prefix,
           "--csv", str(csv_path), "--work", str(work), "--limit", str(limit)]
    if ndjson:
        cmd += ["--ndjson", str(ndjson)]
    if chunk or concurrency:
        cmd += ["--chunk", str(chunk), "--concurrency", str(concurrency)]
    from airflow_env import MEMORY_ENV

    env = {**os.environ, **MEMORY_ENV}  # every variant with the allocator settings the Airflow tasks run with
    if variant == "engine-rows":  # the engine with the row-by-row mapping only (no fastmap): the "before"
        env["CDP_ROW_MAPPING"] = "1"
    before, node_before = _children_cpu(), _node_cpu()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"variant {variant} failed (exit {r.returncode})")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["rows_per_s"] = res["docs"] / res["seconds"]
    docs = max(res["docs"], 1)
    # CPU per document: the variant's whole process (start-up and imports included) and the node's, over
    # the same run; on a busy VM they move less than rows/s (README, "Reading it with the CPU columns")
    res["client_cpu_us"] = (_children_cpu() - before) / docs * 1e6
    node_after = _node_cpu()
    if node_before is not None and node_after is not None:
        res["node_cpu_us"] = (node_after - node_before) / docs * 1e6
    return res


NODE_PID: int | None = None  # the benchmark's own node (its CPU is read from /proc); None with --url


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _node_cpu() -> float | None:
    if NODE_PID is None:
        return None
    try:
        fields = Path(f"/proc/{NODE_PID}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def prepare_ndjson(kind: str, csv_path: Path, out_dir: Path, chunks: list[int]) -> None:
    """Serialise the engine's documents once (orjson), cut into bulk bodies of each chunk size, in one pass:
    only the ids seen and one unfinished body per chunk size are in memory (holding every document first,
    1M events took ~8 GB: each orjson result keeps a ~4 KB allocation). Events also get the bodies of
    their ids' claims (``claims-<file>``, for (c3)), made by the engine's own ``Store._claim_body``."""
    import orjson

    from cdp_ingest.store import BulkItem, Store, _Beat

    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    bodies: dict[int, list[bytes]] = {c: [] for c in chunks}
    claims: dict[int, list[BulkItem]] = {c: [] for c in chunks}
    written = dict.fromkeys(chunks, 0)
    claimer = Store(None, prefix="@PREFIX@")  # builds bodies only: no request is made
    claimer._beat = _Beat(claimer, "bench-import-0")  # (a token for "l"; not started)

    def flush(chunk: int) -> None:
        name = f"{chunk}-{written[chunk]:06d}.ndjson"
        (out_dir / name).write_bytes(b"".join(bodies[chunk]))
        if claims[chunk]:
            (out_dir / f"claims-{name}").write_bytes(b"".join(claimer._claim_body(claims[chunk], "bench-import-0")))
        written[chunk] += 1
        bodies[chunk].clear()
        claims[chunk].clear()

    for ref, (index, doc_id, doc) in enumerate(_docs(kind, str(csv_path), "bench-")):
        if doc_id in seen:  # create: a duplicate would 409
            continue
        seen.add(doc_id)
        index = index.replace("bench-", "@PREFIX@", 1)
        line = b'{"create":{"_index":"%s","_id":"%s"}}\n%s\n' % (index.encode(), doc_id.encode(), orjson.dumps(doc))
        claim = BulkItem(index, doc_id, b"", ref) if index.startswith("@PREFIX@event-") else None
        for chunk, body in bodies.items():
            body.append(line)
            if claim is not None:
                claims[chunk].append(claim)
            if len(body) == chunk:
                flush(chunk)
    for chunk, body in bodies.items():
        if body:
            flush(chunk)


def pin_node(root: int) -> None:
    """Every thread of the node's process tree on the last CPU; this process (and so every client child
    it starts) on the other CPUs. Threads the node starts later inherit their creator's CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin-node needs at least 2 CPUs")
    node_cpu, client_cpus = {cpus[-1]}, set(cpus[:-1])
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    threads = 0
    for pid in tree:
        for t in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(t.name), node_cpu)
            threads += 1
    os.sched_setaffinity(0, client_cpus)
    print(f"node pinned to CPU {cpus[-1]} ({len(tree)} processes, {threads} threads); clients on CPUs "
          f"{sorted(client_cpus)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--profiles", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=20_000)
    ap.add_argument("--big-factor", type=int, default=10, help="0 skips the big-file memory run")
    ap.add_argument("--url", help="an OpenSearch to use; default: start one (2 GB heap) and stop it after")
    ap.add_argument("--pin-node", action="store_true",
                    help="run the node on the last CPU (all its threads) and every client on the others, as on "
                         "a machine where OpenSearch does not share cores with the import (needs its own node)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the ceiling (c), with claims (c3), the engine streamed (d) and staged (d')")
    ap.add_argument("--out", default="bulk_import.json", help="results file name in benchmarks/results/")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for a in ("--kind", "--prefix", "--csv", "--work", "--ndjson"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    for a in ("--limit", "--chunk", "--concurrency"):
        ap.add_argument(a, type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.variant = args.child
        child(args)
        return 0

    from cdp_ingest import sample
    from cdp_ingest.store import Store, make_client
    from devservices import Harness

    tmp = Path(tempfile.mkdtemp(prefix="cdp-bench-"))
    tmp.chmod(0o755)  # OpenSearch runs as the service user and must reach its folder below
    harness = None
    url = args.url
    if not url:
        harness = Harness(tmp / "services")
        node = harness.start_opensearch(heap="2g")
        url = node.info["url"]
        global NODE_PID
        NODE_PID = node.pid
        if args.pin_node:
            pin_node(node.pid)
    elif args.pin_node:
        ap.error("--pin-node needs the benchmark's own node (no --url)")
    admin = Store(make_client(url), prefix="bench-")
    results: list[dict] = []
    try:
        inputs = {"events": (tmp / "events.csv", sample.write_events(tmp / "events.csv", args.events,
                                                                     profiles=args.events // 10,
                                                                     sessions=args.events // 5)),
                  "profiles": (tmp / "profiles.csv", sample.write_profiles(tmp / "profiles.csv", args.profiles))}
        for kind, (path, exp) in inputs.items():
            if not (args.events if kind == "events" else args.profiles):
                continue
            print(f"\n{kind}: {exp.rows} rows ({exp.bad} bad, {exp.duplicates} duplicate ids), "
                  f"{path.stat().st_size / 1e6:.0f} MB", flush=True)
            nd = tmp / f"ndjson-{kind}"
            sweep = [(2000, 2), (5000, 2), (5000, 4), (10000, 3)]
            prepare_ndjson(kind, path, nd, sorted({c for c, _ in sweep}))

            def one(variant: str, label: str, kind=kind, path=path, exp=exp, in_round: int = 0, **kw) -> dict:
                prefix = f"bench-{kind}-{variant}-{len(results)}-"
                admin.prefix = prefix
                admin.ensure_templates()
                r = measure(variant, kind, url=url, prefix=prefix, csv_path=path, work=tmp / "work", **kw)
                admin._request("DELETE", f"/{prefix}*")  # each variant starts from empty indices
                r.update(kind=kind, variant=label, rows_in=exp.rows, **({"round": in_round} if in_round else {}))
                results.append(r)
                print(f"  {label:46} {r['docs']:>9,d} docs {r['seconds']:8.1f} s {r['rows_per_s']:>9,.0f}/s "
                      f"peak RSS {r['peak_rss_mb']:6.0f} MB  CPU µs/row {r['client_cpu_us']:5.1f} + node "
                      f"{r.get('node_cpu_us', float('nan')):4.0f}", flush=True)
                return r

            # a fresh node speeds up for its first minute (JIT, caches): warm it before the sweep, or
            # the sweep's order decides its winner and the engine, measured later, meets a faster node
            one("ceiling", "c  warm-up (not in the table)", ndjson=nd, chunk=5000, concurrency=2)
            best = None
            for chunk, conc in sweep:  # the ceiling's best settings, on the full set
                r = one("ceiling", f"c  ceiling sweep {chunk}x{conc}", ndjson=nd, chunk=chunk, concurrency=conc)
                if best is None or r["rows_per_s"] > best[0]["rows_per_s"]:
                    best = (r, chunk, conc)
            one("naive", "a  per-row index() loop", limit=args.naive_rows)
            one("helpers", "b  helpers.bulk (defaults)")
            one("helpers-tuned", f"b2 helpers.streaming_bulk ({best[1]}, orjson)", chunk=best[1], concurrency=1)
            one("helpers-tuned", f"b3 helpers.parallel_bulk ({best[1]}x{best[2]}, orjson)", chunk=best[1],
                concurrency=best[2])
            if kind == "events":
                one("engine-rows", "d0 cdp_ingest (streamed, row-by-row mapping)")
            # The node's speed drifts over minutes (the same bodies 10-40 % apart within one run), so the
            # ceilings and the engine are measured in rounds, side by side: each round's ratios are to its
            # own ceiling; the rows above are compared with the rounds' median ceiling.
            for k in range(1, args.rounds + 1):
                tag = f", round {k}" if args.rounds > 1 else ""
                one("ceiling", f"c  raw bulk ceiling ({best[1]}x{best[2]}){tag}", ndjson=nd, chunk=best[1],
                    concurrency=best[2], in_round=k)
                if kind == "events":  # what one document per event id costs the node at least
                    one("ceiling-claims", f"c3 raw ceiling + each id's claim ({best[1]}x{best[2]}){tag}", ndjson=nd,
                        chunk=best[1], concurrency=best[2], in_round=k)
                one("engine", f"d  cdp_ingest (streamed){tag}", in_round=k)
                one("staged", f"d' cdp_ingest (staged, as the DAG){tag}", in_round=k)
        if args.big_factor and args.events:
            big = tmp / "events-big.csv"
            exp = sample.write_events(big, args.events * args.big_factor, profiles=args.events,
                                      sessions=args.events)
            print(f"\nbig file: {exp.rows} rows, {big.stat().st_size / 1e9:.1f} GB", flush=True)
            prefix = "bench-big-"
            admin.prefix = prefix
            admin.ensure_templates()
            r = measure("engine", "events", url=url, prefix=prefix, csv_path=big, work=tmp / "work")
            admin._request("DELETE", f"/{prefix}*")
            r.update(kind="events", variant=f"d  cdp_ingest (streamed), {args.big_factor}x file", rows_in=exp.rows)
            results.append(r)
            print(f"  {r['variant']:46} {r['docs']:>9,d} docs {r['seconds']:8.1f} s {r['rows_per_s']:>9,.0f}/s "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
            big.unlink()
    finally:
        if harness:
            harness.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # ~3 GB: the inputs, the bulk bodies, the node's data
    report(results, args)
    return 0


def _median(values: list[float]) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def round_ratios(results: list[dict], kind: str) -> list[dict]:
    """Per round of ``kind``: the ceiling's rows/s and each measured variant's ratio to it (and the
    engine's to the ceiling with claims), side by side within the round."""
    out = []
    for k in sorted({r["round"] for r in results if r["kind"] == kind and r.get("round")}):
        by = {r["variant"][:2].strip(): r for r in results if r["kind"] == kind and r.get("round") == k}
        c, c3 = by.get("c"), by.get("c3")
        row: dict = {"round": k, "c_rows_per_s": c["rows_per_s"] if c else None,
                     "c3_rows_per_s": c3["rows_per_s"] if c3 else None}
        for name, key in (("c3", "c3_vs_c"), ("d", "d_vs_c"), ("d'", "staged_vs_c")):
            row[key] = by[name]["rows_per_s"] / c["rows_per_s"] if c and name in by else None
        row["d_vs_c3"] = by["d"]["rows_per_s"] / c3["rows_per_s"] if c3 and "d" in by else None
        row["node_cpu_us"] = {n: by[n].get("node_cpu_us") for n in ("c", "c3", "d", "d'") if n in by}
        out.append(row)
    return out


def report(results: list[dict], args) -> None:
    lines = ["", "| data | variant | docs | rows/s | vs (c) | vs (c3) | vs (a) | peak RSS MB | client CPU µs/row "
                 "| node CPU µs/row |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rounds: dict[str, list[dict]] = {}
    medians: dict[str, dict] = {}
    keys = ("c_rows_per_s", "c3_vs_c", "d_vs_c", "staged_vs_c", "d_vs_c3")  # the rounds table's columns
    for kind in ("events", "profiles"):
        rows = [r for r in results if r["kind"] == kind and "sweep" not in r["variant"]
                and "warm-up" not in r["variant"]]
        if not rows:
            continue
        # a row of a round is compared with its round's ceilings; any other with the rounds' medians
        rs = rounds[kind] = round_ratios(results, kind)
        medians[kind] = {k: _median([row[k] for row in rs if row.get(k) is not None]) for k in (*keys, "c3_rows_per_s")}
        ceilings = {row["round"]: {"c": row["c_rows_per_s"], "c3": row["c3_rows_per_s"]} for row in rs}
        median = {"c": medians[kind]["c_rows_per_s"], "c3": medians[kind]["c3_rows_per_s"]}
        naive = next((r["rows_per_s"] for r in rows if r["variant"].startswith("a ")), None)
        for r in sorted(rows, key=lambda r: r["variant"]):
            ref = ceilings.get(r.get("round", 0), median)
            ceiling, claims = ref.get("c"), ref.get("c3")
            vc = f"{r['rows_per_s'] / ceiling:.2f}" if ceiling else "-"
            v3 = f"{r['rows_per_s'] / claims:.2f}" if claims else "-"
            va = f"{r['rows_per_s'] / naive:.1f}x" if naive else "-"
            node = f"{r['node_cpu_us']:.0f}" if "node_cpu_us" in r else "-"
            lines.append(f"| {kind} | {r['variant']} | {r['docs']:,} | {r['rows_per_s']:,.0f} | {vc} | {v3} | {va} | "
                         f"{r['peak_rss_mb']:.0f} | {r['client_cpu_us']:.1f} | {node} |")
    if any(len(v) > 1 for v in rounds.values()):
        lines += ["", "| data | round | (c) rows/s | (c3) vs (c) | (d) vs (c) | (d') vs (c) | (d) vs (c3) "
                      "| node CPU µs/row (c / c3 / d / d') |", "|---|---:|---:|---:|---:|---:|---:|---|"]

        def cells(row: dict) -> str:
            return " | ".join("-" if row.get(k) is None else (f"{row[k]:,.0f}" if k == "c_rows_per_s" else
                                                              f"{row[k]:.2f}") for k in keys)

        for kind, rs in rounds.items():
            for row in rs:
                node = " / ".join("-" if row["node_cpu_us"].get(n) is None else f"{row['node_cpu_us'][n]:.0f}"
                                  for n in ("c", "c3", "d", "d'"))
                lines.append(f"| {kind} | {row['round']} | {cells(row)} | {node} |")
            lines.append(f"| {kind} | **median** | {cells(medians[kind])} | |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "args": {k: v for k, v in vars(args).items() if k in ("events", "profiles", "naive_rows", "big_factor",
                                                              "pin_node", "rounds")},
        "results": results, "rounds": rounds, "medians": medians, "table": table}, indent=2))
    print(f"\nwritten to {RESULTS / args.out}")


if __name__ == "__main__":
    sys.exit(main())
