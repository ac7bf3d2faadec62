"""A local receiver enforcing the public contracts that historical replay (SPEC §5) sends to.

No Segment or Tracardi server can run here, so this is the test double the project allows for a SaaS,
and it enforces the real contract rather than accepting anything:

``POST /v1/batch`` (Segment HTTP tracking API)
    - basic auth with the write key as user name (401 otherwise);
    - a body ≤ 500 KB (400 "payload too large" otherwise), JSON with a ``batch`` list of ≤ 2500 messages;
    - every message ≤ 32 KB, ``type`` one of track/identify/page/screen/group/alias, a ``messageId``,
      ``userId`` or ``anonymousId``, ``event`` for track, ``groupId`` for group, ``userId`` + ``previousId``
      for alias, a valid ISO-8601 ``timestamp`` when present, a ``sentAt``; otherwise 400 naming the
      message index and the rule — the whole batch is refused, as a real API refuses a bad request;
    - messages are de-duplicated by ``messageId`` (a repeat is counted, not stored twice).
``POST /track`` (Tracardi tracker)
    - ``source.id`` must be the configured event source (401 otherwise); ``profile.id``, ``session.id``
      and a non-empty ``events`` list, each event with ``id``, ``type`` and an ISO ``time.create`` (400).
``POST /_control`` (tests only): ``{"fail": [{"status": 429, "retry_after": 1, "count": 2}],
    "reject_events": ["bad event"]}`` — clears what was received; then the next requests answer with
    those statuses (``Retry-After`` header included), and messages with those event names get a 400.
``GET /_stats``, ``GET /_messages`` (unique messages: messageId, type, event, timestamp, sentAt), ``GET /health``.

``--noop`` answers 200 to every authorised ``/v1/batch`` after reading the body: the raw ceiling for the
benchmark.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_WRITE_KEY = "replay-write-key"
DEFAULT_SOURCE_ID = "replay-source"
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_MESSAGE_BYTES = 32 * 1024
TYPES = ("track", "identify", "page", "screen", "group", "alias")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


def _valid_time(value) -> bool:
    if not isinstance(value, str) or not _ISO.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def check_message(m, index: int, reject_events: set[str]) -> str | None:
    if not isinstance(m, dict):
        return f"batch[{index}]: not an object"
    if len(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_MESSAGE_BYTES:
        return f"batch[{index}]: message larger than 32 KB"
    if m.get("type") not in TYPES:
        return f"batch[{index}]: type must be one of {TYPES}"
    if not m.get("messageId"):
        return f"batch[{index}]: messageId is required"
    if not (m.get("userId") or m.get("anonymousId")):
        return f"batch[{index}]: userId or anonymousId is required"
    if m["type"] == "track" and not m.get("event"):
        return f"batch[{index}]: track needs event"
    if m["type"] == "group" and not m.get("groupId"):
        return f"batch[{index}]: group needs groupId"
    if m["type"] == "alias" and not (m.get("userId") and m.get("previousId")):
        return f"batch[{index}]: alias needs userId and previousId"
    if "timestamp" in m and not _valid_time(m["timestamp"]):
        return f"batch[{index}]: timestamp is not ISO-8601"
    if not _valid_time(m.get("sentAt")):
        return f"batch[{index}]: sentAt is required"
    if m.get("event") in reject_events:
        return f"batch[{index}]: event {m['event']!r} is not accepted by this workspace"
    return None


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.messages: dict[str, dict] = {}
        self.deliveries = 0
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.fail: list[dict] = []
        self.reject_events: set[str] = set()
        self.track_payloads = 0

    def injected(self) -> dict | None:
        with self.lock:
            while self.fail and self.fail[0].get("count", 1) <= 0:
                self.fail.pop(0)
            if not self.fail:
                return None
            rule = self.fail[0]
            rule["count"] = rule.get("count", 1) - 1
            return dict(rule)

    def record(self, items: list[dict]) -> None:
        with self.lock:
            for m in items:
                self.deliveries += 1
                self.messages.setdefault(m["messageId"], m)

    def stats(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "statuses": dict(self.statuses), "deliveries": self.deliveries,
                    "unique": len(self.messages), "duplicates": self.deliveries - len(self.messages),
                    "track_payloads": self.track_payloads}


def make_handler(state: State, *, write_key: str, source_id: str, noop: bool):
    expected_auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):  # quiet: the tests read /_stats
            pass

        def _reply(self, code: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            with state.lock:
                state.statuses[code] += 1
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, {"ok": True})
            if self.path == "/_stats":
                return self._reply(200, state.stats())
            if self.path == "/_messages":
                with state.lock:
                    rows = [{k: m.get(k) for k in ("messageId", "type", "event", "timestamp", "sentAt",
                                                   "integrations", "userId", "anonymousId")}
                            for m in state.messages.values()]
                return self._reply(200, {"messages": rows})
            return self._reply(404, {"error": "not found"})

        def do_POST(self):
            raw = self._body()
            with state.lock:
                state.requests += 1
            if self.path == "/_control":
                cfg = json.loads(raw or b"{}")
                with state.lock:  # a new test: forget what was received
                    state.messages.clear()
                    state.deliveries = state.requests = state.track_payloads = 0
                    state.statuses.clear()
                    state.fail = list(cfg.get("fail", []))
                    state.reject_events = set(cfg.get("reject_events", []))
                return self._reply(200, {"ok": True})
            if self.path not in ("/v1/batch", "/track"):
                return self._reply(404, {"error": "not found"})
            if self.path == "/v1/batch" and self.headers.get("Authorization") != expected_auth:
                return self._reply(401, {"error": "invalid write key"})
            rule = state.injected()
            if rule:
                headers = {"Retry-After": rule["retry_after"]} if "retry_after" in rule else {}
                return self._reply(int(rule.get("status", 500)), {"error": "injected"}, headers)
            if self.path == "/track":
                return self._track(raw)
            if len(raw) > MAX_BATCH_BYTES:
                return self._reply(400, {"error": f"payload too large: {len(raw)} bytes > 500 KB"})
            if noop:
                return self._reply(200, {"success": True})
            try:
                body = json.loads(raw)
            except ValueError:
                return self._reply(400, {"error": "body is not JSON"})
            batch = body.get("batch") if isinstance(body, dict) else None
            if not isinstance(batch, list) or not batch:
                return self._reply(400, {"error": "batch must be a non-empty list"})
            if len(batch) > MAX_BATCH_MESSAGES:
                return self._reply(400, {"error": f"batch has {len(batch)} messages > {MAX_BATCH_MESSAGES}"})
            for i, m in enumerate(batch):
                problem = check_message(m, i, state.reject_events)
                if problem:
                    return self._reply(400, {"error": problem, "index": i})
            state.record(batch)
            return self._reply(200, {"success": True})

        def _track(self, raw: bytes):
            try:
                p = json.loads(raw)
            except ValueError:
                return self._reply(400, {"error": "body is not JSON"})
            if (p.get("source") or {}).get("id") != source_id:
                return self._reply(401, {"error": "unknown event source"})
            if not (p.get("profile") or {}).get("id") or not (p.get("session") or {}).get("id"):
                return self._reply(400, {"error": "profile.id and session.id are required"})
            events = p.get("events")
            if not isinstance(events, list) or not events:
                return self._reply(400, {"error": "events must be a non-empty list"})
            for i, e in enumerate(events):
                if not e.get("id") or not e.get("type") or not _valid_time((e.get("time") or {}).get("create")):
                    return self._reply(400, {"error": f"events[{i}]: id, type and time.create are required",
                                             "index": i})
                if e.get("type") in state.reject_events:
                    return self._reply(400, {"error": f"events[{i}]: type not accepted", "index": i})
            with state.lock:
                state.track_payloads += 1
            state.record([{"messageId": e["id"], "type": e["type"], "event": e["type"],
                           "timestamp": e["time"]["create"], "userId": p["profile"]["id"],
                           "session": p["session"]["id"]} for e in events])
            return self._reply(200, {"ok": True})

    return Handler


def serve(port: int, *, write_key: str, source_id: str, noop: bool = False, host: str = "127.0.0.1"):
    server = ThreadingHTTPServer((host, port), make_handler(State(), write_key=write_key, source_id=source_id,
                                                            noop=noop))
    server.daemon_threads = True
    return server


# ---- the same receiver as a child process (tests, demo, benchmark): started and stopped by PID ----------
class Receiver:
    def __init__(self, port: int, proc: subprocess.Popen):
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def control(self, **cfg) -> None:
        self._call("/_control", cfg)

    def stats(self) -> dict:
        return self._call("/_stats")

    def messages(self) -> dict[str, dict]:
        return {m["messageId"]: m for m in self._call("/_messages")["messages"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


def start_receiver(*, noop: bool = False, write_key: str = DEFAULT_WRITE_KEY,
                   source_id: str = DEFAULT_SOURCE_ID) -> Receiver:
    """Start this script as a child process on a free port; ``Receiver.stop()`` stops it by PID."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, os.path.abspath(__file__), "--port", str(port),
           "--write-key", write_key, "--source-id", source_id] + (["--noop"] if noop else [])
    proc = subprocess.Popen(cmd, start_new_session=True)
    r = Receiver(port, proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            r._call("/health")
            return r
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                r.stop()
                raise RuntimeError("replay receiver did not start") from None
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--write-key", default=DEFAULT_WRITE_KEY)
    ap.add_argument("--source-id", default=DEFAULT_SOURCE_ID)
    ap.add_argument("--noop", action="store_true")
    args = ap.parse_args()
    server = serve(args.port, write_key=args.write_key, source_id=args.source_id, noop=args.noop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
