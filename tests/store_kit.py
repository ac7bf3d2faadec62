"""Helpers for the store tests that need a load to fail part-way, like a worker that loses its
connection in the middle of a bulk load."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from cdp_ingest.documents import apply_operation, new_document, stamp
from cdp_ingest.errors import StoreError
from cdp_ingest.store import BulkItem, ItemBatch, Outcome, Store


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


def as_item_batches(items: list[BulkItem], run: int = 3) -> Iterator[BulkItem | ItemBatch]:
    """``items`` as a columnar mapping hands them to ``Store.bulk_load``: consecutive create events in
    ``ItemBatch``es of at most ``run`` rows (so chunks cut through them), anything else as it is."""
    batch: list[BulkItem] = []
    for it in items:
        if it.op == "create" and "-event-" in it.index:
            batch.append(it)
            if len(batch) == run:
                yield ItemBatch.of(batch)
                batch = []
            continue
        if batch:
            yield ItemBatch.of(batch)
            batch = []
        yield it
    if batch:
        yield ItemBatch.of(batch)


def columnar_loads(monkeypatch) -> None:
    """From here on ``Store.bulk_load`` gets its items as ``as_item_batches`` makes them, and its
    outcomes are given back one per row as before: the rows an ``ItemBatch`` chunk wrote without an
    outcome each become "loaded" outcomes when its ``final`` outcome comes — checked to be exactly
    ``count`` rows, all of them up to its row number — so every test of the row-by-row load runs
    unchanged against the columnar one."""
    original = Store.bulk_load

    def bulk_load(self, items, *args, **kw):
        items = list(items)
        if any(type(it) is not BulkItem for it in items):
            yield from original(self, items, *args, **kw)
            return
        by_ref = {it.ref: it for it in items}
        assert len(by_ref) == len(items), "the rows' numbers must differ"
        open_refs = sorted(by_ref)  # the rows without an outcome yet
        for o in original(self, as_item_batches(items), *args, **kw):
            if not o.final:
                assert o.ref in open_refs, f"a second outcome for row {o.ref}"
                open_refs.remove(o.ref)
                yield o
                continue
            done = [r for r in open_refs if r <= o.ref]
            assert len(done) == o.count, f"final outcome at row {o.ref} counts {o.count}, rows left {done}"
            open_refs = [r for r in open_refs if r > o.ref]
            for r in done:
                yield Outcome(r, "loaded", id=by_ref[r].id)
        assert not open_refs, f"rows without an outcome: {open_refs}"

    monkeypatch.setattr(Store, "bulk_load", bulk_load)


def merged_new(pid: str, ref: int, ops: list, import_id: str, now: str = "NOW") -> bytes:
    """What Store._merge_chunk writes for a profile that is not stored yet, from one row (insert and
    update times ``now``)."""
    doc = new_document("profile", pid, now)
    for op, path, value in ops:
        apply_operation(doc, op, path, value)
    doc["metadata"]["time"]["update"] = now
    stamp(doc, import_id, ref)
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
