"""Mapping paths benchmark: the transform's CPU per row, row by row against columnar, for the time formats
and sources the columnar mapping took on later (no store: the staged transform only).

    python benchmarks/mapping_paths.py [--rows 200000] [--rounds 2] [--cases "NAME;NAME..."]

Cases (the demo events, 1% bad rows and 1% repeated ids, as ``sample.write_events`` makes them):
  epoch                     the demo mapping as it is (time: epoch seconds)
  strftime <pattern>        the same rows with the time written by the pattern (a UTC offset of 0, +1 h,
                            -5 h or +5:30 where the pattern has %z) and the mapping's time.format set to it
  object defaults           the demo mapping with object/list defaults added
  jsonl dataset             the rows as JSON lines with typed values, through the mapped dataset's text
                            batches (``datasets.raw.text_batches``)
Each run is a child process (``transform_unit`` to a staged file, CPU of the whole transform: reading,
mapping, the staged writer thread), ``CDP_ROW_MAPPING=1`` (row by row) and ``0`` (columnar) alternating,
``--rounds`` times each. Prints a table and writes benchmarks/results/mapping_paths.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "include" / "cdp_ingest" / "mappings"
RESULTS = ROOT / "benchmarks" / "results"

STRFTIME = ["%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M", "%m/%d/%Y %I:%M %p", "%d/%b/%Y:%H:%M:%S %z",
            "%a, %d %b %Y %H:%M:%S %z", "%d-%b-%y %H:%M"]
CASES = ["epoch", *(f"strftime {f}" for f in STRFTIME), "object defaults", "jsonl dataset"]
OFFSETS = [timedelta(0), timedelta(hours=1), timedelta(hours=-5), timedelta(hours=5, minutes=30)]


def prepare(case: str, base: Path, work: Path) -> tuple[Path, Path, str]:
    """(input file, mapping file, format) for one case, made from the demo events ``base``."""
    import yaml

    raw = yaml.safe_load((MAPPINGS / "demo-events.yaml").read_text())
    slug = "".join(c if c.isalnum() else "_" for c in case)
    mapping = work / f"{slug}.yaml"
    if case == "epoch":
        mapping.write_text(yaml.safe_dump(raw))
        return base, mapping, "csv"
    if case == "object defaults":
        raw["defaults"] = {"context.tags": ["import", {"batch": None}], "data.loyalty": {"tier": "gold", "n": [1]}}
        mapping.write_text(yaml.safe_dump(raw))
        return base, mapping, "csv"
    rnd = random.Random(1)
    if case == "jsonl dataset":
        out = work / "events.jsonl"
        with open(base, newline="", encoding="utf-8") as fi, open(out, "w", encoding="utf-8") as fo:
            for row in csv.DictReader(fi):
                typed = {k: (int(v) if k in ("ts", "quantity") and v.isdigit() else
                             float(v) if k == "price" and v.replace(".", "", 1).isdigit() else v)
                         for k, v in row.items()}
                fo.write(json.dumps(typed) + "\n")
        mapping.write_text(yaml.safe_dump(raw))
        return out, mapping, "jsonl"
    fmt = case.split(" ", 1)[1]
    raw["time"]["format"] = fmt
    mapping.write_text(yaml.safe_dump(raw))
    out = work / f"{slug}.csv"
    with open(base, newline="", encoding="utf-8") as fi, open(out, "w", newline="", encoding="utf-8") as fo:
        reader, writer = csv.reader(fi), csv.writer(fo)
        header = next(reader)
        writer.writerow(header)
        at = header.index("ts")
        for row in reader:
            if row[at].isdigit():
                when = datetime.fromtimestamp(int(row[at]), UTC)
                if "%z" in fmt:
                    when = when.astimezone(timezone(rnd.choice(OFFSETS)))
                row[at] = when.strftime(fmt)
            writer.writerow(row)
    return out, mapping, "csv"


def child(args: argparse.Namespace) -> None:
    from cdp_ingest.mapping import Mapper, Mapping
    from cdp_ingest.pipeline import transform_unit
    from cdp_ingest.readers import read_batches

    if args.format == "jsonl":
        from cdp_ingest.datasets.raw import text_batches

        batches = text_batches(args.input, "jsonl")
    else:
        batches = read_batches(args.input)
    mapper = Mapper(Mapping.load(args.mapping), unit_key="bench", now=datetime(2026, 11, 23, tzinfo=UTC))
    c0 = time.process_time()
    res = transform_unit(batches, mapper.map_row, prefix="b-", import_id="bench",
                         staged_path=Path(args.work) / "staged.parquet", error_path=Path(args.work) / "errors.csv")
    cpu = time.process_time() - c0
    print(json.dumps({"rows_in": res.rows_in, "accepted": res.accepted, "rejected": res.rejected, "cpu": cpu}))


def run(case_input: Path, mapping: Path, fmt: str, work: Path, row_by_row: bool) -> dict:
    env = {**os.environ, "CDP_ROW_MAPPING": "1" if row_by_row else "0"}
    out = subprocess.run([sys.executable, __file__, "--child", "--input", str(case_input), "--mapping", str(mapping),
                          "--format", fmt, "--work", str(work)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", default=";".join(CASES), help="case names separated by ';' (default: all)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--mapping", help=argparse.SUPPRESS)
    ap.add_argument("--format", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    cases = [c.strip() for c in args.cases.split(";") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {CASES}")
    from cdp_ingest.sample import write_events

    results = []
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="cdp-bench-map-") as tmp:
        work = Path(tmp)
        base = work / "events.csv"
        write_events(base, args.rows, profiles=max(1, args.rows // 20), sessions=max(1, args.rows // 10))
        for case in cases:
            case_input, mapping, fmt = prepare(case, base, work)
            per_mode: dict[str, list[float]] = {"row": [], "columnar": []}
            counts = set()
            for _ in range(args.rounds):
                for mode in ("row", "columnar"):
                    r = run(case_input, mapping, fmt, work, mode == "row")
                    per_mode[mode].append(r["cpu"] / r["rows_in"] * 1e6)
                    counts.add((r["rows_in"], r["accepted"], r["rejected"]))
            assert len(counts) == 1, f"{case}: the two paths counted differently: {counts}"
            rows_in, accepted, rejected = counts.pop()
            row, col = per_mode["row"], per_mode["columnar"]
            results.append({"case": case, "rows_in": rows_in, "accepted": accepted, "rejected": rejected,
                            "row_us": row, "columnar_us": col, "ratio": min(row) / min(col)})
            print(f"{case:38s} row {min(row):6.1f}-{max(row):6.1f}  columnar {min(col):5.1f}-{max(col):5.1f} "
                  f"µs/row  ({results[-1]['ratio']:.1f}x)", flush=True)
    print()
    print("| case | rows | rejected | row by row (µs of CPU per row) | columnar (µs per row) | best vs best |")
    print("|---|---:|---:|---|---|---:|")
    for r in results:
        print(f"| {r['case']} | {r['rows_in']:,} | {r['rejected']:,} | {min(r['row_us']):.1f}–{max(r['row_us']):.1f} "
              f"| {min(r['columnar_us']):.1f}–{max(r['columnar_us']):.1f} | {r['ratio']:.1f}x |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "mapping_paths.json"
    out.write_text(json.dumps({"started": started.isoformat(timespec="seconds"), "rows": args.rows,
                               "rounds": args.rounds, "machine": platform.platform(), "cpus": os.cpu_count(),
                               "results": results}, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
