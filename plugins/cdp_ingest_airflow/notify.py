"""Notifications to the configured webhook (connection ``cdp_webhook``) and task-failure callbacks.

The webhook connection is an ``http`` connection: host = base URL, password = bearer token.
Missing connection = notifications are only logged (a demo without a receiver still runs).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger(__name__)
WEBHOOK_CONN_ID = "cdp_webhook"


def post_webhook(event: str, payload: dict[str, Any], *, conn_id: str = WEBHOOK_CONN_ID, timeout: float = 10) -> bool:
    """POST ``{"event": ..., **payload}`` as JSON; returns False when no webhook is configured."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.info("no %s connection: notification %s only logged", conn_id, event)
        return False
    send_to_connection(conn, event, payload, timeout=timeout)
    return True


def send_to_connection(conn: Any, event: str, payload: dict[str, Any], *, timeout: float = 10) -> None:
    """POST ``{"event": ..., **payload}`` to ``<conn.host>/cdp-ingest/<event>`` with the bearer token
    in ``conn.password`` (shared by the sync path above and the triggerer's async callbacks)."""
    base = conn.host if "://" in (conn.host or "") else f"http://{conn.host}:{conn.port or 80}"
    req = urllib.request.Request(f"{base.rstrip('/')}/cdp-ingest/{event}", method="POST",
                                 data=json.dumps({"event": event, **payload}, default=str).encode(),
                                 headers={"Content-Type": "application/json"})
    if conn.password:
        req.add_header("Authorization", f"Bearer {conn.password}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"webhook answered HTTP {resp.status}")


def on_task_failure(context: dict[str, Any]) -> None:
    """Task failure callback: tell the webhook which DAG/task/run failed and why (no row data)."""
    ti = context.get("task_instance") or context.get("ti")
    payload = {"dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None),
               "run_id": getattr(ti, "run_id", None), "try_number": getattr(ti, "try_number", None),
               "error": str(context.get("exception"))[:500]}
    try:
        post_webhook("task-failed", payload)
    except Exception:  # a failing notification must not hide the task's own failure
        log.exception("could not send the task-failed notification")
