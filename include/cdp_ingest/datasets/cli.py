"""``cdp-ingest datasets ...``: the datasets REST API from the command line (through ``client.DatasetsClient``).

    cdp-ingest datasets create NAME --source URL|PATH [--target raw|profile|session|event --mapping FILE]
                                    [--sync-interval SECONDS] [--id-column C] [--format F] [--no-wait]
    cdp-ingest datasets create NAME --conn-id cdp_postgres --table public.orders [--watermark-column C]
        [--watermark-lookback SECONDS]
    cdp-ingest datasets list | get NAME | delete NAME
    cdp-ingest datasets sync NAME [--wait]
    cdp-ingest datasets jobs [NAME] [--state S] [--job JOB_ID [--wait]]

The API address and credentials: ``--url`` / ``CDP_API_URL`` (default http://127.0.0.1:8080),
``CDP_API_USER`` + ``CDP_API_PASSWORD`` or ``CDP_API_TOKEN``. Output is JSON; the exit status is 0 on success,
1 when the API refuses or a job fails, 2 when a waited-for job is still running at the timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cdp_ingest.datasets.spec import DatasetError, check_sync_interval


def add_parser(sub: Any) -> None:
    p = sub.add_parser("datasets", help="create, list, get, delete and sync datasets; list and wait for jobs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="api-server base URL (default $CDP_API_URL or http://127.0.0.1:8080)")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", help="create a dataset; waits for its first job unless --no-wait")
    c.add_argument("name")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="local path, http(s):// URL, s3:// or gs:// URL")
    src.add_argument("--table", help="[schema.]table read through --conn-id")
    src.add_argument("--query", help="SELECT ... read through --conn-id")
    c.add_argument("--conn-id", help="Airflow connection: the database, or the s3/gs storage")
    c.add_argument("--target", default="raw", choices=("raw", "profile", "session", "event"))
    c.add_argument("--mapping", help="§6 mapping file for profile/session/event targets")
    c.add_argument("--sync-interval", type=int, help="seconds between syncs, at least 900")
    c.add_argument("--format", choices=("csv", "jsonl", "parquet"))
    c.add_argument("--watermark-column")
    c.add_argument("--watermark-lookback", type=float,
                   help="mapped targets: also read rows this far below the last watermark (seconds for a "
                        "date/time column, the column's units for a number)")
    c.add_argument("--id-column")
    c.add_argument("--description")
    c.add_argument("--no-wait", action="store_true", help="return at once with the first job queued")
    c.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the first job (default 600)")
    verbs.add_parser("list", help="every dataset")
    for verb in ("get", "delete"):
        verbs.add_parser(verb, help=f"{verb} one dataset").add_argument("name")
    s = verbs.add_parser("sync", help="force a sync now (a new job)")
    s.add_argument("name")
    s.add_argument("--wait", action="store_true", help="wait for the job to end")
    s.add_argument("--timeout", type=float, default=600.0)
    j = verbs.add_parser("jobs", help="jobs, newest first (or one job with --job)")
    j.add_argument("name", nargs="?", help="only this dataset's jobs")
    j.add_argument("--state", choices=("queued", "importing", "complete", "failure"))
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--job", help="one job by id")
    j.add_argument("--wait", action="store_true", help="with --job: wait until it ends")
    j.add_argument("--timeout", type=float, default=600.0)


def _out(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def run(args: argparse.Namespace) -> int:
    from cdp_ingest.datasets.client import ApiError, DatasetsClient, JobError

    api = DatasetsClient(args.url)
    try:
        if args.verb == "create":
            check_sync_interval(args.sync_interval)
            source: Any = args.source
            if args.table or args.query:
                source = {"conn_id": args.conn_id, **({"table": args.table} if args.table else {"query": args.query})}
            elif args.conn_id:
                source = {"url": args.source, "conn_id": args.conn_id}
            target: Any = "raw" if args.target == "raw" else {"kind": args.target, "mapping": args.mapping}
            _out(api.create(args.name, source, target=target, sync_interval=args.sync_interval, format=args.format,
                            watermark_column=args.watermark_column, watermark_lookback=args.watermark_lookback,
                            id_column=args.id_column, description=args.description, wait=not args.no_wait,
                            timeout=args.timeout))
        elif args.verb == "list":
            _out(api.list())
        elif args.verb == "get":
            _out(api.get(args.name))
        elif args.verb == "delete":
            _out(api.delete(args.name))
        elif args.verb == "sync":
            _out(api.sync(args.name, wait=args.wait, timeout=args.timeout))
        elif args.verb == "jobs":
            if args.job:
                _out(api.wait(args.job, timeout=args.timeout) if args.wait else api.job(args.job))
            else:
                _out(api.jobs(dataset=args.name, state=args.state, limit=args.limit))
    except DatasetError as e:
        sys.stderr.write(f"error: {e.message}\n")
        return 1
    except ApiError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except JobError as e:
        _out(e.job)
        sys.stderr.write(f"error: {e}\n")
        return 1 if e.state == "failure" else 2
    return 0
