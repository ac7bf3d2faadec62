"""Helpers for the store tests that need a load to fail part-way, like a worker that loses its
connection in the middle of a bulk load."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

from cdp_ingest.errors import StoreError
from cdp_ingest.store import Store


@contextmanager
def crash_on_send(store: Store, n: int, message: str = "worker lost its connection") -> Iterator[None]:
    """Within the block the ``n``-th bulk request of ``store`` (counting from 1) raises ``StoreError``
    instead of being sent; the requests before it go through. The real sender is back afterwards, so
    the retry that follows runs against the store as it is."""
    if n < 1:
        raise ValueError("n counts bulk requests from 1")
    calls = itertools.count(1)
    original = store._send_bulk

    def dying_send(payload: bytes, *args, **kw):
        if next(calls) == n:
            raise StoreError(message)
        return original(payload, *args, **kw)

    store._send_bulk = dying_send  # type: ignore[method-assign]
    try:
        yield
    finally:
        store._send_bulk = original  # type: ignore[method-assign]
