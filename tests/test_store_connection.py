"""store_from_connection: the connection's extras reach the Store (no services needed)."""

from __future__ import annotations

import json

import pytest

from cdp_ingest.store import CHUNK_BYTES, CLAIM_WAIT
from cdp_ingest_airflow.connections import store_from_connection


def _conn(monkeypatch, conn_type: str = "opensearch", **extra) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_T_STORE", json.dumps({"conn_type": conn_type, "host": "127.0.0.1", "port": 9,
                                                           "extra": extra}))


def test_defaults(monkeypatch):
    _conn(monkeypatch)
    store = store_from_connection("t_store")
    assert (store.prefix, store.flavor, store.chunk_docs, store.chunk_bytes, store.concurrency) == (
        "cdp-", "opensearch", 5000, CHUNK_BYTES, 2)
    assert store.pause_refresh is None and store.claim_wait == CLAIM_WAIT == 180.0  # None: overwrite loads only


def test_extras(monkeypatch):
    _conn(monkeypatch, "elasticsearch", index_prefix="x-", bulk_chunk_docs="200", bulk_concurrency=1,
          pause_refresh="false", claim_wait_seconds="30")
    store = store_from_connection("t_store")
    assert (store.prefix, store.flavor, store.chunk_docs, store.concurrency) == ("x-", "elasticsearch", 200, 1)
    assert store.pause_refresh is False and store.claim_wait == 30.0


def test_a_connection_of_another_type_is_refused(monkeypatch):
    _conn(monkeypatch, "postgres")
    with pytest.raises(ValueError, match="expected one of"):
        store_from_connection("t_store")


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("true", True), (True, True), ("False", False),
                                                 (False, False), ("0", False)])
def test_pause_refresh_extra(monkeypatch, value, expected):
    _conn(monkeypatch, pause_refresh=value)
    assert store_from_connection("t_store").pause_refresh is expected


def test_a_pause_refresh_extra_that_is_not_a_choice_is_refused(monkeypatch):
    _conn(monkeypatch, pause_refresh="sometimes")
    with pytest.raises(ValueError, match="pause_refresh must be auto, true or false, not 'sometimes'"):
        store_from_connection("t_store")
