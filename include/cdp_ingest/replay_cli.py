"""``cdp-ingest replay``: the historical replay engine outside Airflow (SPEC §5).

    cdp-ingest replay ARCHIVE_OR_URL --to segment|tracardi --endpoint URL [--write-key K]
                      [--source-id S] [--dry-run] [--name N] [--work-dir DIR] [--integrations JSON]
                      [--rate-limit N] [--max-batch-messages N] [--mapping FILE] [--not-historical]

ARCHIVE_OR_URL is a file, a folder (every .gz/.json/.jsonl/.ndjson/.csv below it, in name order), an
s3:// or gs:// prefix, or an http(s) URL. Counts are printed as JSON, one line per archive file plus a
total. The exit code is 0 when every file was replayed (or planned, with --dry-run) and its accounting
holds, 1 otherwise. A killed run resumes from its checkpoint in --work-dir when started again.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    rp = sub.add_parser("replay", help="replay archived Segment messages to a Segment or Tracardi endpoint",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("archive")
    rp.add_argument("--to", dest="destination", choices=("segment", "tracardi"), required=True)
    rp.add_argument("--endpoint", required=True, help="base URL of the receiver")
    rp.add_argument("--write-key", help="Segment write key (basic-auth user)")
    rp.add_argument("--source-id", help="Tracardi event source id")
    rp.add_argument("--name", default="cli", help="replay name (part of every new messageId)")
    rp.add_argument("--work-dir", default=".cdp-replay", help="plans, checkpoints and error files")
    rp.add_argument("--integrations", help='JSON object, e.g. \'{"All": false, "Mixpanel": true}\'')
    rp.add_argument("--rate-limit", type=float, default=0.0, help="messages per second (0 = no limit)")
    rp.add_argument("--max-batch-messages", type=int, default=2500)
    rp.add_argument("--max-batch-bytes", type=int, default=500 * 1024)
    rp.add_argument("--concurrency", type=int, default=2)
    rp.add_argument("--workers", type=int, default=1,
                    help="processes that parse and rewrite big JSON-lines archives while planning (1 = in-process; "
                         "more only pays on machines with spare cores)")
    rp.add_argument("--mapping", help="YAML message mapping for CSV archives")
    rp.add_argument("--not-historical", action="store_true",
                    help="the destination does not accept historical timestamps (the replay is refused)")
    rp.add_argument("--dry-run", action="store_true", help="validate and plan the batches; send nothing")


def run(args: argparse.Namespace) -> int:
    from cdp_ingest.errors import IngestError
    from cdp_ingest.replay import ReplaySettings, list_archive, make_sink, replay_unit

    try:
        integrations = json.loads(args.integrations) if args.integrations else None
        mapping = None
        if args.mapping:
            import yaml

            with open(args.mapping) as fh:
                mapping = yaml.safe_load(fh)
        settings = ReplaySettings(name=args.name, destination=args.destination, historical=not args.not_historical,
                                  integrations=integrations, rate_limit=args.rate_limit,
                                  max_batch_messages=args.max_batch_messages, max_batch_bytes=args.max_batch_bytes,
                                  concurrency=args.concurrency, workers=args.workers).check()
        sink = None if args.dry_run else make_sink(args.destination, args.endpoint, write_key=args.write_key,
                                                    source_id=args.source_id)
        files = list_archive(args.archive)
        if not files:
            raise IngestError(f"no archive files under {args.archive}")
        total: dict[str, int] = {}
        for f in files:
            counts = replay_unit(f, settings, sink, work_dir=args.work_dir, mapping=mapping,
                                 dry_run=args.dry_run).counts()
            sys.stdout.write(json.dumps(counts) + "\n")
            sys.stdout.flush()
            for k in ("rows_in", "sent", "rejected", "duplicates", "missing_timestamp", "batches", "retries"):
                total[k] = total.get(k, 0) + int(counts[k] or 0)
        sys.stdout.write(json.dumps({"total": total, "files": len(files), "dry_run": args.dry_run}) + "\n")
    except (IngestError, ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0
