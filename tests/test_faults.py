"""Faults between the engine and the store, against the real OpenSearch (issue 12).

``FaultProxy`` is a real HTTP server in front of OpenSearch that forwards every request, except the
ones it was told to break: answer with a status (500, 503, ...) without forwarding, or forward and then
drop the connection before the answer (a lost response: the write happened, the client does not
know). The store's own retries must ride these out with nothing lost and nothing duplicated.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import itertools
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from cdp_ingest.errors import StoreError
from cdp_ingest.ledger import Ledger
from cdp_ingest.mapping import Mapper, Mapping
from cdp_ingest.pipeline import import_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import BulkItem, Store, make_client

pytestmark = pytest.mark.services
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
_prefixes = itertools.count()


class FaultProxy:
    """Forwards to ``upstream``; ``fail(path_prefix, *actions)`` queues faults for matching requests.

    An action is an HTTP status (answered without forwarding) or ``"lost"`` (forwarded, then the
    connection is closed without an answer)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: list[tuple[str, int | str]] = []
        self.seen: list[tuple[str, int | str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = proxy._take(self.path)
                if isinstance(action, int):
                    self._answer(action, b'{"error":{"type":"injected","reason":"fault proxy"},"status":%d}' % action)
                    return
                status, data, ctype = proxy._forward(self.command, self.path, body, self.headers.get("Content-Type"))
                if action == "lost":
                    self.close_connection = True  # the write happened; its answer never arrives
                    return
                self._answer(status, data, ctype)

            def _answer(self, status: int, data: bytes, ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, path_prefix: str, *actions: int | str) -> None:
        with self.lock:
            self.faults.extend((path_prefix, a) for a in actions)

    def _take(self, path: str) -> int | str | None:
        with self.lock:
            for i, (prefix, action) in enumerate(self.faults):
                if path.startswith(prefix):
                    del self.faults[i]
                    self.seen.append((prefix, action))
                    return action
        return None

    def _forward(self, method: str, path: str, body: bytes, ctype: str | None) -> tuple[int, bytes, str]:
        req = urllib.request.Request(self.upstream + path, data=body or None, method=method,
                                     headers={"Content-Type": ctype or "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "application/json")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(opensearch):
    p = FaultProxy(opensearch.info["url"])
    yield p
    p.close()


@pytest.fixture
def store(opensearch):
    s = Store(make_client(opensearch.info["url"]), prefix=f"t-fault{next(_prefixes)}-", chunk_docs=100,
              backoff=0.01)
    s.ensure_templates()
    yield s
    s._request("DELETE", f"/{s.prefix}*")


def through(proxy: FaultProxy, store: Store, **kw) -> Store:
    """The same store (same prefix), reached through the proxy."""
    return Store(make_client(proxy.url), prefix=store.prefix, backoff=kw.pop("backoff", 0.01), **kw)


def items(store: Store, n: int) -> list[BulkItem]:
    return [BulkItem(f"{store.prefix}event-2025-11", f"e{i}", orjson.dumps({"id": f"e{i}"}), i + 1)
            for i in range(n)]


# ---- HTTP 500 ---------------------------------------------------------------------------------------
def test_plain_500_is_retried_like_429_and_503(proxy, store):
    sleeps: list[float] = []
    s = through(proxy, store, backoff=0.5, sleep=sleeps.append, concurrency=1)
    proxy.fail("/_bulk", 500, 503, 500)
    out = list(s.bulk_load(items(store, 10)))
    assert [o.status for o in out] == ["loaded"] * 10
    assert [a for _, a in proxy.seen] == [500, 503, 500]
    assert sleeps == [0.5, 1.0, 2.0]
    store.refresh([f"{store.prefix}event-2025-11"])
    assert store.count(f"{store.prefix}event-2025-11") == 10


def test_500_that_never_stops_gives_up_after_the_retries(proxy, store):
    s = through(proxy, store, max_retries=2)
    proxy.fail("/_bulk", 500, 500, 500)
    with pytest.raises(StoreError, match=r"still failing after 2 retries \(HTTP 500\)"):
        list(s.bulk_load(items(store, 3)))


def test_400_is_not_retried(proxy, store):
    s = through(proxy, store)
    proxy.fail("/_bulk", 400)
    with pytest.raises(StoreError, match="failed with HTTP 400"):
        list(s.bulk_load(items(store, 3)))
    assert proxy.faults == []  # one request, no retry


# ---- lost responses ------------------------------------------------------------------------------------
def test_lost_bulk_responses_are_retried_without_duplicates(proxy, store, tmp_path):
    """The bulk request reached OpenSearch and wrote, the answer was lost: the retry sees 409s whose
    stored copies carry this import and row, and counts them as loaded."""
    src = tmp_path / "events.csv"
    src.write_text("id,email,note\n" + "".join(f"r{i},u{i % 7}@x.io,n{i}\n" for i in range(1000)))
    m = Mapping.from_dict({"kind": "event", "id_column": "id", "identity": ["email"],
                           "event_type": {"value": "visit"}, "fields": {"note": "properties.note"}})
    s = through(proxy, store, chunk_docs=100)
    proxy.fail("/_bulk", "lost", 429, "lost", 500, "lost")
    rep = import_unit(str(src), lambda: read_batches(src), lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                      store=s, ledger=Ledger(store), work_dir=tmp_path / "work", kind="event", source="faults")
    assert [a for _, a in proxy.seen] == ["lost", 429, "lost", 500, "lost"]
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (1000, 1000, 0, 0)
    index = f"{store.prefix}event-2026-11"
    store.refresh([index])
    assert store.count(index) == 1000
    assert Ledger(store).get(rep.unit_id).status == "committed"


def test_lost_responses_and_500s_during_profile_merges(proxy, store, tmp_path):
    """Profile writes are conditional (if_seq_no): a retried write whose first copy landed gets a 409,
    is re-read and re-applied; operations are idempotent, so the result is as without faults."""
    src = tmp_path / "profiles.csv"
    src.write_text("email,plan,tag\n" + "".join(f"u{i % 40}@x.io,p{i},t{i % 3}\n" for i in range(400)))
    m = Mapping.from_dict({"kind": "profile", "identity": ["email"],
                           "fields": {"plan": "traits.plan", "tag": "traits.tag"}})
    s = through(proxy, store)
    proxy.fail("/_bulk", "lost", 500, "lost")
    proxy.fail("/_mget", 503, "lost")
    rep = import_unit(str(src), lambda: read_batches(src), lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                      store=s, ledger=Ledger(store), work_dir=tmp_path / "work", kind="profile", source="faults")
    assert sorted(a for _, a in proxy.seen if isinstance(a, int)) == [500, 503]
    assert [a for _, a in proxy.seen].count("lost") == 3
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (400, 400, 0, 0)
    store.refresh([store.index("profile")])
    assert store.count(store.index("profile")) == 40
    from cdp_ingest.mapping import profile_id_for

    doc = store.get(store.index("profile"), profile_id_for("u7@x.io"))["_source"]
    assert doc["traits"]["plan"] == "p367"  # the last row of u7 wins, as without faults


# ---- a short store outage: OpenSearch stopped and restarted on the same port mid-load --------------------
@pytest.fixture
def own_opensearch():
    """A private OpenSearch node for this test only: it is stopped and restarted, which the session's
    shared node must not be."""
    from devservices import Harness

    h = Harness(tempfile.mkdtemp(prefix="cdp-faults-"))
    try:
        svc = h.start_opensearch(heap="512m")
        yield h, svc
    finally:
        h.stop()
        shutil.rmtree(h.run_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("stage", "kill"), [(True, True), (False, False)],
                         ids=["staged-SIGKILL", "streamed-SIGTERM"])
def test_opensearch_restarted_mid_load_is_ridden_out_by_the_retries(own_opensearch, tmp_path, stage, kill):
    """The node goes down in the middle of a bulk load (killed, or stopped cleanly) and comes back on
    the same port a few seconds later; the running import's own retries (connection errors, 5xx/429,
    then 409s recognised as its own writes) finish it with every row loaded once."""
    h, svc = own_opensearch
    rows = 60_000
    src = tmp_path / "events.csv"
    with open(src, "w") as fh:
        fh.write("id,email,note\n")
        fh.writelines(f"r{i:06d},u{i % 997}@x.io,{'n' * 40}{i}\n" for i in range(rows))
    # the task's retry policy: 9 retries from 0.5 s doubling (capped at 30 s) wait up to ~2 min in all
    store = Store(make_client(svc.info["url"], timeout=30), prefix="t-outage-", chunk_docs=500, concurrency=2,
                  max_retries=9)
    store.ensure_templates()
    m = Mapping.from_dict({"kind": "event", "id_column": "id", "identity": ["email"],
                           "event_type": {"value": "visit"}, "fields": {"note": "properties.note"}})
    result: dict = {}

    def load():
        try:
            result["report"] = import_unit(str(src), lambda: read_batches(src, batch_rows=2000),
                                           lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row, store=store,
                                           ledger=Ledger(store), work_dir=tmp_path / "work", kind="event",
                                           source="faults", stage=stage)
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=load)
    worker.start()
    index = f"{store.prefix}event-2026-11"
    deadline = time.monotonic() + 300
    # counted refreshed: a past month the load creates does not refresh on its own meanwhile
    while store.count(index, refresh=True) < 2000:  # some chunks are in
        assert worker.is_alive(), result
        assert time.monotonic() < deadline, "the load never started"
        time.sleep(0.05)
    before = store.count(index, refresh=True)
    restarted = h.restart("opensearch", down_seconds=2, kill=kill)
    assert restarted.port == svc.port
    worker.join(timeout=600)
    assert not worker.is_alive() and "error" not in result, result.get("error")
    rep = result["report"]
    assert before < rows, "the restart came after the load"
    assert (rep.rows_in, rep.loaded, rep.rejected, rep.duplicates) == (rows, rows, 0, 0)
    store.refresh([index])
    assert store.count(index) == rows  # nothing lost, and with create + ids nothing doubled
    assert Ledger(store).get(rep.unit_id).status == "committed"
    assert store._retries > 0  # it was the retries that rode it out


# ---- SFTP connection dropped mid-download ----------------------------------------------------------------
class CuttingProxy:
    """A TCP proxy that forwards both ways and cuts the connection (both sockets closed) once
    ``cut_after`` bytes went from the server to the client: a network drop in the middle of a download."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.cut_after), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


def _sftp_client(sftp_server, port: int):
    import paramiko

    info = sftp_server.info
    host_type, host_key = Path(info["known_hosts"]).read_text().split()[1:3]
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", host_type, paramiko.Ed25519Key(data=base64.b64decode(host_key)))
    client.connect("127.0.0.1", port=port, username=info["login"], look_for_keys=False, allow_agent=False,
                   pkey=paramiko.Ed25519Key.from_private_key_file(info["private_key"]), timeout=10, banner_timeout=10)
    return client


def test_sftp_connection_dropped_mid_download_then_retried(sftp_server, tmp_path):
    import uuid

    from cdp_ingest.errors import FileLevelError
    from cdp_ingest_airflow.manifest_operator import download, list_folder

    folder = Path(sftp_server.info["landing"]) / f"drop-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    data = b"id,email,note\n" + b"".join(b"r%d,u%d@x.io,%s\n" % (i, i, hashlib.sha256(b"%d" % i).hexdigest().encode())
                                         for i in range(60_000))
    (folder / "data.csv").write_bytes(data)
    local = tmp_path / "data.csv"
    proxy = CuttingProxy(sftp_server.port, cut_after=1 << 20)  # the handshake passes, the download does not
    try:
        client = _sftp_client(sftp_server, proxy.port)
        try:
            sftp = client.open_sftp()
            listed = list_folder(sftp, str(folder))
            with pytest.raises(Exception) as ei:
                download(sftp, str(folder / "data.csv"), local, size=listed[0].size, limit=1 << 30)
        finally:
            client.close()
    finally:
        proxy.close()
    assert proxy.cuts == 1, ei.value
    import paramiko

    assert isinstance(ei.value, paramiko.SSHException | EOFError | OSError), repr(ei.value)
    assert not isinstance(ei.value, FileLevelError)  # not the client's fault: the task is retried
    assert not local.exists()  # only the .part file, never a truncated data file under the real name
    # the task's retry downloads the whole file again
    client = _sftp_client(sftp_server, sftp_server.port)
    try:
        size, checksum = download(client.open_sftp(), str(folder / "data.csv"), local, size=len(data),
                                  limit=1 << 30)
    finally:
        client.close()
    assert (size, checksum) == (len(data), "sha256:" + hashlib.sha256(data).hexdigest())
    assert local.read_bytes() == data and not (tmp_path / "data.csv.part").exists()
