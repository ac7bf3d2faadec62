"""Build engine objects from Airflow connections (secrets never leave the connection)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdp_ingest.store import Store

STORE_CONN_TYPES = ("opensearch", "elasticsearch")


def store_from_connection(conn_id: str, *, prefix: str | None = None) -> Store:
    """A ``Store`` for an ``opensearch`` or ``elasticsearch`` connection.

    Connection extras: ``use_ssl`` / ``verify_certs`` (booleans), ``index_prefix`` (default ``cdp-``),
    ``bulk_chunk_docs``, ``bulk_chunk_bytes``, ``bulk_concurrency``, ``max_cell_bytes`` (default 1 MiB) and
    ``max_document_bytes`` (default 4 MiB): rows over either limit are rejected with a reason;
    ``pause_refresh`` (``auto`` by default: in overwrite loads only; ``true``: in every load; ``false``: never):
    past months a load creates do not refresh on their own while it runs;
    ``claim_wait_seconds`` (default 180): how long a row waits for an event id another load claimed and has
    not stored before it fails with the reason.
    """
    from airflow.sdk import BaseHook

    from cdp_ingest.store import CHUNK_BYTES, CLAIM_WAIT, MAX_CELL_BYTES, MAX_DOCUMENT_BYTES, Store, make_client

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type not in STORE_CONN_TYPES:
        raise ValueError(f"connection {conn_id!r} has type {conn.conn_type!r}; expected one of {STORE_CONN_TYPES}")
    extra = conn.extra_dejson
    use_ssl = str(extra.get("use_ssl", False)).lower() == "true"
    host = conn.host or "127.0.0.1"
    if "://" not in host:
        host = f"{'https' if use_ssl else 'http'}://{host}"
    url = f"{host}:{conn.port or 9200}"
    auth = (conn.login, conn.password) if conn.login else None
    client = make_client(url, http_auth=auth, verify_certs=str(extra.get("verify_certs", True)).lower() == "true")
    return Store(client, prefix=prefix or extra.get("index_prefix", "cdp-"),
                 flavor="elasticsearch" if conn.conn_type == "elasticsearch" else "opensearch",
                 chunk_docs=int(extra.get("bulk_chunk_docs", 5000)),
                 chunk_bytes=int(extra.get("bulk_chunk_bytes", CHUNK_BYTES)),
                 concurrency=int(extra.get("bulk_concurrency", 2)),
                 max_cell_bytes=int(extra.get("max_cell_bytes", MAX_CELL_BYTES)),
                 max_document_bytes=int(extra.get("max_document_bytes", MAX_DOCUMENT_BYTES)),
                 pause_refresh=_pause_refresh(extra.get("pause_refresh")),
                 claim_wait=float(extra.get("claim_wait_seconds", CLAIM_WAIT)))


def _pause_refresh(value: object) -> bool | None:
    """The ``pause_refresh`` extra: ``auto`` (or absent) → None, the store's default; true/false."""
    text = "auto" if value is None else str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"connection extra pause_refresh must be auto, true or false, not {value!r}")
