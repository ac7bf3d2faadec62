"""Test helpers for datasets: a local HTTP server that sends ETag / Last-Modified and answers conditional GETs."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, str]] = {}  # path -> (body, last-modified)
    hits: list[tuple[str, int]] = []

    def do_GET(self):
        body, modified = self.files.get(self.path, (None, ""))
        if body is None:
            self.send_response(404)
            self.end_headers()
            self.hits.append((self.path, 404))
            return
        etag = '"' + hashlib.md5(body).hexdigest() + '"'
        if self.headers.get("If-None-Match") == etag or (
                not self.headers.get("If-None-Match") and self.headers.get("If-Modified-Since") == modified):
            self.send_response(304)
            self.end_headers()
            self.hits.append((self.path, 304))
            return
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.hits.append((self.path, 200))

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_files():
    """``(base URL, handler class)``: put ``handler.files[path] = (body, last_modified)``; ``handler.hits``
    records ``(path, status)`` of every GET."""
    _Handler.files, _Handler.hits = {}, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler
    srv.shutdown()
    srv.server_close()
