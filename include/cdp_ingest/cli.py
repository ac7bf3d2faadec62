"""``cdp-ingest`` command: print target schemas, check mapping files.

    cdp-ingest schema profile|session|event       JSON schema of the target object
    cdp-ingest check-mapping FILE [CSV]            load a mapping (and check a CSV header against it)
    cdp-ingest replay ARCHIVE --to segment|tracardi --endpoint URL ...   historical replay (SPEC §5)
    cdp-ingest datasets create|list|get|delete|sync|jobs ...         datasets through the REST API (SPEC §4)
"""

from __future__ import annotations

import argparse
import json
import sys

from cdp_ingest.documents import KINDS, json_schema
from cdp_ingest.errors import IngestError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cdp-ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("schema", help="print the JSON schema of a target object")
    sc.add_argument("kind", choices=KINDS)
    cm = sub.add_parser("check-mapping", help="validate a mapping file (and a CSV header against it)")
    cm.add_argument("mapping")
    cm.add_argument("csv", nargs="?")
    from cdp_ingest import replay_cli

    replay_cli.add_parser(sub)
    from cdp_ingest.datasets import cli as datasets_cli

    datasets_cli.add_parser(sub)
    args = ap.parse_args(argv)
    if args.command == "replay":
        return replay_cli.run(args)
    if args.command == "datasets":
        return datasets_cli.run(args)
    if args.command == "schema":
        sys.stdout.write(json.dumps(json_schema(args.kind), indent=2) + "\n")
        return 0
    from cdp_ingest.mapping import Mapping

    try:
        m = Mapping.load(args.mapping)
        if args.csv:
            from cdp_ingest.readers import read_csv_header

            m.check_header(read_csv_header(args.csv))
    except IngestError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    sys.stdout.write(f"ok: {m.kind} mapping with {len(m.fields)} fields\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
