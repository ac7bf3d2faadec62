"""Helpers for the tests that hand staged files over through object storage (CDP_STAGING_URL)."""

from __future__ import annotations

import uuid
from typing import Any


def staging_bucket(s3_server, monkeypatch, name: str, prefix: str = "imports") -> tuple[Any, str]:
    """A new bucket ``<name>-<random>`` on the local S3 server, set as the staging storage
    (``CDP_STAGING_URL=s3://<bucket>/<prefix>/`` read with the connection ``cdp_s3``) for this test.
    Returns a boto3 client of that server and the bucket's name, to look at what is staged."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server.info["endpoint_url"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("CDP_STAGING_URL", f"s3://{bucket}/{prefix}/")
    monkeypatch.setenv("CDP_STAGING_CONN_ID", "cdp_s3")
    return s3, bucket
