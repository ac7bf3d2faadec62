"""Webhook receiver for notifications: each authorised JSON POST is stored as one file in --inbox.

Contract enforced like a real receiver: ``Authorization: Bearer <token>`` (401 otherwise), a JSON body
(400 otherwise), at most 1 MiB (413). ``GET /health`` answers 200 for readiness checks.
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 1 << 20


def make_handler(inbox: Path, token: str):
    counter = iter(range(1, 1 << 62))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply(200 if self.path == "/health" else 404, {"ok": self.path == "/health"})

        def do_POST(self):
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self._reply(401, {"error": "missing or wrong bearer token"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._reply(413, {"error": "body too large"})
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                return self._reply(400, {"error": "body is not JSON"})
            with lock:
                n = next(counter)
            tmp = inbox / f".{n:08d}.tmp"
            tmp.write_text(json.dumps({"path": self.path, "body": body}))
            os.replace(tmp, inbox / f"{n:08d}.json")
            return self._reply(200, {"received": n})

        def log_message(self, fmt, *args):  # keep the log to one line per request
            print(fmt % args, flush=True)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--inbox", type=Path, required=True)
    ap.add_argument("--token", required=True)
    a = ap.parse_args()
    a.inbox.mkdir(parents=True, exist_ok=True)
    ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(a.inbox, a.token)).serve_forever()


if __name__ == "__main__":
    main()
